"""A Monolith model as a PyTorch module: ``model(batch)`` runs ``model_fn`` in the run mode, and
``state_dict()`` carries every embedding table, so a saved model loads into a fresh one exactly."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from monolith.fid import make_fid
from monolith.mode_keys import ModeKeys
from monolith.model import ModelOutput, MonolithModel
from monolith.optim.optimizers import AdagradOptimizer
from monolith.sparse import Batch, KeyedJaggedTensor
from monolith.spec import EstimatorSpec

SLOTS = {"u": 1, "m": 2}
DIM = 3


class CtrModel(MonolithModel):
    def __init__(self, occurrence_threshold: int = 0):
        super().__init__()
        self.threshold = occurrence_threshold
        self.register_slots(SLOTS)
        torch.manual_seed(0)
        self.head = torch.nn.Linear(2 * DIM, 1)
        self.modes_seen: list[str] = []

    def input_fn(self, mode):
        return []

    def model_fn(self, features, mode):
        self.modes_seen.append(mode)
        for name in SLOTS:
            self.create_embedding_feature_column(name, occurrence_threshold=self.threshold)
        emb = self.lookup_embedding_slice(list(SLOTS), "vec", DIM, out_type="concat",
                                          optimizer=AdagradOptimizer(learning_rate=0.5, initial_accumulator_value=0.0))
        logits = self.head(emb).reshape(-1)
        pred = torch.sigmoid(logits)
        loss = None if mode == ModeKeys.PREDICT else torch.nn.functional.binary_cross_entropy_with_logits(
            logits, features["label"])
        return EstimatorSpec(label=features["label"] if "label" in features else None, pred=pred, loss=loss,
                             head_name="ctr")

    def serving_input_receiver_fn(self):
        return None


def make_batch(seed: int, size: int = 5) -> Batch:
    rng = np.random.default_rng(seed)
    rows = {name: [[make_fid(slot, int(v)) for v in rng.integers(0, 6, rng.integers(1, 3))] for _ in range(size)]
            for name, slot in SLOTS.items()}
    label = torch.from_numpy((rng.random(size) < 0.5).astype(np.float32))
    return Batch(KeyedJaggedTensor.from_lists(rows), {"label": label})


def train(model: CtrModel, steps: int, seed: int = 0) -> None:
    """The training step without an Estimator: forward, backward, dense step, sparse apply."""
    dense = torch.optim.SGD(model.head.parameters(), lr=0.1)
    for step in range(steps):
        output = model(make_batch(seed + step))
        dense.zero_grad()
        output.loss.backward()
        dense.step()
        model.embedding_collection.apply_gradients(step, dedup="sum")


def test_calling_the_model_runs_model_fn_in_the_run_mode():
    model = CtrModel()
    batch = make_batch(0)
    output = model(batch)  # builds its tables on the way (a build pass, then the real call)
    assert isinstance(output, ModelOutput) and output.mode == ModeKeys.TRAIN and model.modes_seen[-1] == ModeKeys.TRAIN
    assert sorted(model.embedding_collection.tables) == ["m", "u"]
    # The output is model_fn's on these rows: pooled by hand and run through the head.
    tables = {name: model.embedding_collection.tables[name].table for name in SLOTS}
    for name, table in tables.items():
        fids = np.unique(batch.sparse[name].values().numpy())
        table.assign(fids, np.random.default_rng(7).normal(size=(fids.size, DIM)).astype(np.float32))
    pooled = [torch.stack([tables[name].lookup(torch.tensor(row)).sum(0) for row in batch.sparse[name].to_lists()])
              for name in SLOTS]
    want = torch.sigmoid(model.head(torch.cat(pooled, 1)).reshape(-1))
    output = model(batch)
    torch.testing.assert_close(output.preds[0], want)
    assert output.loss.requires_grad  # TRAIN: the lookups record gradients
    model.eval()
    assert model.p.mode == ModeKeys.EVAL and not model.training
    assert not any(m.training for m in model.embedding_collection.tables.values())
    with torch.no_grad():
        evaluated = model(batch)
    assert evaluated.mode == ModeKeys.EVAL and model.modes_seen[-1] == ModeKeys.EVAL
    torch.testing.assert_close(evaluated.preds[0], want)
    model.set_mode(ModeKeys.PREDICT)
    predicted = model(Batch(batch.sparse))
    assert predicted.mode == ModeKeys.PREDICT and predicted.loss is None
    torch.testing.assert_close(predicted.preds[0], want)
    model.train()
    assert model.p.mode == ModeKeys.TRAIN and all(m.training for m in model.embedding_collection.tables.values())


def test_state_dict_carries_the_tables_and_a_fresh_model_predicts_bit_for_bit():
    trained = CtrModel(occurrence_threshold=1)  # the occurrence counters are state too
    train(trained, 4)
    state = trained.state_dict()
    for name in SLOTS:
        for field in ("keys", "weights_0", "state_0", "timestamps", "filter_keys", "filter_counts"):
            assert f"embedding_collection.tables.{name}.{field}" in state
    buffer = io.BytesIO()
    torch.save(state, buffer)

    fresh = CtrModel(occurrence_threshold=1)
    fresh(make_batch(100))  # a fresh model builds its tables on its first call
    fresh.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    for name in SLOTS:
        ours = trained.embedding_collection.tables[name].table.state_dict()
        theirs = fresh.embedding_collection.tables[name].table.state_dict()
        for key in ours:
            np.testing.assert_array_equal(theirs[key], ours[key], err_msg=f"{name}.{key}")
    for model in (trained, fresh):
        model.set_mode(ModeKeys.PREDICT)
    for seed in (200, 201):
        batch = Batch(make_batch(seed).sparse)
        with torch.no_grad():
            assert torch.equal(fresh(batch).preds[0], trained(batch).preds[0])
    # Training on goes the same way: the optimizer slots and counters came along.
    for model in (trained, fresh):
        model.set_mode(ModeKeys.TRAIN)
        train(model, 2, seed=50)
    for name in SLOTS:
        ours, theirs = (m.embedding_collection.tables[name].table.items() for m in (trained, fresh))
        np.testing.assert_array_equal(theirs[0], ours[0])
        np.testing.assert_array_equal(theirs[1], ours[1])


def test_loading_tables_into_a_model_never_called_says_what_to_do():
    trained = CtrModel()
    train(trained, 1)
    with pytest.raises(RuntimeError, match=r"no embedding tables yet.*run model\(batch\) once"):
        CtrModel().load_state_dict(trained.state_dict())


def test_dense_state_dict_leaves_the_tables_out():
    model = CtrModel()
    train(model, 1)
    assert sorted(model.dense_state_dict()) == ["head.bias", "head.weight"]
    twin = CtrModel()
    twin.load_dense_state_dict(model.dense_state_dict())
    assert torch.equal(twin.head.weight, model.head.weight)


def test_lookups_read_the_batch_of_the_running_step():
    model = CtrModel()
    model(make_batch(0))
    column, vec = model.fc_dict["u"], model.slice_dict["u"]["vec"]
    with pytest.raises(RuntimeError, match="embedding lookup of feature 'u' outside a step"):
        column.embedding_lookup(vec)
    small, large = make_batch(1, size=2), make_batch(2, size=4)
    collection = model.embedding_collection
    with torch.no_grad(), collection.step(small):
        first = column.embedding_lookup(vec)
        with collection.step(large):
            assert column.embedding_lookup(vec).shape == (4, DIM)
        torch.testing.assert_close(column.embedding_lookup(vec), first)  # the outer step's batch again
    assert first.shape == (2, DIM)
    with pytest.raises(RuntimeError, match="outside a step"):
        column.embedding_lookup(vec)
    # A strategy serves every lookup of its step in place of the tables (as the exporter's does).
    with collection.step(None, lookup=lambda c, s: torch.full((3, s.end - s.start), 7.0)):
        assert torch.equal(column.embedding_lookup(vec), torch.full((3, DIM), 7.0))
