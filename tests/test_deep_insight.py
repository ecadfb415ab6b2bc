"""File metrics (deep insight): one JSON line per sampled example, laid out as Monolith's messages."""

import functools
import json
import logging

import numpy as np
import pytest
import torch

from monolith.estimator import Estimator, EstimatorSpec, RunConfig
from monolith.fid import make_fid
from monolith.losses import get_sigmoid_loss_and_pred
from monolith.metrics.deep_insight import FileMetricHook, sample_mask
from monolith.mode_keys import ModeKeys
from monolith.model import ModelOutput, MonolithModel, TrainingHook
from monolith.sparse import Batch, KeyedJaggedTensor

BATCH = 40
CORE_KEYS = {"model_name", "uid", "req_time", "training_time", "label", "predict", "sample_rate"}


def batches(count: int, req_time: bool = True):
    rng = np.random.default_rng(5)
    for step in range(count):
        uids = rng.integers(0, 1000, BATCH)
        sparse = KeyedJaggedTensor(["user"], torch.from_numpy(make_fid(1, uids)), torch.ones(BATCH, dtype=torch.int64))
        dense = {"label": torch.from_numpy((uids % 3 == 0).astype(np.float32)), "uid": torch.from_numpy(uids),
                 "age": torch.from_numpy(uids.astype(np.float32) / 10), "gid": torch.from_numpy(uids * 7),
                 "target": torch.from_numpy(uids % 5)}
        if req_time:
            dense["req_time"] = torch.full((BATCH,), 1_700_000_000 + step, dtype=torch.int64)
        yield Batch(sparse, dense)


class Recorder(TrainingHook):
    def __init__(self):
        self.seen = []

    def after_step(self, step, batch, output):
        self.seen.append((step, batch, output.preds[0].detach().clone()))


class SampledModel(MonolithModel):
    def __init__(self, params=None, recorder=None, req_time=True):
        super().__init__(params)
        self.batch_size = BATCH
        self.recorder = recorder
        self.req_time = req_time
        self.linear = torch.nn.Linear(4, 1)

    def input_fn(self, mode):
        return batches(3, self.req_time)

    def model_fn(self, features, mode):
        self.create_embedding_feature_column("user")
        logits = self.linear(self.lookup_embedding_slice(["user"], "vec", 4, out_type="concat")).reshape(-1)
        loss, pred = get_sigmoid_loss_and_pred("ctr", logits, features["label"], BATCH, mode=mode)
        self.add_training_hook(self.recorder)
        return EstimatorSpec(label=features["label"], pred=pred, head_name="ctr", loss=loss,
                             optimizer=functools.partial(torch.optim.SGD, lr=0.1))

    def serving_input_receiver_fn(self):
        return None


def _train(tmp_path, extra_fields_keys=(), req_time=True, name="ranker", recorder=None, base="di"):
    recorder = recorder or Recorder()
    model = SampledModel(recorder=recorder, req_time=req_time)
    metrics = model.p.metrics
    metrics.enable_file_metrics = True
    metrics.deep_insight_sample_ratio = 0.5
    if base is not None:
        metrics.file_base_name = str(tmp_path / base)
    metrics.deep_insight_name = name
    metrics.extra_fields_keys = list(extra_fields_keys)
    Estimator(model, RunConfig(model_dir=str(tmp_path / "model"), enable_summaries=False)).train()
    return recorder


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_file_metrics_write_each_sampled_example(tmp_path):
    recorder = _train(tmp_path)
    path = tmp_path / "di" / "ranker.part-00000.txt"
    expected = []
    for _, batch, preds in recorder.seen:
        uids = batch.dense["uid"].numpy()
        for i in np.flatnonzero(sample_mask(uids, BATCH, 0.5, np.random.default_rng(0))):
            expected.append((int(batch.dense["req_time"][i]), int(uids[i]), float(batch.dense["label"][i]),
                             float(preds[i])))
    assert 0 < len(expected) < 3 * BATCH  # a sample, by uid
    lines = _lines(path)
    assert [(r["req_time"], r["uid"], r["label"]["ctr"], r["predict"]["ctr"]) for r in lines] == expected
    # Monolith's message: one per example, heads as keys of label / predict / sample_rate, sorted keys.
    assert all(set(r) == CORE_KEYS for r in lines)
    assert {r["model_name"] for r in lines} == {"ranker"}
    assert all(r["sample_rate"] == {"ctr": 1.0} and isinstance(r["training_time"], int) for r in lines)
    first = path.read_text().splitlines()[0]
    assert first == json.dumps(json.loads(first), sort_keys=True)


