"""The Monolith model API (``native_model.MonolithModel``): feature columns, embedding slices, layouts,
shared slots, hooks, extra outputs, losses and the normalisation of what ``model_fn`` returns.

Embedding values are checked against rows assigned to the tables by the test and pooled by hand.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from monolith.estimator import Estimator
from monolith.feature import FeatureColumn
from monolith.fid import make_fid
from monolith.layout import OutConfig, SliceLayout
from monolith.losses import get_sigmoid_loss_and_pred
from monolith.metrics.deep_insight import FileMetricHook
from monolith.mode_keys import ModeKeys
from monolith.fid_transforms import switch_slot, switch_slot_batch
from monolith.model import MonolithModel, TrainingHook
from monolith.modules.combiners import FirstN, ReduceMean, ReduceSum
from monolith.optim.initializers import ConstantsInitializer
from monolith.optim.optimizers import SgdOptimizer
from monolith.outputs import PredictionWriter
from monolith.sparse import Batch, JaggedTensor, KeyedJaggedTensor
from monolith.spec import EstimatorSpec

SLOTS = {"a": 1, "b": 2, "c": 3}
MASK48 = (1 << 48) - 1


class ApiModel(MonolithModel):
    """A model whose ``model_fn`` is given by the test."""

    def __init__(self, params=None, fn=None):
        super().__init__(params)
        self.fn = fn
        self.register_slots(SLOTS)

    def input_fn(self, mode):
        return []

    def model_fn(self, features, mode):
        return self.fn(self, features, mode)

    def serving_input_receiver_fn(self):
        return None


def make_batch() -> Batch:
    rows = {
        "a": [[1], [2, 3], []],
        "b": [[4, 4], [5], [6, 1]],
        "c": [[7, 8, 9], [], [1]],
    }
    sparse = KeyedJaggedTensor.from_lists(
        {name: [[make_fid(SLOTS[name], v) for v in row] for row in rs] for name, rs in rows.items()})
    return Batch(sparse, {"label": torch.tensor([1.0, 0.0, 1.0]), "line_id": torch.tensor([10, 11, 12])})


def row_values(fid: int, dim: int) -> np.ndarray:
    """The row the test assigns to ``fid``: distinct, deterministic values."""
    return np.random.default_rng(int(fid)).normal(size=dim).astype(np.float32)


def build(model: ApiModel, batch: Batch, declare):
    """Build pass (lookups give zeros), tables built, every FID of the batch assigned, then a real pass."""
    with model.ctx.step(batch):
        declare(model)
    model.ctx.build()
    for fs in model.ctx.feature_slots:
        table = model.ctx.tables[fs.name].table
        fids = sorted({int(v) for name, col in fs.feature_columns.items() for v in batch.sparse[name].values()})
        table.assign(np.array(fids, dtype=np.int64), np.stack([row_values(f, table.dim) for f in fids]))
    with model.ctx.step(batch):
        return declare(model)


def pooled(batch: Batch, name: str, start: int, end: int, dim: int, combiner: str = "sum") -> torch.Tensor:
    """Hand-pooled ``[batch, end-start]``: columns ``start..end`` of feature ``name``'s rows (of width ``dim``)."""
    out = []
    for row in batch.sparse[name].to_lists():
        vals = [row_values(f, dim)[start:end] for f in row]
        if not vals:
            out.append(np.zeros(end - start, np.float32))
        elif combiner == "sum":
            out.append(np.sum(vals, axis=0))
        else:
            out.append(np.mean(vals, axis=0))
    return torch.tensor(np.array(out, dtype=np.float32))


# ----------------------------------------------------------------------------- feature columns
def test_create_embedding_feature_column_is_created_once():
    model = ApiModel()
    fc = model.create_embedding_feature_column("a")
    assert isinstance(fc, FeatureColumn) and fc.feature_name == "a"
    assert fc.feature_slot.slot == 1
    assert model.create_embedding_feature_column("a") is fc
    assert model.create_embedding_feature_column("a", combiner="reduce_mean") is fc  # the first one wins
    assert model.fc_dict == {"a": fc}
    # A slot number names the registered feature.
    assert model.create_embedding_feature_column(1) is fc
    assert len(model.ctx.feature_slots) == 1


def test_default_and_explicit_combiners():
    model = ApiModel()
    assert isinstance(model.create_embedding_feature_column("a").combiner, ReduceSum)
    seq = model.create_embedding_feature_column("b", max_seq_length=4).combiner
    assert isinstance(seq, FirstN) and seq.max_seq_length == 4
    assert isinstance(model.create_embedding_feature_column("c", combiner="reduce_mean").combiner, ReduceMean)
    assert isinstance(model.create_embedding_feature_column("d", combiner="reduce_sum", max_seq_length=3).combiner,
                      ReduceSum)
    first = model.create_embedding_feature_column("e", combiner="first_n", max_seq_length=2).combiner
    assert isinstance(first, FirstN) and first.max_seq_length == 2
    with pytest.raises(ValueError, match="combiner"):
        model.create_embedding_feature_column("f", combiner="reduce_max")
    assert "f" not in model.fc_dict


