"""The estimator: one training step checked against a plain-PyTorch reference (global-norm clipping
over dense and embedding gradients, dense weight decay, sparse clip warm-up), evaluation metrics,
predictions and their files, checkpoints, resume, and a SIGKILL-ed run resumed to the same parameters.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from monolith.checkpoint import INDEX_FILE, CheckpointManager
from monolith.estimator import Estimator, EstimatorSpec, RunConfig
from monolith.fid import make_fid
from monolith.losses import get_sigmoid_loss_and_pred
from monolith.mode_keys import ModeKeys
from monolith.model import MonolithModel, TrainingHook
from monolith.optim.initializers import RandomUniformInitializer
from monolith.optim.optimizers import SgdOptimizer
from monolith.sparse import Batch, KeyedJaggedTensor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLOTS = {"u": 1, "m": 2}
POOL = {"u": 8, "m": 6}
DIM = 4
SPARSE_LR, DENSE_LR = 0.1, 0.05


def make_batches(n: int, batch_size: int, seed: int) -> list[Batch]:
    """Every batch holds every id of the pools (the first rows), so all rows exist after step 0."""
    rng = np.random.default_rng(seed)
    out = []
    for b in range(n):
        rows = {}
        for name, pool in POOL.items():
            rows[name] = [[make_fid(SLOTS[name], i % pool)] + [make_fid(SLOTS[name], int(v)) for v in
                                                              rng.integers(0, pool, rng.integers(0, 3))]
                          for i in range(batch_size)]
        label = torch.from_numpy((rng.random(batch_size) < 0.5).astype(np.float32))
        target = torch.from_numpy(rng.normal(size=batch_size).astype(np.float32))
        line_id = torch.arange(b * batch_size, (b + 1) * batch_size)
        out.append(Batch(KeyedJaggedTensor.from_lists(rows),
                         {"label": label, "target": target, "line_id": line_id}))
    return out


class EstModel(MonolithModel):
    """Two heads on concatenated u/m embeddings: ``ctr`` (sigmoid, AUC) and ``bid`` (regression, MSE)."""

    def __init__(self, params=None, train_batches=6, eval_batches=2):
        super().__init__(params)
        self.register_slots(SLOTS)
        self.tower = torch.nn.Sequential(torch.nn.Linear(2 * DIM, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2))
        self.n_train, self.n_eval = train_batches, eval_batches
        self.begun_at: list[tuple[int, bool]] = []
        self.hook = _BeginHook(self)

    def input_fn(self, mode):
        if mode == ModeKeys.TRAIN:
            return make_batches(self.n_train, self.batch_size, 0)
        return make_batches(self.n_eval, self.batch_size, 1)

    def model_fn(self, features, mode):
        for name in SLOTS:
            self.create_embedding_feature_column(name)
        emb = self.lookup_embedding_slice(list(SLOTS), "vec", DIM, out_type="concat",
                                          initializer=RandomUniformInitializer(-0.5, 0.5),
                                          optimizer=SgdOptimizer(SPARSE_LR))
        out = self.tower(emb)
        label = features.dense.get("label") if mode != ModeKeys.PREDICT else None
        loss, ctr = get_sigmoid_loss_and_pred("ctr", out[:, 0], label, self.batch_size, mode=mode)
        bid = out[:, 1]
        if loss is not None:
            loss = loss + (bid - features["target"]).pow(2).mean()
        self.add_training_hook(self.hook)
        return EstimatorSpec(label=None if label is None else {"ctr": label, "bid": features["target"]},
                             pred={"ctr": ctr, "bid": bid}, loss=loss, classification=[True, False],
                             optimizer=functools.partial(torch.optim.SGD, lr=DENSE_LR))

    def serving_input_receiver_fn(self):
        return None


class _BeginHook(TrainingHook):
    def __init__(self, model):
        self.model = model

    def begin(self, estimator):
        self.model.begun_at.append((estimator.global_step, bool(estimator.model.ctx.tables)))


def make_estimator(model_dir, seed=0, train_bs=16, eval_bs=24, **params) -> Estimator:
    torch.manual_seed(seed)
    model = EstModel()
    model.p.train.per_replica_batch_size = train_bs
    model.p.eval.per_replica_batch_size = eval_bs
    for k, v in params.items():
        setattr(model.p, k, v)
    config = RunConfig(model_dir=str(model_dir), log_step_count_steps=1000, enable_summaries=False,
                       progress_bar=False)
    return Estimator(model, config)


# ----------------------------------------------------------------------------- the reference
def rows_of(est: Estimator, name: str, fids: torch.Tensor) -> torch.Tensor:
    return est.model.ctx.tables[name].table.lookup(fids)


def reference_forward(params: dict[str, torch.Tensor], rows: dict[str, torch.Tensor], batch: Batch):
    """Plain PyTorch: segment-sum the rows of each feature, the tower by hand, both heads' outputs."""
    pooled = []
    for name in SLOTS:
        jt = batch.sparse[name]
        seg = torch.repeat_interleave(torch.arange(batch.batch_size), jt.lengths())
        pooled.append(torch.zeros(batch.batch_size, DIM).index_add(0, seg, rows[name]))
    x = torch.cat(pooled, 1)
    h = torch.tanh(x @ params["tower.0.weight"].T + params["tower.0.bias"])
    out = h @ params["tower.2.weight"].T + params["tower.2.bias"]
    return out[:, 0], out[:, 1]