def test_default_files_are_inside_the_model_dir(tmp_path, monkeypatch):
    """Not in the working directory: metrics.file_base_name ("deep_insight") is a folder of model_dir."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    recorder = _train(tmp_path, base=None)
    assert _lines(tmp_path / "model" / "deep_insight" / "ranker.part-00000.txt")
    assert recorder.seen and list(work.iterdir()) == []


def test_extra_fields_nest_by_dtype_and_never_replace_core_fields(tmp_path):
    recorder = _train(tmp_path, extra_fields_keys=["age", "gid", "label", "target", "uid"])
    lines = _lines(tmp_path / "di" / "ranker.part-00000.txt")
    assert lines
    batch_by_time = {int(b.dense["req_time"][0]): b for _, b, _ in recorder.seen}
    for r in lines:
        batch = batch_by_time[r["req_time"]]
        i = int(np.flatnonzero(batch.dense["uid"].numpy() == r["uid"])[0])
        # As Monolith's Float/Int64ExtraField: float features under extra_float, integer ones under
        # extra_int; uid is the message's uid, not an extra.
        assert set(r) == CORE_KEYS | {"extra_float", "extra_int"}
        assert r["extra_float"] == {"age": float(batch.dense["age"][i]), "label": float(batch.dense["label"][i])}
        assert r["extra_int"] == {"gid": int(batch.dense["gid"][i]), "target": int(batch.dense["target"][i])}
        assert r["label"] == {"ctr": float(batch.dense["label"][i])}  # the head's label, untouched


def test_misspelt_extra_field_raises_at_the_first_step(tmp_path):
    recorder = Recorder()
    with pytest.raises(KeyError) as info:
        _train(tmp_path, extra_fields_keys=["age", "aeg"], recorder=recorder)
    message = str(info.value)
    assert "aeg" in message and "'age'" in message and "req_time" in message  # the key, and the features
    assert len(recorder.seen) == 1 and not (tmp_path / "di").exists()  # at step 1, before any line


def test_without_req_time_nothing_is_written(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="monolith.metrics.deep_insight"):
        recorder = _train(tmp_path, extra_fields_keys=["aeg"], req_time=False)
    assert len(recorder.seen) == 3  # training ran; only the file metrics are off
    assert caplog.text.count("Disabling deep_insight because req_time is absent") == 1
    assert not (tmp_path / "di").exists()


def _output(pred: torch.Tensor, label: torch.Tensor) -> ModelOutput:
    return ModelOutput(mode=ModeKeys.TRAIN, head_names=["ctr_head"], labels=[label], preds=[pred],
                       classification=[True], loss=None, predictions=pred, optimizer=None, training_hooks=[],
                       extra_outputs={})


def test_default_model_name_and_relative_base_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    hook = FileMetricHook("deep_insight", None, 1.0, worker_index=3)
    # Monolith writes "model_name" without deep_insight_name; a relative directory is the working
    # directory's when the hook is built.
    assert hook.model_name == "model_name"
    assert hook.path == str(tmp_path / "deep_insight" / "model_name.part-00003.txt")
    monkeypatch.chdir("/")
    hook.begin(None)
    uids = torch.tensor([1, 2])
    batch = Batch(KeyedJaggedTensor(["user"], torch.tensor([5, 6]), torch.ones(2, dtype=torch.int64)),
                  {"uid": uids, "req_time": torch.tensor([10, 11]), "sample_rate": torch.tensor([0.5, 0.25])})
    hook.after_step(1, batch, _output(torch.tensor([0.25, 0.75]), torch.tensor([0.0, 1.0])))
    hook.end()
    lines = _lines(tmp_path / "deep_insight" / "model_name.part-00003.txt")
    assert [(r["model_name"], r["uid"], r["req_time"], r["sample_rate"], r["predict"], r["label"]) for r in lines] == [
        ("model_name", 1, 10, {"ctr_head": 0.5}, {"ctr_head": 0.25}, {"ctr_head": 0.0}),
        ("model_name", 2, 11, {"ctr_head": 0.25}, {"ctr_head": 0.75}, {"ctr_head": 1.0}),
    ]