def test_occurrence_threshold_defaults_to_the_model_param():
    model = ApiModel()
    model.p.default_occurrence_threshold = 3
    batch = make_batch()

    def declare(m):
        m.create_embedding_feature_column("a")
        m.create_embedding_feature_column("b", occurrence_threshold=5, expire_time=7)
        m.create_embedding_feature_column("c", occurrence_threshold=0)
        return m.lookup_embedding_slice(["a", "b", "c"], "vec", 2)

    build(model, batch, declare)
    assert model.fc_dict["a"].feature_slot.config.occurrence_threshold == 3
    assert model.fc_dict["b"].feature_slot.config.occurrence_threshold == 5
    assert model.fc_dict["c"].feature_slot.config.occurrence_threshold == 0
    assert model.fc_dict["b"].feature_slot.config.expire_time == 7
    # The built tables enforce them.
    assert model.ctx.tables["a"].table.slot_config(1).occurrence_threshold == 3
    assert model.ctx.tables["b"].table.slot_config(2).occurrence_threshold == 5
    assert model.ctx.tables["b"].table.slot_config(2).expire_time == 7
    assert model.ctx.tables["c"].table.slot_config(3).occurrence_threshold == 0


def test_shared_name_reuses_the_slot_and_its_rows():
    model = ApiModel()
    batch = make_batch()

    def declare(m):
        m.create_embedding_feature_column("a")
        m.create_embedding_feature_column("b", shared_name="a")
        return m.lookup_embedding_slice(["a", "b"], "vec", 3)

    emb_a, emb_b = build(model, batch, declare)
    fc_a, fc_b = model.fc_dict["a"], model.fc_dict["b"]
    assert fc_b.feature_slot is fc_a.feature_slot
    assert list(model.ctx.tables) == ["a"]  # one table for both
    assert model.slice_dict == {"a": {"vec": fc_a.feature_slot.named_slices["vec"]}}
    # b's FIDs are read from a's table (the test assigned b's FIDs into it).
    torch.testing.assert_close(emb_a, pooled(batch, "a", 0, 3, 3))
    torch.testing.assert_close(emb_b, pooled(batch, "b", 0, 3, 3))


def test_shared_name_must_be_created_first():
    model = ApiModel()
    with pytest.raises(Exception, match="b shared embedding with zzz, so zzz should create first!"):
        model.create_embedding_feature_column("b", shared_name="zzz")
    assert "b" not in model.fc_dict
    assert model.ctx.feature_slots == []


def test_shared_name_with_a_known_slot_creates_its_slot():
    model = ApiModel()
    fc_b = model.create_embedding_feature_column("b", shared_name="a")  # "a" is registered with slot 1
    assert fc_b.feature_slot.slot == 1 and model.fs_dict["a"] is fc_b.feature_slot
    fc_a = model.create_embedding_feature_column("a")
    assert fc_a.feature_slot is fc_b.feature_slot
    assert len(model.ctx.feature_slots) == 1


def test_shared_name_may_name_a_slot():
    model = ApiModel()
    assert model.create_embedding_feature_column("a", shared_name="slot_7").feature_slot.slot == 7
    assert model.create_embedding_feature_column("b", shared_name="fc_slot_8").feature_slot.slot == 8
    assert model._share_slot_mapping == {"a": "slot_7", "b": "fc_slot_8"}
    with pytest.raises(Exception, match="should create first"):
        model.create_embedding_feature_column("c", shared_name="user_emb")
    assert "c" not in model._share_slot_mapping


def test_features_that_name_no_slot_never_share_a_table_by_accident():
    model = ApiModel()  # a, b, c registered with slots 1, 2, 3
    fc_4 = model.create_embedding_feature_column(4)
    fc_q = model.create_embedding_feature_column("qqq", occurrence_threshold=5, expire_time=3)
    assert fc_4.feature_slot.slot == 4 and fc_q.feature_slot.slot == 5  # 1..4 are taken
    assert fc_q.feature_slot.config.occurrence_threshold == 5 and fc_q.feature_slot.config.expire_time == 3
    with pytest.raises(ValueError, match="feature 'slot_5' names slot 5, which feature 'qqq' was given"):
        model.create_embedding_feature_column("slot_5")
    with pytest.raises(ValueError, match="feature 'slot_5' names slot 5"):
        model.create_embedding_feature_column(5)


# ----------------------------------------------------------------------------- lookups
def _columns(model):
    for name in ("a", "b", "c"):
        model.create_embedding_feature_column(name)


def test_lookup_list_with_dim_and_out_types():
    model = ApiModel()
    batch = make_batch()

    def declare(m):
        _columns(m)
        return {
            None: m.lookup_embedding_slice(["a", "b", "c"], "vec", 2),
            "concat": m.lookup_embedding_slice(["a", "b", "c"], "vec", 2, out_type="concat"),
            "stack": m.lookup_embedding_slice(["a", "b", "c"], "vec", 2, out_type="stack"),
            "add_n": m.lookup_embedding_slice(["a", "b", "c"], "vec", 2, out_type="add_n"),
            "addn": m.lookup_embedding_slice(["a", "b", "c"], "vec", 2, out_type="addn"),
        }

    out = build(model, batch, declare)
    expected = [pooled(batch, n, 0, 2, 2) for n in ("a", "b", "c")]
    assert isinstance(out[None], list) and len(out[None]) == 3
    for got, want in zip(out[None], expected):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(out["concat"], torch.cat(expected, 1))
    torch.testing.assert_close(out["stack"], torch.stack(expected, 1))
    torch.testing.assert_close(out["add_n"], expected[0] + expected[1] + expected[2])
    torch.testing.assert_close(out["addn"], out["add_n"])
    assert out["concat"].shape == (3, 6) and out["stack"].shape == (3, 3, 2)


