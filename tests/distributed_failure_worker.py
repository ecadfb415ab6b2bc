"""Programs of the failure tests, run under torchrun: one rank raising, a non-finite loss, a rank
without data, a parameter only some ranks use, ranks configured differently.

    python -m torch.distributed.run --nproc_per_node=2 tests/distributed_failure_worker.py SCENARIO OUT_DIR

Each scenario writes what it computed under OUT_DIR, or fails as the test expects.
"""

from __future__ import annotations

import functools
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))

from monolith.distributed import get_rank, get_world_size, init_from_env  # noqa: E402
from monolith.estimator import Estimator, EstimatorSpec, RunConfig  # noqa: E402
from monolith.fid import make_fid  # noqa: E402
from monolith.model import MonolithModel  # noqa: E402
from monolith.sparse import Batch, KeyedJaggedTensor  # noqa: E402


def make_batch(rows: int, seed: int) -> Batch:
    rng = np.random.default_rng(seed)
    ids = make_fid(1, rng.integers(0, 200, rows))
    sparse = KeyedJaggedTensor(["uid"], torch.from_numpy(ids), torch.ones(rows, dtype=torch.int64))
    return Batch(sparse, {"label": torch.from_numpy((rng.random(rows) < 0.4).astype(np.float32))})


class FailureModel(MonolithModel):
    """One feature, a linear head, and a second head for the rows of batches larger than 4.

    ``scenario`` decides what this rank does wrong: ``raise`` (rank 1 raises in model_fn at step
    1), ``nan`` (rank 1's loss is NaN at step 1), ``no_data`` (rank 1 has no batch), ``clip`` (rank
    1 clips by another norm).
    """

    def __init__(self, params=None, scenario: str = "", batches: int = 4):
        super().__init__(params)
        self.scenario, self.batches = scenario, batches
        self.rank = get_rank()
        # Rank 0's batches of 8 rows use the second head; rank 1's batches of 3 rows do not.
        self.rows = 8 if self.rank == 0 else 3
        self.batch_size = self.rows
        if scenario == "clip" and self.rank == 1:
            self.p.clip_norm = 0.5
        torch.manual_seed(3)
        self.head = torch.nn.Linear(4, 1)
        self.big_batch_head = torch.nn.Linear(4, 1)

    def input_fn(self, mode):
        if self.scenario == "no_data" and self.rank == 1:
            return []
        return [make_batch(self.rows, 100 * self.rank + step) for step in range(self.batches)]

    def model_fn(self, features, mode):
        self.create_embedding_feature_column("uid")
        emb = self.lookup_embedding_slice(["uid"], "vec", 4, out_type="concat")
        logits = self.head(emb).reshape(-1)
        if emb.shape[0] > 4:
            logits = logits + self.big_batch_head(emb).reshape(-1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, features["label"], reduction="sum")
        if self.rank == 1 and mode == "train" and self.ctx.built:
            if self.scenario == "raise" and self.steps_seen == 1:
                raise ValueError("deliberate failure in model_fn")
            if self.scenario == "nan" and self.steps_seen == 1:
                loss = loss * float("nan")
        self.steps_seen = getattr(self, "steps_seen", 0) + (mode == "train" and self.ctx.built)
        return EstimatorSpec(label=features["label"], pred=torch.sigmoid(logits), head_name="ctr", loss=loss,
                             optimizer=functools.partial(torch.optim.SGD, lr=0.1))

    def serving_input_receiver_fn(self):
        return None


def main(scenario: str, out_dir: str) -> None:
    init_from_env()
    rank = get_rank()
    model = FailureModel(scenario=scenario)
    estimator = Estimator(model, RunConfig(model_dir=os.path.join(out_dir, "model"), log_step_count_steps=1000,
                                           enable_summaries=False, progress_bar=False))
    estimator.train()
    if scenario == "eval_uneven":  # rank 1 evaluates nothing: the metrics are rank 0's examples'
        model.batches = 3 if rank == 0 else 0
    metrics = estimator.evaluate()
    predictions = list(estimator.predict())
    torch.save({"dense": model.dense_state_dict(), "metrics": metrics, "predictions": predictions},
               os.path.join(out_dir, f"{scenario}-{rank}.pt"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
