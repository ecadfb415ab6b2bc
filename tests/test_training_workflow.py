"""The training workflow around the Estimator: evaluation during training with early stopping,
evaluating a chosen checkpoint from a live Estimator, a model reused by a second Estimator, the
loss-shape check, a model whose only trainable parameters are embedding slices, and the task API's
slot declarations (``FeatureFactory``) made at every step.

The model is embedding-only (its prediction is the sum of a 2-wide ``vec`` slice, rows start at 0,
plain SGD), so every value is known by hand: with ``loss = sum(embedding)`` each row element falls by
``lr`` per occurrence and step; with an MSE to label 1 every prediction climbs towards 1.
"""

from __future__ import annotations

import math

import pytest
import torch

from monolith.estimator import Estimator, EstimatorSpec, RunConfig
from monolith.feature import FeatureFactory, FeatureSlotConfig
from monolith.fid import make_fid
from monolith.mode_keys import ModeKeys
from monolith.model import MonolithModel
from monolith.modules.feature_slot_collection import FeatureSlotCollection
from monolith.optim.initializers import ZerosInitializer
from monolith.optim.optimizers import SgdOptimizer
from monolith.sparse import Batch, KeyedJaggedTensor
from monolith.train_and_evaluate import EarlyStopping, train_and_evaluate

LR = 0.1


def batches(n: int, label: float):
    for _ in range(n):
        yield Batch(KeyedJaggedTensor.from_lists({"u": [[make_fid(1, 1)], [make_fid(1, 2)]],
                                                  "m": [[make_fid(2, 7)], [make_fid(2, 7)]]}),
                    {"label": torch.tensor([label, label])})


class EmbeddingOnly(MonolithModel):
    """pred = sum of the u and m rows; ``loss`` "sum" (the embedding itself) or "mse" (to the label)."""

    def __init__(self, params=None, loss="mse", train_batches=40, train_label=1.0, eval_label=1.0):
        super().__init__(params)
        self.register_slots({"u": 1, "m": 2})
        self.kind, self.n_train, self.train_label, self.eval_label = loss, train_batches, train_label, eval_label

    def input_fn(self, mode):
        if mode == ModeKeys.TRAIN:
            return batches(self.n_train, self.train_label)
        return batches(2, self.eval_label)

    def model_fn(self, features, mode):
        for name in ("u", "m"):
            self.create_embedding_feature_column(name)
        u, m = self.lookup_embedding_slice(features=["u", "m"], slice_name="vec", slice_dim=2,
                                           initializer=ZerosInitializer(), optimizer=SgdOptimizer(LR))
        embedding = torch.cat([u, m], dim=1)
        pred = embedding.sum(dim=1)
        label = features["label"]
        if self.kind == "sum":
            loss = embedding.sum()
        elif self.kind == "mse":
            loss = ((pred - label) ** 2).mean()
        else:  # "per_example": forgot the reduce_mean
            loss = (pred - label) ** 2
        return EstimatorSpec(label=label, pred=pred, head_name="rating", loss=loss, classification=False)

    def serving_input_receiver_fn(self):
        return None


def config(model_dir, **kwargs) -> RunConfig:
    return RunConfig(model_dir=str(model_dir), progress_bar=False, enable_summaries=False, **kwargs)


def rows(model: MonolithModel, slot: int, ids: list[int]) -> torch.Tensor:
    return model.ctx.table_of_slot(slot).table.lookup(torch.tensor([make_fid(slot, i) for i in ids]))


def test_a_model_whose_only_parameters_are_embedding_slices_trains(tmp_path):
    model = EmbeddingOnly(loss="sum")
    assert not list(model.parameters())
    estimator = Estimator(model, config(tmp_path))
    estimator.train(steps=3)
    # d loss / d row = 1 per occurrence: u's ids occur once a step, m's id twice.
    assert torch.allclose(rows(model, 1, [1, 2]), torch.full((2, 2), -3 * LR), atol=1e-3)
    assert torch.allclose(rows(model, 2, [7]), torch.full((1, 2), -6 * LR), atol=1e-3)


def test_a_non_scalar_loss_names_its_shape(tmp_path):
    estimator = Estimator(EmbeddingOnly(loss="per_example"), config(tmp_path))
    with pytest.raises(ValueError, match=r"loss must be a scalar, got shape \[2\]"):
        estimator.train(steps=1)


def test_a_model_reused_by_a_second_estimator_starts_from_fresh_tables(tmp_path):
    model = EmbeddingOnly(loss="sum")
    Estimator(model, config(tmp_path / "a")).train(steps=3)
    assert set(model.ctx.tables) == {"u", "m"}
    # The second run asks for merged tables (Monolith's model_comp_test trains one instance twice so).
    second = Estimator(model, config(tmp_path / "b", use_native_multi_hash_table=False))
    second.train(steps=1)
    assert second.global_step == 1
    assert set(model.ctx.tables) == {"merged_1_2"}  # alike slots share one table
    assert torch.allclose(rows(model, 1, [1, 2]), torch.full((2, 2), -LR), atol=1e-3)  # one step from 0
    assert torch.allclose(rows(model, 2, [7]), torch.full((1, 2), -2 * LR), atol=1e-3)