def test_lookup_dict_pairs_columns_and_slots_with_several_slices():
    model = ApiModel()
    batch = make_batch()

    def declare(m):
        _columns(m)
        vec = m.lookup_embedding_slice({"a": 3, "b": 2}, "vec")
        pairs = m.lookup_embedding_slice([("c", 4), ("a", 3)], "vec", out_type="concat")
        bias = m.lookup_embedding_slice([m.fc_dict["a"], 2, "c"], "bias", 1, out_type="add_n")
        return vec, pairs, bias

    vec, pairs, bias = build(model, batch, declare)
    # Row widths: a = vec 3 + bias 1, b = vec 2 + bias 1, c = vec 4 + bias 1.
    torch.testing.assert_close(vec[0], pooled(batch, "a", 0, 3, 4))
    torch.testing.assert_close(vec[1], pooled(batch, "b", 0, 2, 3))
    torch.testing.assert_close(pairs, torch.cat([pooled(batch, "c", 0, 4, 5), pooled(batch, "a", 0, 3, 4)], 1))
    want_bias = pooled(batch, "a", 3, 4, 4) + pooled(batch, "b", 2, 3, 3) + pooled(batch, "c", 4, 5, 5)
    torch.testing.assert_close(bias, want_bias)
    assert model.slice_dict["a"]["vec"].start == 0 and model.slice_dict["a"]["bias"].start == 3
    assert model.ctx.tables["a"].table.dim == 4


def test_lookup_groups_add_n_and_concat():
    model = ApiModel()
    batch = make_batch()

    def declare(m):
        _columns(m)
        return (m.lookup_embedding_slice([["a", "b"], ["c"]], "vec", 2),
                m.lookup_embedding_slice([("a", "b"), ("b", "c")], "vec", 2, group_out_type="concat"),
                m.lookup_embedding_slice([[1, 2], [3]], "vec", 2, out_type="concat"))

    add, cat, slots = build(model, batch, declare)
    a, b, c = (pooled(batch, n, 0, 2, 2) for n in ("a", "b", "c"))
    torch.testing.assert_close(add[0], a + b)
    torch.testing.assert_close(add[1], c)
    torch.testing.assert_close(cat[0], torch.cat([a, b], 1))
    torch.testing.assert_close(cat[1], torch.cat([b, c], 1))
    torch.testing.assert_close(slots, torch.cat([a + b, c], 1))


def test_lookup_reduce_mean_and_first_n():
    model = ApiModel()
    batch = make_batch()

    def declare(m):
        m.create_embedding_feature_column("a", combiner="reduce_mean")
        m.create_embedding_feature_column("c", max_seq_length=2)
        return m.lookup_embedding_slice(["a"], "vec", 2), m.lookup_embedding_slice(["c"], "vec", 2)

    (mean,), (seq,) = build(model, batch, declare)
    torch.testing.assert_close(mean, pooled(batch, "a", 0, 2, 2, combiner="mean"))
    assert seq.shape == (3, 2, 2)
    c7, c8, c1 = (torch.from_numpy(row_values(make_fid(3, v), 2)) for v in (7, 8, 1))
    want = torch.zeros(3, 2, 2)
    want[0, 0], want[0, 1], want[2, 0] = c7, c8, c1  # cut at 2, padded with zeros
    torch.testing.assert_close(seq, want)
    layout = next(iter(model.layout_dict.values()))
    assert layout.out_type == "none"
    assert model.layout_dict[f"vec_{hashlib.md5(b'c').hexdigest()}"].shape == ((-1, 2, 2),)


@pytest.mark.parametrize("features, slice_dim", [
    (["a", ["b", "c"]], 2),            # names mixed with groups
    ([("a", 2, 1)], None),              # not (feature, dim) pairs
    (["a", "b"], None),                 # names without a dim
    ("a", 2),                           # not a list or dict
    (5, 2),
])
def test_lookup_bad_features(features, slice_dim):
    model = ApiModel()
    _columns(model)
    with model.ctx.step(make_batch()), pytest.raises(ValueError, match="ValueError for features"):
        model.lookup_embedding_slice(features, "vec", slice_dim)


def test_lookup_bad_out_type_and_group_out_type():
    model = ApiModel()
    _columns(model)
    with model.ctx.step(make_batch()):
        with pytest.raises(ValueError, match="out_type"):
            model.lookup_embedding_slice(["a", "b"], "vec", 2, out_type="sum")
        with pytest.raises(ValueError, match="group_out_type"):
            model.lookup_embedding_slice([["a", "b"]], "vec", 2, group_out_type="stack")
        with pytest.raises(KeyError, match="create_embedding_feature_column"):
            model.lookup_embedding_slice(["zzz"], "vec", 2)