def reference_loss(logit, bid, batch):
    label, target = batch.dense["label"], batch.dense["target"]
    p = torch.sigmoid(logit)
    bce = -(label * torch.log(p) + (1 - label) * torch.log(1 - p)).sum()
    return bce + ((bid - target) ** 2).mean()


def exact_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    pos, neg = scores[labels == 1], scores[labels == 0]
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


# ----------------------------------------------------------------------------- one step against the reference
def test_train_step_matches_plain_pytorch_with_clipping_decay_and_warmup(tmp_path):
    clip, decay, warmup = 0.5, 0.01, 3
    est = make_estimator(tmp_path / "run", clip_norm=clip, dense_weight_decay=decay, sparse_norm_warmup_steps=warmup)
    batches = make_batches(6, 16, 0)
    est.train(max_steps=1)
    assert est.global_step == 1
    # At step 0 the sparse clip norm is 0: rows were created (initialised) but not moved.
    for step in range(1, 5):
        batch = batches[step]
        params = {k: v.detach().clone() for k, v in est.model.dense_state_dict().items()}
        fids = {name: batch.sparse[name].values() for name in SLOTS}
        before = {name: rows_of(est, name, fids[name]) for name in SLOTS}
        assert all(est.model.ctx.tables[n].table.contains(fids[n]).all() for n in SLOTS)

        leaves = {name: before[name].clone().requires_grad_(True) for name in SLOTS}
        dense = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        loss = reference_loss(*reference_forward(dense, leaves, batch), batch)
        loss.backward()
        squared = sum(float(p.grad.double().pow(2).sum()) for p in dense.values())
        squared += sum(float(leaves[n].grad.double().pow(2).sum()) for n in SLOTS)  # one grad row per lookup id
        norm = math.sqrt(squared)
        sparse_clip = clip * min(step / warmup, 1.0)
        assert norm > clip, "the test must exercise clipping"
        dense_scale = clip / max(norm, clip)
        sparse_scale = sparse_clip / max(norm, sparse_clip)

        want_dense = {k: params[k] - DENSE_LR * (dense[k].grad * dense_scale + decay * params[k]) for k in params}
        want_rows = {}
        for name in SLOTS:
            uniq, inverse = torch.unique(fids[name], return_inverse=True)
            summed = torch.zeros(len(uniq), DIM).index_add(0, inverse, leaves[name].grad)
            want_rows[name] = (uniq, rows_of(est, name, uniq) - SPARSE_LR * sparse_scale * summed)

        result = est.train(max_steps=step + 1)
        assert est.global_step == step + 1 and result["global_step"] == step + 1
        for k, v in est.model.dense_state_dict().items():
            torch.testing.assert_close(v, want_dense[k], atol=1e-6, rtol=1e-5, msg=f"{k} at step {step}")
        for name in SLOTS:
            uniq, want = want_rows[name]
            torch.testing.assert_close(rows_of(est, name, uniq), want, atol=1e-6, rtol=1e-5,
                                       msg=f"rows of {name} at step {step}")


