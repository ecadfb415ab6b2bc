"""``monolith.modules.EmbeddingBagCollection`` against plain ``torch.nn.EmbeddingBag`` + ``torch.optim.Adagrad``."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from monolith.modules import EmbeddingBagCollection, EmbeddingBagConfig
from monolith.optim import AdagradOptimizer, ZerosInitializer
from monolith.sparse import KeyedJaggedTensor

VOCAB, BATCH, LR = 20, 6, 0.1
# Table "shared" is read by two features (their gradients on one id sum), "mean" pools by the mean.
TABLES = [("shared", 4, ["f1", "f2"], "SUM"), ("mean", 3, ["f3"], "MEAN")]


def configs(**options) -> list[EmbeddingBagConfig]:
    options.setdefault("optimizer", AdagradOptimizer(learning_rate=LR, initial_accumulator_value=0.0))
    return [EmbeddingBagConfig(name=name, embedding_dim=dim, feature_names=features, pooling=pooling, **options)
            for name, dim, features, pooling in TABLES]


def batches(steps: int, seed: int = 0) -> list[KeyedJaggedTensor]:
    """Bags of 0-3 ids from a small vocabulary: ids repeat within and across bags and features."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        rows = {f: [rng.integers(0, VOCAB, rng.integers(0, 4)).tolist() for _ in range(BATCH)]
                for f in ("f1", "f2", "f3")}
        out.append(KeyedJaggedTensor.from_lists(rows))
    return out