def test_repeated_lookups_read_the_first_declaration_until_clean():
    """model_fn runs every step: a lookup_embedding_slice call like an earlier one reads the slices that one
    declared and records its layout again; another dim still raises; clean() forgets the declarations."""
    model = ApiModel()
    batch = make_batch()
    name = f"vec_{hashlib.md5(b'a,b').hexdigest()}"

    def declare(m, dim=2, out_type="concat"):
        for feature in ("a", "b"):
            m.create_embedding_feature_column(feature)
        return m.lookup_embedding_slice(["a", "b"], "vec", dim, out_type=out_type)

    first = build(model, batch, declare)
    torch.testing.assert_close(first, torch.cat([pooled(batch, "a", 0, 2, 2), pooled(batch, "b", 0, 2, 2)], 1))
    model.layout_dict = {}
    with model.ctx.step(batch):
        torch.testing.assert_close(declare(model), first)
        assert list(model.layout_dict) == [name] and model.layout_dict[name].out_type == "concat"
        torch.testing.assert_close(declare(model, out_type="stack").flatten(1), first)
        assert model.layout_dict[name].shape == ((-1, 2, 2),)
        declare(model)
        assert model.layout_dict[name].out_type == "concat"
        with pytest.raises(ValueError, match="has dim 2, asked for 3"):
            declare(model, dim=3)
    model.clean()
    assert model.slice_dict == {} and model.fc_dict == {}
    with model.ctx.step(batch):
        torch.testing.assert_close(declare(model), first)
    assert model.slice_dict["a"]["vec"].end == 2 and model.fc_dict["a"].feature_name == "a"


def test_features_looked_up_together_train_as_looked_up_one_by_one():
    """lookup_embedding_slice looks its features up in one autograd step: the embeddings, each table's
    gradients (none for a feature left out of the loss) and the rows after the update are those of one
    lookup per feature."""
    batch = make_batch()

    def columns(m):
        m.create_embedding_feature_column("a", combiner="reduce_mean")
        m.create_embedding_feature_column("b")
        m.create_embedding_feature_column("c")

    def together(m):
        columns(m)
        return m.lookup_embedding_slice(["a", "b", "c"], "vec", 2)

    def one_by_one(m):
        columns(m)
        return [m.lookup_embedding_slice([name], "vec", 2)[0] for name in ("a", "b", "c")]

    results = []
    for declare in (together, one_by_one):
        model = ApiModel()
        build(model, batch, declare)
        calls = []
        for module in model.ctx.tables.values():
            module.register_forward_hook(lambda *_: calls.append(1))
        with model.ctx.step(batch):
            a, b, c = declare(model)
        assert a.requires_grad and c.requires_grad
        assert len(calls) == (0 if declare is together else 3)  # together: no lookup of one table alone
        ((a * torch.tensor([1.0, -2.0])).sum() + (b ** 2).sum()).backward()  # c is not in the loss
        grads = {name: [(p.ids.tolist(), p.grads) for p in module.pending] for name, module in model.ctx.tables.items()}
        model.ctx.apply_gradients(global_step=1)
        fids = {name: np.array(sorted({int(v) for v in batch.sparse[name].values()})) for name in ("a", "b", "c")}
        rows = {name: model.ctx.tables[name].table.lookup(ids) for name, ids in fids.items()}
        results.append(([a.detach(), b.detach(), c.detach()], grads, rows))
    (outs, grads, rows), (want_outs, want_grads, want_rows) = results
    torch.testing.assert_close(outs, want_outs, rtol=0, atol=0)
    assert grads["c"] == [] and want_grads["c"] == [] and len(grads["a"]) == len(grads["b"]) == 1
    for name in ("a", "b"):
        assert grads[name][0][0] == want_grads[name][0][0]
        torch.testing.assert_close(grads[name][0][1], want_grads[name][0][1], rtol=0, atol=0)
    torch.testing.assert_close(rows, want_rows, rtol=0, atol=0)
    torch.testing.assert_close(outs[0], pooled(batch, "a", 0, 2, 2, combiner="mean"))


