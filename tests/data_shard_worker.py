"""A 2-rank training run on Parquet shares of uneven size, run under torchrun by test_data_shards.

    python -m torch.distributed.run --nproc_per_node=2 tests/data_shard_worker.py DATA_DIR RUN [MAX_STEPS]

Each rank reads its share of DATA_DIR/a.parquet and b.parquet with ``rank`` / ``world_size``, trains
(resuming from DATA_DIR/model) up to MAX_STEPS or to the end of every share, and writes its global
step, the req_times it trained and its dense parameters to DATA_DIR/RUN-R.pt.
"""

from __future__ import annotations

import functools
import os
import sys

import torch

from monolith.data import ParquetReader
from monolith.distributed import get_rank, get_world_size, init_from_env
from monolith.estimator import Estimator, EstimatorSpec, RunConfig
from monolith.model import MonolithModel, TrainingHook


class ShareModel(MonolithModel):
    """One feature, a linear head, a mean loss (NaN over an empty batch)."""

    def __init__(self, data_dir: str):
        super().__init__()
        self.data_dir = data_dir
        self.batch_size = 8
        torch.manual_seed(3)
        self.head = torch.nn.Linear(4, 1)

    def input_fn(self, mode):
        paths = [os.path.join(self.data_dir, name) for name in ("a.parquet", "b.parquet")]
        return ParquetReader(paths, {"uid": 1}, [], "label", self.batch_size, req_time_column="t",
                             rank=get_rank(), world_size=get_world_size())

    def model_fn(self, features, mode):
        self.create_embedding_feature_column("uid")
        logits = self.head(self.lookup_embedding_slice(["uid"], "vec", 4, out_type="concat")).reshape(-1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, features["label"])
        return EstimatorSpec(label=features["label"], pred=torch.sigmoid(logits), head_name="ctr", loss=loss,
                             optimizer=functools.partial(torch.optim.SGD, lr=0.1))

    def serving_input_receiver_fn(self):
        return None


class Trained(TrainingHook):
    def __init__(self):
        self.req_times: list[int] = []

    def after_step(self, step, batch, output):
        if batch.batch_size:
            self.req_times += batch.dense["req_time"].tolist()


def main(data_dir: str, run: str, max_steps: int | None) -> None:
    init_from_env()
    estimator = Estimator(ShareModel(data_dir), RunConfig(model_dir=os.path.join(data_dir, "model"),
                                                          log_step_count_steps=1000, enable_summaries=False,
                                                          progress_bar=False))
    trained = Trained()
    estimator.train(max_steps=max_steps, hooks=[trained])
    torch.save({"global_step": estimator.global_step, "trained": trained.req_times,
                "dense": estimator.model.dense_state_dict()}, os.path.join(data_dir, f"{run}-{get_rank()}.pt"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else None)