def expected_eval_loss(step: int) -> float:
    """MSE against 0 after ``step`` steps of MSE training towards 1 (lr 0.1, both examples alike).

    Per step and example the prediction is u's row sum plus m's; u's two elements each get gradient
    2 * (pred - 1) / 2 = (pred - 1) from the mean over 2 examples, m's (shared by both) twice that.
    """
    u, m = 0.0, 0.0  # one element of a row (both elements of a row stay equal)
    for _ in range(step):
        pred = 2 * u + 2 * m
        g = pred - 1.0
        u, m = u - LR * g, m - LR * 2 * g
    return (2 * u + 2 * m) ** 2


def test_train_and_evaluate_every_steps_per_eval_and_a_chosen_checkpoint(tmp_path):
    model = EmbeddingOnly(loss="mse", eval_label=0.0)
    model.p.eval.steps_per_eval = 3
    estimator = Estimator(model, config(tmp_path))
    history = train_and_evaluate(estimator, max_steps=8)
    assert [e["global_step"] for e in history.evaluations] == [3, 6, 8]
    for evaluation in history.evaluations:
        assert evaluation["loss"] == pytest.approx(expected_eval_loss(evaluation["global_step"]), rel=2e-3)
    assert history.best is history.evaluations[-1] and not history.stopped_early

    # A chosen (older) checkpoint from the live estimator: its own figures, then back to the latest.
    first = history.evaluations[0]["checkpoint"]
    again = estimator.evaluate(checkpoint_path=first)
    assert again["global_step"] == 3 and again["loss"] == pytest.approx(history.evaluations[0]["loss"], rel=1e-6)
    assert estimator.evaluate(checkpoint_path="model.ckpt-3")["loss"] == again["loss"]  # TensorFlow's name
    assert estimator.global_step == 8
    estimator.train(steps=1)  # training goes on from step 8, not from the evaluated checkpoint
    assert estimator.evaluate()["loss"] == pytest.approx(expected_eval_loss(9), rel=2e-3)
    with pytest.raises(ValueError, match=r"'ckpt-4' is not a checkpoint of .*ckpt-3"):
        estimator.evaluate(checkpoint_path="ckpt-4")


def test_train_and_evaluate_stops_early_and_keeps_the_best_checkpoint(tmp_path):
    # Training towards 1 while the held-out labels are 0: the eval loss grows after the first evaluation.
    model = EmbeddingOnly(loss="mse", eval_label=0.0)
    estimator = Estimator(model, config(tmp_path))
    history = train_and_evaluate(estimator, max_steps=30, steps_per_eval=2,
                                 early_stopping=EarlyStopping("loss", mode="min", patience=2))
    assert history.stopped_early and estimator.global_step == 6
    assert [e["global_step"] for e in history.evaluations] == [2, 4, 6]
    assert history.best["global_step"] == 2 and history.best_checkpoint.endswith("ckpt-2")
    assert estimator.evaluate(checkpoint_path=history.best_checkpoint)["loss"] == pytest.approx(
        expected_eval_loss(2), rel=2e-3)


def test_train_and_evaluate_stops_when_the_input_ends(tmp_path):
    model = EmbeddingOnly(loss="mse", train_batches=5)
    history = train_and_evaluate(Estimator(model, config(tmp_path)), max_steps=100, steps_per_eval=2)
    assert [e["global_step"] for e in history.evaluations] == [2, 4, 5]


def test_early_stopping_arguments_are_checked():
    with pytest.raises(ValueError, match="mode must be 'min' or 'max'"):
        EarlyStopping(mode="lower")
    with pytest.raises(ValueError, match="patience must be an int >= 1"):
        EarlyStopping(patience=0)
    with pytest.raises(KeyError, match="'auc' is not in the evaluation's metrics"):
        EarlyStopping("auc").value({"loss": 1.0})
    assert EarlyStopping(mode="max", min_delta=0.1).improves(0.75, 0.6)
    assert not EarlyStopping(mode="max", min_delta=0.1).improves(0.65, 0.6)
    assert not EarlyStopping().improves(math.nan, None)


def test_task_slot_declarations_create_each_slot_and_slice_once():
    embeddings = FeatureSlotCollection()
    embeddings.create_feature_slot(FeatureSlotConfig(name="taken", slot_id=1))
    factory = FeatureFactory(lambda: embeddings)
    for step in range(3):  # a task's model_fn declares the same slots at every step
        slot = factory.create_feature_slot(FeatureSlotConfig(name="slot"))
        first, second = slot.add_feature_slice(5), slot.add_feature_slice(2)
        assert (first.start, first.end, second.start, second.end) == (0, 5, 5, 7)
    assert [(fs.name, fs.slot, fs.dim) for fs in embeddings.feature_slots] == [("taken", 1, 0), ("slot", 2, 7)]
    with pytest.raises(ValueError, match="has dim 5, asked for 4"):
        factory.create_feature_slot(FeatureSlotConfig(name="slot")).add_feature_slice(4)
