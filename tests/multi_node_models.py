"""Models the multi-node tests train with ``monolith train --model tests/multi_node_models.py:NAME``.

A small two-feature model whose rank 1 kills (SIGKILL) or stops (SIGSTOP) its own process in the
middle of a step, as a lost machine or a hung worker would; it writes its pid first so the test can
end a stopped process.
"""

from __future__ import annotations

import functools
import os
import signal

import numpy as np
import torch

from monolith.distributed import get_rank, get_world_size
from monolith.estimator import EstimatorSpec
from monolith.fid import make_fid
from monolith.model import MonolithModel
from monolith.sparse import Batch, KeyedJaggedTensor

#: The forward pass (counted from 1, the build pass included) in which rank 1 signals itself.
SIGNAL_AT_CALL = 4


class _TwoFeatures(MonolithModel):
    SIGNAL: signal.Signals | None = None

    def __init__(self, params=None):
        super().__init__(params)
        self.batch_size = 32
        self.head = torch.nn.Linear(8, 1)
        self.calls = 0

    def input_fn(self, mode):
        for step in range(200):
            rng = np.random.default_rng(step * get_world_size() + get_rank())
            ids = np.concatenate([make_fid(1, rng.integers(0, 500, self.batch_size)),
                                  make_fid(2, rng.integers(0, 500, self.batch_size))])
            sparse = KeyedJaggedTensor(["uid", "mov"], torch.from_numpy(ids), torch.ones(ids.size, dtype=torch.int64))
            yield Batch(sparse, {"label": torch.from_numpy((rng.random(self.batch_size) < 0.3).astype(np.float32))})

    def model_fn(self, features, mode):
        self.calls += 1
        if self.SIGNAL is not None and get_rank() == 1 and self.calls == SIGNAL_AT_CALL:
            with open(os.path.join(os.environ["MULTI_NODE_PID_DIR"], "signalled.pid"), "w") as f:
                f.write(str(os.getpid()))
            os.kill(os.getpid(), self.SIGNAL)
        for name in ("uid", "mov"):
            self.create_embedding_feature_column(name)
        emb = self.lookup_embedding_slice(["uid", "mov"], "vec", 4, out_type="concat")
        logits = self.head(emb).reshape(-1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, features["label"], reduction="sum")
        return EstimatorSpec(label=features["label"], pred=torch.sigmoid(logits), head_name="ctr", loss=loss,
                             optimizer=functools.partial(torch.optim.Adam, lr=1e-2))

    def serving_input_receiver_fn(self):
        return None


class KilledMidStep(_TwoFeatures):
    """Rank 1 is SIGKILLed in the forward pass of its third training step."""

    SIGNAL = signal.SIGKILL


class HungMidStep(_TwoFeatures):
    """Rank 1 is SIGSTOPped in the forward pass of its third training step."""

    SIGNAL = signal.SIGSTOP