def test_layout_out_config_contents():
    model = ApiModel()
    batch = make_batch()

    def declare(m):
        _columns(m)
        m.lookup_embedding_slice(["b", "a"], "vec", 4, out_type="concat")
        m.lookup_embedding_slice({"c": 4, "a": 4}, "vec", out_type="stack")
        m.lookup_embedding_slice(["a", "b", "c"], "bias", 1, out_type="add_n")
        m.lookup_embedding_slice([("c", 4), ("b", 4)], "vec")

    build(model, batch, declare)
    md5 = lambda s: hashlib.md5(s.encode()).hexdigest()
    pairs_key = ",".join(sorted(map(str, [("c", 4), ("b", 4)])))
    assert set(model.layout_dict) == {f"vec_{md5('a,b')}", f"vec_{md5('a,c')}", f"bias_{md5('a,b,c')}",
                                      f"vec_{md5(pairs_key)}"}
    assert model.layout_dict[f"vec_{md5('a,b')}"] == OutConfig(
        (SliceLayout("b", 0, 4), SliceLayout("a", 0, 4)), "concat", ((-1, 8),))
    assert model.layout_dict[f"vec_{md5('a,c')}"] == OutConfig(
        (SliceLayout("c", 0, 4), SliceLayout("a", 0, 4)), "stack", ((-1, 2, 4),))
    assert model.layout_dict[f"bias_{md5('a,b,c')}"] == OutConfig(
        (SliceLayout("a", 4, 5), SliceLayout("b", 4, 5), SliceLayout("c", 4, 5)), "addn", ((-1, 1),))
    assert model.layout_dict[f"vec_{md5(pairs_key)}"] == OutConfig(
        (SliceLayout("c", 0, 4), SliceLayout("b", 0, 4)), "none", ((-1, 4), (-1, 4)))
    as_dict = model.layout_dict[f"vec_{md5('a,b')}"].to_dict()
    assert as_dict["slice_configs"][0] == {"feature_name": "b", "start": 0, "end": 4}
    assert OutConfig.from_dict(as_dict) == model.layout_dict[f"vec_{md5('a,b')}"]


# ----------------------------------------------------------------------------- share_slot
def test_share_slot_in_place_and_with_suffix():
    model = ApiModel()
    batch = make_batch()
    out = model.share_slot(batch, {"a": (False, 9), "b": (True, 12)})
    assert isinstance(out, Batch)
    assert out.sparse.keys() == ["a", "b", "c", "a_share"]
    a, b = batch.sparse["a"], batch.sparse["b"]
    # The copy and the in-place feature carry the new slot; signatures and lengths are kept.
    want_a = [[(v & MASK48) | (9 << 48) for v in row] for row in a.to_lists()]
    want_b = [[(v & MASK48) | (12 << 48) for v in row] for row in b.to_lists()]
    assert out.sparse["a_share"].to_lists() == want_a
    assert out.sparse["a"].to_lists() == a.to_lists()
    assert out.sparse["b"].to_lists() == want_b
    assert out.sparse["c"].to_lists() == batch.sparse["c"].to_lists()
    assert torch.equal(out.dense["label"], batch.dense["label"])
    # The slots are registered for the names read afterwards.
    assert model.get_feature_name_and_slot("a_share") == ("a_share", 9)
    assert model.get_feature_name_and_slot("b") == ("b", 12)
    assert model.create_embedding_feature_column("a_share").feature_slot.slot == 9


def test_share_slot_inside_model_fn_feeds_the_steps_lookups():
    batch = make_batch()

    def fn(m, features, mode):
        features = m.share_slot(features, {"b": (False, 10), "c": (True, 11)})
        m.create_embedding_feature_column("b_share")
        m.create_embedding_feature_column("c")
        b_share, c = m.lookup_embedding_slice(["b_share", "c"], "v", 2, initializer=ConstantsInitializer(0.0),
                                              optimizer=SgdOptimizer(1.0))
        loss = (b_share * torch.tensor([1.0, 2.0])).sum() + (c * torch.tensor([3.0, 4.0])).sum()
        return EstimatorSpec(label=None, pred=loss.expand(3), loss=loss)

    model = ApiModel(fn=fn)
    model_fn = model.create_model_fn()
    model_fn(batch, ModeKeys.TRAIN)  # the build pass declares the slots
    model.ctx.build()
    model_fn(batch, ModeKeys.TRAIN).loss.backward()
    model.ctx.apply_gradients(0, 1.0, "local")
    # The lookups read the switched FIDs: each one's row took its gradient once per occurrence.
    for name, table, slot, grad in (("b", "b_share", 10, [1.0, 2.0]), ("c", "c", 11, [3.0, 4.0])):
        counts = collections.Counter((int(v) & MASK48) | (slot << 48) for v in batch.sparse[name].values())
        fids = torch.tensor(list(counts))
        want = -torch.tensor([float(counts[int(f)]) for f in fids])[:, None] * torch.tensor(grad)
        torch.testing.assert_close(model.ctx.tables[table].table.lookup(fids), want)
    assert sorted(model.ctx.tables) == ["b_share", "c"]


def test_share_slot_inside_model_fn_keeps_the_rows_of_unchanged_features():
    # share_slot switches the running step's batch: "a" (unchanged) is looked up once for both of
    # its slices, b_share (new) is looked up from the switched FIDs.
    def fn(m, features, mode):
        m.create_embedding_feature_column("a")
        first = m.lookup_embedding_slice(["a"], "v", 2, out_type="concat")
        features = m.share_slot(features, {"b": (False, 10)})
        m.create_embedding_feature_column("b_share")
        second = m.lookup_embedding_slice(["a", "b_share"], "w", 2, out_type="concat")
        loss = first.sum() + second.sum()
        return EstimatorSpec(label=None, pred=loss.expand(3), loss=loss)

    model = ApiModel(fn=fn)
    model(make_batch()).loss.backward()  # the first call builds the tables, then runs a step
    assert len(model.ctx.tables["a"].pending) == 1 and len(model.ctx.tables["b_share"].pending) == 1
    assert model.ctx.tables["a"].pending[0].grads.shape == (3, 4)  # both slices' gradients, one lookup


