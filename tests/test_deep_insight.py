"""File metrics (deep insight): one JSON line per sampled example and head."""

import functools
import json

import numpy as np
import torch

from monolith.estimator import Estimator, EstimatorSpec, RunConfig
from monolith.fid import make_fid
from monolith.losses import get_sigmoid_loss_and_pred
from monolith.metrics.deep_insight import sample_mask
from monolith.model import MonolithModel, TrainingHook
from monolith.sparse import Batch, KeyedJaggedTensor

BATCH = 40


def batches(count: int):
    rng = np.random.default_rng(5)
    for step in range(count):
        uids = rng.integers(0, 1000, BATCH)
        sparse = KeyedJaggedTensor(["user"], torch.from_numpy(make_fid(1, uids)), torch.ones(BATCH, dtype=torch.int64))
        yield Batch(sparse, {"label": torch.from_numpy((uids % 3 == 0).astype(np.float32)),
                             "req_time": torch.full((BATCH,), 1_700_000_000 + step, dtype=torch.int64),
                             "uid": torch.from_numpy(uids)})


class Recorder(TrainingHook):
    def __init__(self):
        self.seen = []

    def after_step(self, step, batch, output):
        self.seen.append((step, batch, output.preds[0].detach().clone()))


class SampledModel(MonolithModel):
    def __init__(self, params=None, recorder=None):
        super().__init__(params)
        self.batch_size = BATCH
        self.recorder = recorder
        self.linear = torch.nn.Linear(4, 1)

    def input_fn(self, mode):
        return batches(3)

    def model_fn(self, features, mode):
        self.create_embedding_feature_column("user")
        logits = self.linear(self.lookup_embedding_slice(["user"], "vec", 4, out_type="concat")).reshape(-1)
        loss, pred = get_sigmoid_loss_and_pred("ctr", logits, features["label"], BATCH, mode=mode)
        self.add_training_hook(self.recorder)
        return EstimatorSpec(label=features["label"], pred=pred, head_name="ctr", loss=loss,
                             optimizer=functools.partial(torch.optim.SGD, lr=0.1))

    def serving_input_receiver_fn(self):
        return None


def test_file_metrics_write_each_sampled_example(tmp_path):
    recorder = Recorder()
    model = SampledModel(recorder=recorder)
    metrics = model.p.metrics
    metrics.enable_file_metrics = True
    metrics.deep_insight_sample_ratio = 0.5
    metrics.file_base_name = str(tmp_path / "di")
    metrics.deep_insight_name = "ranker"
    Estimator(model, RunConfig(model_dir=str(tmp_path / "model"), enable_summaries=False)).train()
    lines = [json.loads(line) for line in (tmp_path / "di" / "ranker.part-00000.txt").read_text().splitlines()]
    expected = []
    for step, batch, preds in recorder.seen:
        uids = batch.dense["uid"].numpy()
        for i in np.flatnonzero(sample_mask(uids, BATCH, 0.5, np.random.default_rng(0))):
            expected.append((step, int(uids[i]), float(batch.dense["label"][i]), float(preds[i]),
                             int(batch.dense["req_time"][i])))
    assert 0 < len(expected) < 3 * BATCH  # a sample, by uid
    assert [(r["global_step"], r["uid"], r["label"], r["pred"], r["req_time"]) for r in lines] == expected
    assert {r["model_name"] for r in lines} == {"ranker"} and {r["target"] for r in lines} == {"ctr"}