def test_hooks_begin_before_the_first_step(tmp_path):
    est = make_estimator(tmp_path / "run")
    est.train(max_steps=2)
    # begin() ran once, at global step 0, with the tables already built.
    assert est.model.begun_at == [(0, True)]
    est.train(max_steps=3)
    assert len(est.model.begun_at) == 2


class _Recorder(TrainingHook):
    """Records when it began and every step's (global step, labels, ctr predictions)."""

    def __init__(self):
        self.begun_at, self.steps = [], []

    def begin(self, estimator):
        self.begun_at.append(estimator.global_step)

    def after_step(self, step, batch, output):
        self.steps.append((step, batch.dense["label"].clone(), output.predictions["ctr"].detach().clone()))


def test_train_calls_hooks_epochs_and_windowed_metrics(tmp_path):
    est = make_estimator(tmp_path / "run")  # EstModel: 6 training batches
    est.config.log_step_count_steps = 2
    with pytest.raises(ValueError, match="Can not provide both steps and max_steps"):
        est.train(steps=1, max_steps=3)
    with pytest.raises(TypeError, match="hooks must be TrainingHooks"):
        est.train(hooks=[object()])
    assert est.train(hooks=None)["global_step"] == 6
    # The model is built now: a given hook still begins before the call's first step.
    recorder = _Recorder()
    window = est.train(steps=3, hooks=[recorder])
    assert recorder.begun_at == [6] and [step for step, _, _ in recorder.steps] == [7, 8, 9]
    # The logged metrics cover the steps since the previous log (constant memory on endless inputs).
    labels = torch.cat([label for _, label, _ in recorder.steps[-1:]]).numpy()
    preds = torch.cat([pred for _, _, pred in recorder.steps[-1:]]).numpy()
    assert window["global_step"] == 9
    assert window["ctr/auc"] == pytest.approx(exact_auc(labels, preds), abs=1e-12)
    # The call goes on to the end of the input, where the run is finished: a further call trains
    # only when asked for more, here another pass over the input (an epoch).
    est.train()
    assert est.global_step == 12
    est.train()
    assert est.global_step == 12
    est.train(epochs=1)
    assert est.global_step == 18