def test_share_slot_returns_a_function_and_custom_suffix():
    model = ApiModel()
    fn = model.share_slot(None, {"c": (False, 20)}, suffix="copy")
    assert callable(fn)
    batch = make_batch()
    out = fn(batch)
    assert out.sparse["c_copy"].to_lists() == [[(v & MASK48) | (20 << 48) for v in row]
                                               for row in batch.sparse["c"].to_lists()]
    assert model.get_feature_name_and_slot("c_copy") == ("c_copy", 20)


def test_switch_slot_batch_is_monolith_name_for_the_switch_and_names_missing_features():
    batch = make_batch()
    out = switch_slot_batch(batch, {"c": (True, 30)})
    assert out.sparse["c"].to_lists() == [[(v & MASK48) | (30 << 48) for v in row] for row in batch.sparse["c"].to_lists()]
    assert out.sparse["a"].to_lists() == batch.sparse["a"].to_lists()
    with pytest.raises(KeyError, match="feature 'zz' is not in the batch"):
        switch_slot_batch(batch, {"zz": (True, 3)})


def test_switch_slot():
    jt = JaggedTensor.from_lists([[make_fid(3, 5), make_fid(7, (1 << 48) - 1)], []])
    out = switch_slot(jt, 100)
    assert out.to_lists() == [[make_fid(100, 5), make_fid(100, (1 << 48) - 1)], []]
    with pytest.raises(ValueError):
        switch_slot(jt, 1 << 15)


# ----------------------------------------------------------------------------- hooks, outputs, losses
def test_add_extra_output_repeat_is_key_error():
    model = ApiModel()
    model.add_extra_output("emb", torch.ones(2))
    with pytest.raises(KeyError, match="emb"):
        model.add_extra_output("emb", torch.zeros(2))
    assert torch.equal(model._export_outputs["emb"], torch.ones(2))


def test_add_training_hook_at_most_one_file_metric_hook(tmp_path):
    model = ApiModel()
    plain1, plain2 = TrainingHook(), TrainingHook()
    model.add_training_hook(plain1)
    model.add_training_hook(plain2)
    first = FileMetricHook(str(tmp_path), "m", 0.5)
    model.add_training_hook(first)
    model.add_training_hook(FileMetricHook(str(tmp_path), "m2", 0.5))  # ignored, as Monolith does
    assert model._training_hooks == [plain1, plain2, first]
    # The Estimator adds no file-metric hook of its own beside the model's.
    model.p.metrics.enable_file_metrics, model.p.metrics.deep_insight_sample_ratio = True, 1.0
    hooks = Estimator(model, str(tmp_path / "run"))._hooks(model._training_hooks)
    assert hooks == [plain1, plain2, first]


def _spec_fn(extra_loss=None, hook=None, output=None):
    def fn(m, features, mode):
        m.create_embedding_feature_column("a")
        emb = m.lookup_embedding_slice(["a"], "vec", 2, out_type="concat",
                                       optimizer=SgdOptimizer(0.1))
        logits = emb.sum(1) + m.bias
        if extra_loss is not None:
            m.add_loss(extra_loss(emb))
        if hook is not None:
            m.add_training_hook(hook)
        if output is not None:
            m.add_extra_output("out", output)
        loss, pred = get_sigmoid_loss_and_pred("ctr", logits, features["label"], 3, mode=mode)
        return EstimatorSpec(label=features["label"], pred=pred, head_name="ctr", loss=loss)
    return fn


def test_add_loss_adds_to_the_loss_each_step():
    model = ApiModel(fn=_spec_fn(extra_loss=lambda emb: [emb.pow(2).sum(), torch.tensor(2.0)]))
    model.bias = torch.nn.Parameter(torch.tensor(0.3))
    model_fn = model.create_model_fn()
    batch = make_batch()
    for _ in range(2):  # the auxiliary losses of one step do not leak into the next
        out = model_fn(batch, ModeKeys.TRAIN)
        logits = torch.full((3,), 0.3)  # build pass: embeddings are zeros
        base = F.binary_cross_entropy_with_logits(logits, batch.dense["label"], reduction="sum")
        torch.testing.assert_close(out.loss, base + 2.0)
        assert len(model.losses) == 2


def test_hooks_and_extra_outputs_are_per_call():
    hook = TrainingHook()
    model = ApiModel(fn=_spec_fn(hook=hook, output=torch.ones(3)))
    model.bias = torch.nn.Parameter(torch.tensor(0.0))
    model_fn = model.create_model_fn()
    first = model_fn(make_batch(), ModeKeys.TRAIN)
    second = model_fn(make_batch(), ModeKeys.TRAIN)  # no "already exists" errors on the next step
    assert first.training_hooks == [hook] and second.training_hooks == [hook]
    assert list(second.extra_outputs) == ["out"]


