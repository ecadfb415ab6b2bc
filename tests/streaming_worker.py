"""A trainer reading a Kafka stream, run in a subprocess by the streaming tests.

    python tests/streaming_worker.py BOOTSTRAP TOPIC MODEL_DIR OUT_FILE [SAVE_STEPS [STEP_DELAY_S]]

Trains :class:`StreamModel` on the topic until it is idle for 3 s, checkpointing every SAVE_STEPS
steps, then writes the final parameters to OUT_FILE. STEP_DELAY_S paces the steps, so that a test
killing the trainer mid-stream finds it mid-stream however fast the machine is.
"""

from __future__ import annotations

import functools
import os
import sys
import time

import numpy as np
import torch

from monolith.estimator import Estimator, EstimatorSpec, ModeKeys, RunConfig
from monolith.fid import make_fid
from monolith.losses import get_sigmoid_loss_and_pred
from monolith.model import MonolithModel, TrainingHook
from monolith.optim import AdagradOptimizer
from monolith.streaming import KafkaSource, encode_example

BATCH = 32


def events(count: int, seed: int = 0) -> list[bytes]:
    """``count`` click events: a user and a movie, clicked when their hidden scores agree."""
    rng = np.random.default_rng(seed)
    users, movies = rng.integers(0, 200, count), rng.integers(0, 300, count)
    labels = ((users % 7) < (movies % 5)).astype(float)
    return [encode_example({"uid": [int(make_fid(1, u))], "mov": [int(make_fid(2, m))]}, label=y,
                           req_time=1_700_000_000 + i)
            for i, (u, m, y) in enumerate(zip(users, movies, labels))]


class StreamModel(MonolithModel):
    """Two features, a small MLP; reads its training data from Kafka."""

    def __init__(self, params=None, expire_time: int = 36500):
        super().__init__(params)
        self.batch_size = BATCH
        self.expire_time = expire_time
        torch.manual_seed(3)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))

    def input_fn(self, mode):
        raise NotImplementedError("StreamModel trains from a KafkaSource given to Estimator.train")

    def model_fn(self, features, mode):
        for name in ("uid", "mov"):
            self.create_embedding_feature_column(name, expire_time=self.expire_time)
        emb = self.lookup_embedding_slice(["uid", "mov"], "vec", 8, out_type="concat",
                                          optimizer=AdagradOptimizer(learning_rate=0.05, initial_accumulator_value=0.1))
        logits = self.mlp(emb).reshape(-1)
        label = features["label"] if mode != ModeKeys.PREDICT else None  # serving sends no label
        loss, pred = get_sigmoid_loss_and_pred("ctr", logits, label, self.batch_size, mode=mode)
        return EstimatorSpec(label=label, pred=pred, head_name="ctr", loss=loss,
                             optimizer=functools.partial(torch.optim.Adam, lr=1e-2))

    def serving_input_receiver_fn(self):
        return None


def train(bootstrap: str, topic: str, model_dir: str, save_steps: int | None = None, hooks=(),
          expire_time: int = 36500) -> Estimator:
    """Trains a StreamModel on the topic until it has been idle for 3 s."""
    estimator = Estimator(StreamModel(expire_time=expire_time), RunConfig(model_dir=model_dir, save_checkpoints_steps=save_steps,
                                                   log_step_count_steps=10**9, enable_summaries=False))
    # One consumer group per model_dir: a run's committed offsets are its own.
    source = KafkaSource(bootstrap, topic, BATCH, idle_timeout_s=3.0, max_batch_wait_s=5.0,
                         group_id=f"monolith-{os.path.basename(model_dir)}")
    estimator.train(input_fn=lambda mode: source, hooks=hooks)
    return estimator


def final_state(estimator: Estimator) -> dict:
    keys, rows = {}, {}
    for name, module in estimator.model.ctx.tables.items():
        k, r = module.table.items()
        order = np.argsort(k)
        keys[name], rows[name] = torch.from_numpy(k[order]), torch.from_numpy(r[order])
    return {"dense": estimator.model.dense_state_dict(), "keys": keys, "rows": rows,
            "global_step": estimator.global_step}


class StepDelay(TrainingHook):
    """Sleeps after every step."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def after_step(self, step, batch, output) -> None:
        time.sleep(self.seconds)


if __name__ == "__main__":
    bootstrap, topic, model_dir, out_file = sys.argv[1:5]
    save_steps = int(sys.argv[5]) if len(sys.argv) > 5 else None
    delay = [StepDelay(float(sys.argv[6]))] if len(sys.argv) > 6 else []
    torch.save(final_state(train(bootstrap, topic, model_dir, save_steps, hooks=delay)), out_file)