def test_gradient_norm_summaries_every_save_summary_steps(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = EstModel()
    model.batch_size = 16
    est = Estimator(model, RunConfig(model_dir=str(tmp_path / "run"), save_summary_steps=2, log_step_count_steps=3,
                                     progress_bar=False))
    est.train()
    events = EventAccumulator(str(tmp_path / "run")).Reload()
    assert [e.step for e in events.Scalars("global_gradient_norm")] == [2, 4, 6]
    assert [e.step for e in events.Scalars("loss")] == [3, 6]


def test_soft_labels_count_as_positives_in_auc_as_tensorflow_casts_them(tmp_path):
    class SoftLabels(EstModel):
        def input_fn(self, mode):
            batches = super().input_fn(mode)
            for batch in batches:
                batch.dense["label"] = batch.dense["label"] * 0.7  # soft positives, zeros stay zero
            return batches

    model = SoftLabels()
    model.batch_size = 16
    est = Estimator(model, RunConfig(model_dir=str(tmp_path / "run"), enable_summaries=False, progress_bar=False,
                                     log_step_count_steps=1000))
    recorder = _Recorder()
    result = est.train(max_steps=3, hooks=[recorder])
    labels = torch.cat([lab for _, lab, _ in recorder.steps]).numpy() != 0
    preds = torch.cat([p for _, _, p in recorder.steps]).numpy()
    assert result["ctr/auc"] == pytest.approx(exact_auc(labels.astype(np.float32), preds), abs=1e-12)


def test_no_clipping_with_a_large_clip_norm(tmp_path):
    """clip_norm large and no decay: dense parameters take exactly the SGD step of the loss."""
    est = make_estimator(tmp_path / "run", clip_norm=1e9)
    batches = make_batches(3, 16, 0)
    est.train(max_steps=1)
    batch = batches[1]
    params = {k: v.detach().clone().requires_grad_(True) for k, v in est.model.dense_state_dict().items()}
    rows = {n: rows_of(est, n, batch.sparse[n].values()) for n in SLOTS}
    reference_loss(*reference_forward(params, rows, batch), batch).backward()
    est.train(max_steps=2)
    for k, v in est.model.dense_state_dict().items():
        torch.testing.assert_close(v, params[k].detach() - DENSE_LR * params[k].grad, atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------------- evaluate / predict / files
def test_evaluate_predict_and_prediction_files(tmp_path):
    out_dir = tmp_path / "out"
    est = make_estimator(tmp_path / "run")
    est.train(max_steps=4)
    est.model.p.output_path = str(out_dir)
    est.model.p.output_fields = "line_id,u"
    est.model.p.delimiter = ";"

    eval_batches = make_batches(2, 24, 1)  # eval.per_replica_batch_size
    ctr, bid, losses = [], [], []
    for batch in eval_batches:
        params = est.model.dense_state_dict()
        rows = {n: rows_of(est, n, batch.sparse[n].values()) for n in SLOTS}
        logit, b = reference_forward(params, rows, batch)
        ctr.append(torch.sigmoid(logit))
        bid.append(b)
        losses.append(float(reference_loss(logit, b, batch)))
    ctr, bid = torch.cat(ctr), torch.cat(bid)
    labels = torch.cat([b.dense["label"] for b in eval_batches]).numpy()
    targets = torch.cat([b.dense["target"] for b in eval_batches])

    result = est.evaluate()
    assert set(result) == {"ctr/auc", "bid/mse", "loss", "batch_loss", "global_step"}
    assert result["global_step"] == 4
    assert result["ctr/auc"] == pytest.approx(exact_auc(labels, ctr.numpy()), abs=1e-12)
    assert 0 < result["ctr/auc"] < 1
    assert result["bid/mse"] == pytest.approx(float(((bid - targets) ** 2).mean()), rel=1e-5)
    # loss per example (the batches' summed losses over their 48 examples); batch_loss is Monolith's per batch.
    assert result["loss"] == pytest.approx(sum(losses) / len(labels), rel=1e-5)
    assert result["batch_loss"] == pytest.approx(np.mean(losses), rel=1e-5)
    assert est.model.p.mode == ModeKeys.EVAL

    def check_file(batches, want_ctr, want_bid):
        lines = (out_dir / "part-00000").read_text().splitlines()
        assert len(lines) == sum(b.batch_size for b in batches)
        line_ids = torch.cat([b.dense["line_id"] for b in batches]).tolist()
        u_rows = [row for b in batches for row in b.sparse["u"].to_lists()]
        for i, line in enumerate(lines):
            fields = line.split(";")
            assert len(fields) == 4
            assert fields[0] == str(line_ids[i])
            assert fields[1] == "[" + " ".join(str(v) for v in u_rows[i]) + "]"
            # predictions of a dict: sorted by head name, so "bid" before "ctr"
            assert float(fields[2]) == pytest.approx(float(want_bid[i]), abs=1e-6)
            assert float(fields[3]) == pytest.approx(float(want_ctr[i]), abs=1e-6)

    check_file(eval_batches, ctr, bid)

    # predict: one dict per example, in PREDICT mode the train batch size is read.
    preds = list(est.predict())
    pred_batches = make_batches(2, 16, 1)
    want_ctr, want_bid = [], []
    for batch in pred_batches:
        rows = {n: rows_of(est, n, batch.sparse[n].values()) for n in SLOTS}
        logit, b = reference_forward(est.model.dense_state_dict(), rows, batch)
        want_ctr.append(torch.sigmoid(logit))
        want_bid.append(b)
    want_ctr, want_bid = torch.cat(want_ctr), torch.cat(want_bid)
    assert len(preds) == 32 and all(set(p) == {"ctr", "bid"} for p in preds)
    np.testing.assert_allclose([p["ctr"] for p in preds], want_ctr.numpy(), atol=1e-6)
    np.testing.assert_allclose([p["bid"] for p in preds], want_bid.numpy(), atol=1e-6)
    check_file(pred_batches, want_ctr, want_bid)
    assert len(list(est.predict(steps=1))) == 16


def test_predict_single_head_yields_floats_and_no_file_without_output_path(tmp_path):
    class OneHead(EstModel):
        def model_fn(self, features, mode):
            spec = super().model_fn(features, mode)
            return EstimatorSpec(label=None, pred=spec.pred["ctr"], head_name="ctr", loss=spec.loss,
                                 optimizer=spec.optimizer)

    torch.manual_seed(0)
    model = OneHead()
    model.batch_size = 5
    est = Estimator(model, RunConfig(model_dir=str(tmp_path / "run"), enable_summaries=False, progress_bar=False))
    # As TensorFlow's Estimator: no prediction (nor evaluation) from a model_dir with nothing trained.
    with pytest.raises(ValueError, match="Could not find trained model in model_dir"):
        list(est.predict())
    with pytest.raises(ValueError, match="Could not find trained model in model_dir"):
        est.evaluate()
    est.train(max_steps=2)
    preds = list(est.predict())
    assert len(preds) == 10 and all(isinstance(p, float) for p in preds)
    want = []
    for batch in make_batches(2, 5, 1):
        rows = {n: rows_of(est, n, batch.sparse[n].values()) for n in SLOTS}
        want += torch.sigmoid(reference_forward(est.model.dense_state_dict(), rows, batch)[0]).tolist()
    assert preds == pytest.approx(want, abs=1e-6)
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith("part-")]


# ----------------------------------------------------------------------------- checkpoints
def _state(est: Estimator):
    dense = {k: v.detach().clone() for k, v in est.model.dense_state_dict().items()}
    tables = {}
    for name, module in est.model.ctx.tables.items():
        keys, rows = module.table.items()
        order = np.argsort(keys)
        tables[name] = (keys[order], rows[order])
    return dense, tables


def _assert_same_state(a, b):
    dense_a, tables_a = a
    dense_b, tables_b = b
    assert dense_a.keys() == dense_b.keys()
    for k in dense_a:
        assert torch.equal(dense_a[k], dense_b[k]), k
    assert tables_a.keys() == tables_b.keys()
    for name in tables_a:
        np.testing.assert_array_equal(tables_a[name][0], tables_b[name][0])
        np.testing.assert_array_equal(tables_a[name][1], tables_b[name][1])


def _ckpt_config(model_dir, **kw):
    return RunConfig(model_dir=str(model_dir), log_step_count_steps=1000, enable_summaries=False,
                     progress_bar=False, **kw)


def _estimator(model_dir, seed=0, **kw):
    torch.manual_seed(seed)
    model = EstModel(train_batches=12)
    model.batch_size = 16
    return Estimator(model, _ckpt_config(model_dir, **kw))


def test_checkpoints_keep_last_n_and_index(tmp_path):
    run = tmp_path / "run"
    est = _estimator(run, save_checkpoints_steps=2, keep_checkpoint_max=2)
    est.train(max_steps=7)
    index = json.loads((run / INDEX_FILE).read_text())
    assert index == {"latest": "ckpt-7", "all": ["ckpt-6", "ckpt-7"]}
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("ckpt-")) == ["ckpt-6", "ckpt-7"]
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]  # no staging left behind
    manager = CheckpointManager(run, 2)
    assert manager.latest() == str(run / "ckpt-7")
    dense, tables, manifest = CheckpointManager.read(manager.latest())
    assert manifest["global_step"] == 7 and dense["global_step"] == 7
    assert set(tables) == set(est.model.ctx.tables)
    for k, v in est.model.dense_state_dict().items():
        assert torch.equal(dense["model"][k], v)
    # A damaged table shard is named, not passed on as a zip error.
    shard = next((run / "ckpt-7" / "tables").iterdir())
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(ValueError, match=f"damaged checkpoint: .*{shard.name} is cut short"):
        CheckpointManager.read(run / "ckpt-7")
    # A damaged latest checkpoint gives way to the one before it, which training resumes from.
    assert manager.latest() == str(run / "ckpt-6")
    resumed = _estimator(run, seed=3, save_checkpoints_steps=2, keep_checkpoint_max=2)
    resumed.train(max_steps=6)
    assert resumed.global_step == 6
    (run / "ckpt-6" / "dense.pt").write_bytes(b"PK\x03\x04 cut")
    with pytest.raises(ValueError, match="every checkpoint is damaged"):  # never start over on top of them
        manager.latest()