def test_get_sigmoid_loss_and_pred_inside_model_fn():
    model = ApiModel(fn=_spec_fn())
    model.bias = torch.nn.Parameter(torch.tensor(-0.2))
    batch = make_batch()
    model_fn = model.create_model_fn()
    model_fn(batch, ModeKeys.TRAIN)  # build pass
    model.ctx.build()
    table = model.ctx.tables["a"].table
    fids = [make_fid(1, v) for v in (1, 2, 3)]
    table.assign(np.array(fids), np.array([[0.5, -1.0], [0.25, 0.75], [2.0, 0.0]], dtype=np.float32))
    out = model_fn(batch, ModeKeys.TRAIN)
    logits = torch.tensor([0.5 - 1.0, 0.25 + 0.75 + 2.0 + 0.0, 0.0]) - 0.2
    label = batch.dense["label"]
    want_loss = -(label * torch.log(torch.sigmoid(logits)) + (1 - label) * torch.log(1 - torch.sigmoid(logits))).sum()
    torch.testing.assert_close(out.loss, want_loss)
    torch.testing.assert_close(out.predictions, torch.sigmoid(logits))
    assert out.head_names == ["ctr"] and out.classification == [True] and out.mode == ModeKeys.TRAIN
    out.loss.backward()
    torch.testing.assert_close(model.bias.grad, (torch.sigmoid(logits) - label).sum())

    pred_out = model_fn(batch, ModeKeys.PREDICT)
    assert pred_out.loss is None and pred_out.mode == ModeKeys.PREDICT
    torch.testing.assert_close(pred_out.predictions, torch.sigmoid(logits))

    model.p.mode = ModeKeys.EVAL
    eval_out = model_fn(batch, ModeKeys.TRAIN)
    assert eval_out.mode == ModeKeys.EVAL
    torch.testing.assert_close(eval_out.loss, want_loss)
    with pytest.raises(ValueError):
        model_fn(batch, ModeKeys.EVAL)


# ----------------------------------------------------------------------------- EstimatorSpec normalisation
def _run(spec):
    model = ApiModel(fn=lambda m, f, mode: spec)
    return model.create_model_fn()(make_batch(), ModeKeys.TRAIN)


def test_dict_preds_give_head_names_in_insertion_order():
    p1, p2 = torch.rand(3), torch.rand(3)
    l1, l2 = torch.ones(3), torch.zeros(3)
    loss = torch.tensor(1.5)
    out = _run(EstimatorSpec(label={"zeta": l1, "alpha": l2}, pred={"zeta": p1, "alpha": p2}, loss=loss,
                             classification=[True, False]))
    assert out.head_names == ["zeta", "alpha"]
    assert out.preds[0] is p1 and out.preds[1] is p2
    assert out.labels[0] is l1 and out.labels[1] is l2
    assert out.classification == [True, False]
    assert list(out.predictions) == ["zeta", "alpha"]
    assert out.loss is loss
    # Labels are matched by head name, not by position.
    out = _run(EstimatorSpec(label={"alpha": l2, "zeta": l1}, pred={"zeta": p1, "alpha": p2}, loss=loss))
    assert out.labels[0] is l1 and out.labels[1] is l2


def test_list_preds_and_single_pred_head_names():
    p1, p2, lab = torch.rand(3), torch.rand(3, 1), torch.ones(3)
    out = _run(EstimatorSpec(label=[lab, lab], pred=[p1, p2], head_name=["x", "y"], loss=torch.tensor(0.0),
                             classification=[False, False]))
    assert out.head_names == ["x", "y"] and out.classification == [False, False]
    assert out.predictions == [p1, p2]
    # One pred without a head name takes metrics.deep_insight_target.
    out = _run(EstimatorSpec(label=lab, pred=p1, loss=torch.tensor(0.0)))
    assert out.head_names == ["ctr_head"] and out.predictions is p1 and out.classification == [True]
    out = _run(EstimatorSpec(label=lab, pred=p1, head_name=["only"], loss=torch.tensor(0.0)))
    assert out.head_names == ["only"]


def test_list_preds_keep_their_order_and_read_dict_labels_and_flags_by_head(tmp_path):
    pz, pa, lz, la = torch.rand(3), torch.rand(3), torch.ones(3), torch.zeros(3)
    out = _run(EstimatorSpec(label={"a": la, "z": lz}, pred=[pz, pa], head_name=["z", "a"], loss=torch.tensor(0.0),
                             classification={"a": False, "z": True}))
    assert out.labels[0] is lz and out.labels[1] is la
    assert out.classification == [True, False]
    with pytest.raises(ValueError, match=r"label has no head\(s\) \['a'\]"):
        _run(EstimatorSpec(label={"z": lz}, pred=[pz, pa], head_name=["z", "a"], loss=torch.tensor(0.0)))
    with pytest.raises(ValueError, match=r"no flag for head\(s\) \['z'\]"):
        _run(EstimatorSpec(label=None, pred={"z": pz}, loss=torch.tensor(0.0), classification={"a": True}))
    # Prediction files keep a list's order (a dict's heads are sorted by name).
    with PredictionWriter(str(tmp_path), None) as writer:
        writer.write(make_batch(), out.predictions)
    lines = (tmp_path / "part-00000").read_text().splitlines()
    assert [line.split("\t") for line in lines] == [
        [_tf_float(float(z)), _tf_float(float(a))] for z, a in zip(pz.tolist(), pa.tolist())]