class Reference(torch.nn.Module):
    """The same model in plain PyTorch: one nn.EmbeddingBag per table."""

    def __init__(self, weights: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.bags = torch.nn.ModuleDict({
            name: torch.nn.EmbeddingBag.from_pretrained(weights[name].clone(), freeze=False, mode=pooling.lower())
            for name, _, _, pooling in TABLES})

    def forward(self, kjt: KeyedJaggedTensor) -> torch.Tensor:
        pooled = []
        for name, _, features, _ in TABLES:
            for f in features:
                jagged = kjt[f]
                pooled.append(self.bags[name](jagged.values(), jagged.offsets()[:-1]))
        return torch.cat(pooled, 1)


def dense_head(seed: int = 1) -> torch.nn.Linear:
    torch.manual_seed(seed)
    return torch.nn.Linear(4 + 4 + 3, 1)


def test_trains_like_embedding_bag_and_adagrad():
    ebc = EmbeddingBagCollection(configs())
    weights = {name: torch.randn(VOCAB, dim, generator=torch.Generator().manual_seed(i))
               for i, (name, dim, _, _) in enumerate(TABLES)}
    for name, w in weights.items():  # every id of the vocabulary holds the reference's row
        ebc.embedding_bags[name].table.assign(np.arange(VOCAB), w)
    reference = Reference(weights)
    head, ref_head = dense_head(), dense_head()
    dense_opt = torch.optim.SGD(head.parameters(), lr=LR)
    ref_opt = torch.optim.SGD([*ref_head.parameters()], lr=LR)
    sparse_opt = torch.optim.Adagrad(reference.parameters(), lr=LR, initial_accumulator_value=0.0)
    for kjt in batches(5):
        pooled = ebc(kjt)
        expected = reference(kjt)
        assert pooled.keys() == ["f1", "f2", "f3"] and pooled.length_per_key() == [4, 4, 3]
        torch.testing.assert_close(pooled.values(), expected, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(pooled["f3"], expected[:, 8:], rtol=1e-6, atol=1e-6)
        dense_opt.zero_grad()
        ref_opt.zero_grad()
        sparse_opt.zero_grad()
        head(pooled.values()).square().mean().backward()  # the tables update here
        ref_head(expected).square().mean().backward()
        dense_opt.step()
        ref_opt.step()
        sparse_opt.step()
    for name, _, _, _ in TABLES:
        rows = ebc.embedding_bags[name].table.lookup(np.arange(VOCAB))
        want = reference.bags[name].weight.detach()
        assert not torch.equal(want, weights[name])  # training moved them
        torch.testing.assert_close(rows, want, rtol=1e-5, atol=1e-6)
    assert int(ebc.update_count) == 5


def test_new_ids_get_rows_on_first_update_as_zero_rows_would():
    # Absent ids look up zeros and get a row (the initializer's, here zeros) on their first update.
    ebc = EmbeddingBagCollection(configs(initializer=ZerosInitializer()))
    reference = Reference({name: torch.zeros(VOCAB, dim) for name, dim, _, _ in TABLES})
    sparse_opt = torch.optim.Adagrad(reference.parameters(), lr=LR, initial_accumulator_value=0.0)
    target = torch.arange(1.0, 12.0) / 10  # no target near 0, whose gradient would be rounding noise
    for kjt in batches(3, seed=5):
        sparse_opt.zero_grad()
        pooled = ebc(kjt)
        expected = reference(kjt)
        torch.testing.assert_close(pooled.values(), expected, rtol=1e-6, atol=1e-6)
        (pooled.values() - target).square().sum().backward()
        (expected - target).square().sum().backward()
        sparse_opt.step()
    seen = torch.unique(torch.cat([kjt["f1"].values() for kjt in batches(3, seed=5)]
                                  + [kjt["f2"].values() for kjt in batches(3, seed=5)]))
    table = ebc.embedding_bags["shared"].table
    assert len(table) == seen.numel()
    torch.testing.assert_close(table.lookup(seen), reference.bags["shared"].weight.detach()[seen], rtol=1e-5,
                               atol=1e-6)


def test_update_at_apply_gradients_when_not_in_backward():
    fused, stepped = EmbeddingBagCollection(configs()), EmbeddingBagCollection(configs(), update_in_backward=False)
    kjt = batches(1)[0]
    fused(kjt).values().sum().backward()
    out = stepped(kjt).values()
    out.sum().backward()
    assert len(stepped.embedding_bags["shared"].table) == 0  # waiting for apply_gradients
    assert stepped.grad_squared_norm() == pytest.approx(
        sum(float(t.square().sum()) for m in stepped.embedding_bags.values() for t in (p.grads for p in m.pending)))
    stepped.apply_gradients()
    for name in ("shared", "mean"):
        torch.testing.assert_close(stepped.embedding_bags[name].table.items()[1],
                                   fused.embedding_bags[name].table.items()[1], rtol=0, atol=0)
    assert int(stepped.update_count) == int(fused.update_count) == 1


def test_eval_and_no_grad_record_nothing():
    ebc = EmbeddingBagCollection(configs())
    kjt = batches(1)[0]
    with torch.no_grad():
        ebc(kjt)
    ebc.eval()
    assert not ebc(kjt).values().requires_grad
    assert all(not m.pending for m in ebc.embedding_bags.values())


def test_state_dict_round_trip_through_torch_save_is_bit_exact():
    # Occurrence threshold 1: the filter's counters are state too (an id seen once has no row yet).
    make = lambda: EmbeddingBagCollection(configs(occurrence_threshold=1))  # noqa: E731
    trained = make()
    for kjt in batches(4):
        trained(kjt).values().square().sum().backward()
    buffer = io.BytesIO()
    torch.save(trained.state_dict(), buffer)
    state = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    assert {"embedding_bags.shared.keys", "embedding_bags.shared.weights_0", "embedding_bags.shared.state_0",
            "embedding_bags.shared.timestamps", "embedding_bags.shared.filter_counts", "update_count"} <= set(state)
    restored = make()
    restored.load_state_dict(state)
    for kjt in batches(3, seed=9):  # the same outputs and the same updates from here on
        a, b = trained(kjt).values(), restored(kjt).values()
        assert torch.equal(a, b)
        a.square().sum().backward()
        b.square().sum().backward()
    for name in ("shared", "mean"):
        ours, theirs = trained.embedding_bags[name].table.state_dict(), restored.embedding_bags[name].table.state_dict()
        assert ours.keys() == theirs.keys()
        for key in ours:
            np.testing.assert_array_equal(ours[key], theirs[key], err_msg=f"{name}.{key}")


def test_load_state_dict_of_other_tables_fails_clearly():
    state = EmbeddingBagCollection(configs()).state_dict()
    other = EmbeddingBagCollection([EmbeddingBagConfig(name="shared", embedding_dim=5, feature_names=["f1"])])
    with pytest.raises(RuntimeError, match="table 'shared'"):
        other.load_state_dict(state)
    with pytest.raises(RuntimeError, match="Missing key"):
        EmbeddingBagCollection(configs()).load_state_dict({"update_count": torch.tensor(0)})


def test_bad_configs_and_inputs_are_named():
    with pytest.raises(ValueError, match="pooling must be SUM or MEAN"):
        EmbeddingBagConfig(name="t", embedding_dim=2, feature_names=["f"], pooling="NONE")
    with pytest.raises(ValueError, match="embedding_dim"):
        EmbeddingBagConfig(name="t", embedding_dim=0, feature_names=["f"])
    with pytest.raises(ValueError, match="table names repeat"):
        EmbeddingBagCollection(configs() + configs())
    with pytest.raises(KeyError, match="table 'mean' reads feature 'f3'"):
        EmbeddingBagCollection(configs())(KeyedJaggedTensor.from_lists({"f1": [[1]], "f2": [[2]]}))


def test_feature_read_by_two_tables_is_keyed_by_table():
    ebc = EmbeddingBagCollection([EmbeddingBagConfig(name="a", embedding_dim=2, feature_names=["f"]),
                                  EmbeddingBagConfig(name="b", embedding_dim=3, feature_names=["f", "g"])])
    out = ebc(KeyedJaggedTensor.from_lists({"f": [[1], [2]], "g": [[3], []]}))
    assert out.keys() == ["f@a", "f@b", "g"] and out.values().shape == (2, 8)
    assert set(out.to_dict()) == {"f@a", "f@b", "g"}


def test_matches_torchrec_embedding_bag_collection():
    """TorchRec's own classes in, TorchRec's own EBC as the reference (where torchrec is installed)."""
    torchrec = pytest.importorskip("torchrec")
    tables = [torchrec.EmbeddingBagConfig(name=name, embedding_dim=dim, num_embeddings=VOCAB, feature_names=features,
                                          pooling=getattr(torchrec.PoolingType, pooling))
              for name, dim, features, pooling in TABLES]
    theirs = torchrec.EmbeddingBagCollection(tables=tables)
    ours = EmbeddingBagCollection(tables)
    for name, _, _, _ in TABLES:
        ours.embedding_bags[name].table.assign(np.arange(VOCAB), theirs.embedding_bags[name].weight.detach())
    for kjt in batches(2):
        torchrec_kjt = torchrec.KeyedJaggedTensor(keys=kjt.keys(), values=kjt.values(), lengths=kjt.lengths())
        expected = theirs(torchrec_kjt)
        got = ours(torchrec_kjt)
        assert got.keys() == expected.keys()
        torch.testing.assert_close(got.values(), expected.values(), rtol=1e-6, atol=1e-6)