def test_resume_after_restart_continues_from_the_global_step(tmp_path):
    uninterrupted = _estimator(tmp_path / "a", save_checkpoints_steps=3)
    uninterrupted.train(max_steps=10)

    first = _estimator(tmp_path / "b", save_checkpoints_steps=3)
    first.train(max_steps=7)
    assert first.global_step == 7
    # A new process: a differently initialised model on the same model_dir.
    second = _estimator(tmp_path / "b", seed=99, save_checkpoints_steps=3)
    assert second.model.begun_at == []
    second.train(max_steps=10)
    assert second.model.begun_at == [(7, True)]  # restored before the first step
    assert second.global_step == 10
    _assert_same_state(_state(second), _state(uninterrupted))
    # train() with nothing left to do keeps the state and writes nothing new.
    second.train(max_steps=10)
    assert second.global_step == 10
    assert json.loads((tmp_path / "b" / INDEX_FILE).read_text())["latest"] == "ckpt-10"


class _ListStream:
    """A stream over a list: it remembers how far it was read, as a Kafka source its offsets."""

    def __init__(self, batches: list[Batch]):
        self.batches, self.position = batches, 0

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = state["position"]

    def __iter__(self):
        while self.position < len(self.batches):
            self.position += 1
            yield self.batches[self.position - 1]