def _tf_float(value: float) -> str:
    """How TensorFlow prints a float32: 6 significant digits where they read back as the same
    float32, else 9 (checked by hand: 0.1 -> '0.1', log(2) -> '0.693147182')."""
    short = "%.6g" % value
    return short if np.float32(short) == np.float32(value) else "%.9g" % value


def test_prediction_files_print_floats_as_tensorflow_does(tmp_path):
    pred = torch.tensor([0.1, math.log(2), 1e-5], dtype=torch.float32)
    with PredictionWriter(str(tmp_path), None) as writer:
        writer.write(make_batch(), pred)
    assert (tmp_path / "part-00000").read_text().splitlines() == ["0.1", "0.693147182", "1e-05"]


def test_add_loss_skips_none_and_wants_scalars():
    model = ApiModel()
    model.add_loss(None)
    model.add_loss([torch.tensor(0.5), None, torch.tensor([0.25])])
    assert [float(l) for l in model.losses] == [0.5, 0.25]
    with pytest.raises(ValueError, match=r"must be a scalar, got shape \[3\]"):
        model.add_loss(torch.ones(3))


def test_tuple_result_is_a_classification_with_a_warning(caplog):
    p, lab, loss = torch.rand(3), torch.ones(3), torch.tensor(0.7)
    with caplog.at_level(logging.WARNING, logger="monolith.model"):
        out = _run((lab, loss, p))
    assert "pls. return EstimatorSpec" in caplog.text
    assert out.classification == [True] and out.head_names == ["ctr_head"]
    assert out.loss is loss and out.preds[0] is p and out.labels[0] is lab
    out = _run([{"h1": lab, "h2": lab}, loss, {"h1": p, "h2": p}])
    assert out.head_names == ["h1", "h2"] and out.classification == [True, True]


@pytest.mark.parametrize("bad", [None, {"loss": 1}, (1, 2), "spec", torch.ones(3)])
def test_other_results_are_an_estimator_spec_error(bad):
    with pytest.raises(Exception, match="EstimatorSpec Error!"):
        _run(bad)


@pytest.mark.parametrize("spec", [
    EstimatorSpec(label=[torch.ones(3)], pred=[torch.rand(3), torch.rand(3)], head_name=["a", "b"]),
    EstimatorSpec(label=[torch.ones(3), torch.ones(3)], pred=[torch.rand(3), torch.rand(3)], head_name=["a"]),
    EstimatorSpec(label=torch.ones(3), pred=torch.rand(3), head_name=["a", "b"]),
    EstimatorSpec(label={"a": torch.ones(3)}, pred={"a": torch.rand(3), "b": torch.rand(3)}),
    EstimatorSpec(label={"a": torch.ones(3), "c": torch.ones(3)}, pred={"a": torch.rand(3), "b": torch.rand(3)}),
    EstimatorSpec(label=torch.ones(3), pred={"a": torch.rand(3)}),
    EstimatorSpec(label=torch.ones(3), pred=torch.rand(3, 2), head_name="a"),
    EstimatorSpec(label=[torch.ones(3)] * 2, pred=[torch.rand(3)] * 2, head_name=["a", "b"],
                  classification=[True]),
])
def test_mismatched_heads_and_labels_are_value_errors(spec):
    with pytest.raises(ValueError):
        _run(spec)


@pytest.mark.parametrize("one_table_per_slot", [True, False])
def test_slot_hashtable_config_sets_the_initial_capacity_of_its_table(one_table_per_slot):
    from monolith.entry import CuckooHashTableConfig
    from monolith.feature import FeatureSlotConfig
    from monolith.modules.feature_slot_collection import FeatureSlotCollection

    factory = FeatureSlotCollection(use_native_multi_hash_table=one_table_per_slot)
    for slot, capacity in ((1, 3000), (2, 5000)):
        config = FeatureSlotConfig(slot_id=slot, hashtable_config=CuckooHashTableConfig(initial_capacity=capacity))
        factory.create_feature_slot(config).add_feature_slice(4)
    factory.build()
    tables = {slot: module.table for slot, module in factory.slot_tables().items()}
    if one_table_per_slot:
        assert (tables[1].initial_capacity, tables[2].initial_capacity) == (3000, 5000)
    else:  # one merged table serves both slots: room for the ids of both
        assert tables[1] is tables[2] and tables[1].initial_capacity == 8000
    assert all(t.capacity >= t.initial_capacity for t in tables.values())
    with pytest.raises(ValueError, match="initial_capacity must be an int >= 0, got 1.5"):
        CuckooHashTableConfig(initial_capacity=1.5)


def test_slice_optimizer_by_monolith_name_and_errors_name_the_feature_slot():
    model = ApiModel()
    fc = model.create_embedding_feature_column("a")
    fc.feature_slot.add_feature_slice(2, optimizer="sgd")
    assert type(fc.feature_slot.slices[0].optimizer).__name__ == "SgdOptimizer"
    with pytest.raises(ValueError, match=r"feature slot 'a' \(slot 1\), slice 1 of dim 2: unknown optimizer 'adagradd'"):
        fc.feature_slot.add_feature_slice(2, optimizer="adagradd")