def test_max_steps_takes_no_batch_from_a_stream_that_it_does_not_train(tmp_path):
    batches = make_batches(5, 16, 3)
    uninterrupted = _estimator(tmp_path / "a")
    uninterrupted.train(input_fn=lambda mode: _ListStream(batches))
    assert uninterrupted.global_step == 5
    first = _estimator(tmp_path / "b")
    first.train(max_steps=2, input_fn=lambda mode: _ListStream(batches))
    manifest = CheckpointManager.read_manifest(CheckpointManager(tmp_path / "b").latest())
    assert manifest["global_step"] == 2 and manifest["input_states"] == [{"position": 2}]
    second = _estimator(tmp_path / "b", seed=9)
    second.train(input_fn=lambda mode: _ListStream(batches))  # resumes at batch 2: none lost, none twice
    assert second.global_step == 5
    _assert_same_state(_state(second), _state(uninterrupted))


class _PartitionedStream(_ListStream):
    """A stream whose state is per partition, as a Kafka source's offsets: it merges the states of
    a run's ranks."""

    def state_dict(self) -> dict:
        return {"offsets": {"0": self.position}}

    def load_state_dict(self, state: dict) -> None:
        self.position = state["offsets"]["0"]

    @staticmethod
    def merge_state_dicts(states: list[dict]) -> dict:
        merged: dict = {}
        for state in states:
            for partition, offset in state["offsets"].items():
                merged[partition] = max(offset, merged.get(partition, offset))
        return {"offsets": merged}


def test_an_input_that_merges_states_resumes_from_every_ranks_state(tmp_path):
    batches = make_batches(6, 16, 3)
    first = _estimator(tmp_path)
    first.train(max_steps=2, input_fn=lambda mode: _PartitionedStream(batches))
    # As if a second rank had read partition 0 further: the merged state resumes at its offset.
    latest = CheckpointManager(tmp_path).latest()
    manifest = json.loads((Path(latest) / "manifest.json").read_text())
    manifest["input_states"].append({"offsets": {"0": 4}})
    (Path(latest) / "manifest.json").write_text(json.dumps(manifest))
    stream = _PartitionedStream(batches)
    resumed = _estimator(tmp_path, seed=4)
    resumed.train(input_fn=lambda mode: stream)
    assert resumed.global_step == 4  # batches 4 and 5 only


def test_half_written_checkpoints_are_never_the_latest(tmp_path):
    run = tmp_path / "run"
    est = _estimator(run, save_checkpoints_steps=2, keep_checkpoint_max=3)
    est.train(max_steps=4)
    saved = _state(est)
    # A crash while writing ckpt-6: a staging directory and an unindexed directory without a manifest.
    (run / ".ckpt-6.staging" / "tables").mkdir(parents=True)
    (run / ".ckpt-6.staging" / "dense.pt").write_bytes(b"\x00partial")
    (run / "ckpt-6").mkdir()
    (run / "ckpt-6" / "dense.pt").write_bytes(b"\x00partial")
    assert CheckpointManager(run).latest() == str(run / "ckpt-4")
    restored = _estimator(run, seed=5, save_checkpoints_steps=2, keep_checkpoint_max=3)
    restored.train(max_steps=4)  # restores, nothing to train
    assert restored.global_step == 4
    _assert_same_state(_state(restored), saved)
    restored.train(max_steps=6)  # writes ckpt-6 over the leftovers
    assert CheckpointManager(run).latest() == str(run / "ckpt-6")
    assert CheckpointManager.read(run / "ckpt-6")[2]["global_step"] == 6

    # The index names a checkpoint that a crash left incomplete: the newest complete one is used.
    (run / "ckpt-6" / "manifest.json").unlink()
    assert CheckpointManager(run).latest() == str(run / "ckpt-4")
    again = _estimator(run, seed=6, save_checkpoints_steps=2, keep_checkpoint_max=3)
    again.train(max_steps=4)
    _assert_same_state(_state(again), saved)


def test_final_checkpoint_is_written_once(tmp_path):
    run = tmp_path / "run"
    est = _estimator(run, save_checkpoints_steps=2)
    saves = []
    original = est._checkpoints.save
    est._checkpoints.save = lambda step, *a, **k: saves.append(step) or original(step, *a, **k)
    est.train(max_steps=4)
    assert saves == [2, 4]
    est.train(max_steps=5)
    assert saves == [2, 4, 5]


# ----------------------------------------------------------------------------- SIGKILL and resume
SCRIPT = textwrap.dedent("""
    import functools, os, sys, time
    import numpy as np
    import torch
    sys.path.insert(0, {repo!r})
    from monolith.estimator import Estimator, EstimatorSpec, RunConfig
    from monolith.fid import make_fid
    from monolith.model import MonolithModel, TrainingHook
    from monolith.optim.optimizers import AdagradOptimizer
    from monolith.sparse import Batch, KeyedJaggedTensor


    def batches(batch_size, delay):
        rng = np.random.default_rng(7)
        for step in range(1000):
            rows = {{name: [[make_fid(slot, int(v)) for v in rng.integers(0, 40, rng.integers(1, 4))]
                            for _ in range(batch_size)] for name, slot in (("u", 1), ("m", 2))}}
            label = torch.from_numpy((rng.random(batch_size) < 0.4).astype(np.float32))
            if delay:
                time.sleep(delay)
            yield Batch(KeyedJaggedTensor.from_lists(rows), {{"label": label}})


    class Begin(TrainingHook):
        def begin(self, estimator):
            print("BEGIN", estimator.global_step, flush=True)


    class M(MonolithModel):
        def __init__(self, params=None, delay=0.0):
            super().__init__(params)
            self.register_slots({{"u": 1, "m": 2}})
            self.mlp = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Dropout(0.3),
                                           torch.nn.Linear(8, 1))
            self.batch_size = 32
            self.delay = delay
            self.hook = Begin()

        def input_fn(self, mode):
            return batches(self.batch_size, self.delay)

        def model_fn(self, features, mode):
            for name in ("u", "m"):
                self.create_embedding_feature_column(name)
            emb = self.lookup_embedding_slice(["u", "m"], "vec", 4, out_type="concat",
                                              optimizer=AdagradOptimizer(learning_rate=0.1))
            logits = self.mlp(emb).reshape(-1)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, features["label"], reduction="sum")
            self.add_training_hook(self.hook)
            return EstimatorSpec(label=features["label"], pred=torch.sigmoid(logits), head_name="ctr", loss=loss,
                                 optimizer=functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9))

        def serving_input_receiver_fn(self):
            return None


    def main(model_dir, max_steps, delay, out, go="-"):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            torch.optim.SGD([torch.zeros(1, requires_grad=True)])  # warm torch's lazy imports
            while go != "-" and not os.path.exists(go):  # a restart waits for the kill
                time.sleep(0.01)
            torch.manual_seed(1234)
            model = M(delay=float(delay))
            est = Estimator(model, RunConfig(model_dir=model_dir, save_checkpoints_steps=3, keep_checkpoint_max=2,
                                             log_step_count_steps=10000, enable_summaries=False,
                                             progress_bar=False))
            est.train(max_steps=int(max_steps))
            tables = {{}}
            for name, module in model.ctx.tables.items():
                keys, rows = module.table.items()
                order = np.argsort(keys)
                tables[name] = (keys[order], rows[order])
            torch.save({{"dense": model.dense_state_dict(), "tables": tables, "global_step": est.global_step}}, out)
            print("DONE", est.global_step, flush=True)
        finally:
            torch.set_num_threads(threads)


    if __name__ == "__main__":
        main(*sys.argv[1:])
""")


def test_sigkill_then_restart_ends_like_an_uninterrupted_run(tmp_path):
    script = tmp_path / "train_script.py"
    script.write_text(SCRIPT.format(repo=REPO))
    max_steps = 24
    go = tmp_path / "go"

    def start(model_dir, delay, out, go="-"):
        return subprocess.Popen([sys.executable, str(script), str(model_dir), str(max_steps), str(delay), str(out),
                                 str(go)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    victim = start(tmp_path / "run", 0.08, tmp_path / "run-killed.pt")
    restart = start(tmp_path / "run", 0, tmp_path / "run.pt", go)  # imports now, trains after the kill
    try:
        index = tmp_path / "run" / INDEX_FILE
        deadline = time.monotonic() + 60
        while not index.exists():
            assert victim.poll() is None, victim.communicate()
            assert time.monotonic() < deadline, "no checkpoint written in time"
            time.sleep(0.01)
        time.sleep(0.12)  # kill mid-way between checkpoints
        victim.send_signal(signal.SIGKILL)
        stdout, stderr = victim.communicate(timeout=30)
        assert victim.returncode == -signal.SIGKILL, stderr
        assert "DONE" not in stdout and not (tmp_path / "run-killed.pt").exists()
        killed_at = CheckpointManager.read(CheckpointManager(tmp_path / "run").latest())[2]["global_step"]
        assert 3 <= killed_at < max_steps
        go.write_text("go")

        # The uninterrupted reference, run here (same program, one thread) while the restart trains.
        spec = importlib.util.spec_from_file_location("sigkill_train_script", script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.main(str(tmp_path / "ref"), max_steps, 0, str(tmp_path / "ref.pt"))

        out, err = restart.communicate(timeout=60)
        assert restart.returncode == 0, err
    finally:
        for proc in (victim, restart):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    begin_step = int(out.split("BEGIN")[1].split()[0])
    assert begin_step == killed_at  # continued from the checkpoint, not from step 0
    assert f"DONE {max_steps}" in out

    a = torch.load(tmp_path / "ref.pt", weights_only=False)
    b = torch.load(tmp_path / "run.pt", weights_only=False)
    assert a["global_step"] == b["global_step"] == max_steps
    for k in a["dense"]:
        assert torch.equal(a["dense"][k], b["dense"][k]), k
    assert a["tables"].keys() == b["tables"].keys() == {"u", "m"}
    for name in a["tables"]:
        np.testing.assert_array_equal(a["tables"][name][0], b["tables"][name][0])
        np.testing.assert_array_equal(a["tables"][name][1], b["tables"][name][1])
