"""The Criteo-like benchmark model: 26 sparse slots (dim 16, Adagrad), 13 dense features, MLP, Adam.

Shared by the throughput benchmarks so every system trains the same architecture on the same
synthetic stream (:class:`monolith.data.SyntheticClickLog`).
"""

from __future__ import annotations

import functools
from typing import Iterable

import torch

from monolith.data import SyntheticClickLog
from monolith.distributed import get_rank, get_world_size
from monolith.estimator import EstimatorSpec
from monolith.losses import get_sigmoid_loss_and_pred
from monolith.model import MonolithModel
from monolith.optim import AdagradOptimizer

NUM_SPARSE, NUM_DENSE, DIM = 26, 13, 16


def mlp(widths: Iterable[int]) -> torch.nn.Sequential:
    """Linear layers with ReLU between them."""
    widths = list(widths)
    layers: list[torch.nn.Module] = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        layers.append(torch.nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


class CriteoModel(MonolithModel):
    """Embeddings of every slot concatenated with the dense features, through ``hidden`` -> 1."""

    def __init__(self, params=None, hidden: tuple[int, ...] = (512, 256), batch_size: int = 4096,
                 num_batches: int = 50, vocab_size: int = 1_000_000, seed: int = 0):
        super().__init__(params)
        self.batch_size = batch_size
        self.data = dict(vocab_sizes=vocab_size, batch_size=batch_size, num_batches=num_batches)
        self.seed = seed
        torch.manual_seed(seed)
        self.mlp = mlp([NUM_SPARSE * DIM + NUM_DENSE, *hidden, 1])

    def input_fn(self, mode: str):
        # Each rank reads its own part of the stream: batch i of rank r is batch i * world + r.
        log = SyntheticClickLog(NUM_SPARSE, NUM_DENSE, seed=self.seed, **self.data)
        rank, world = get_rank(), get_world_size()
        return (log.batch(i * world + rank) for i in range(self.data["num_batches"]))

    def model_fn(self, features, mode):
        names = [f"C{i}" for i in range(1, NUM_SPARSE + 1)]
        for name in names:
            self.create_embedding_feature_column(name)
        emb = self.lookup_embedding_slice(names, "vec", DIM, optimizer=AdagradOptimizer(
            learning_rate=0.01, initial_accumulator_value=1.0), out_type="concat")
        logits = self.mlp(torch.cat([emb, features["dense"]], dim=1)).reshape(-1)
        loss, pred = get_sigmoid_loss_and_pred("ctr", logits, features["label"], self.batch_size, mode=mode)
        return EstimatorSpec(label=features["label"], pred=pred, head_name="ctr", loss=loss,
                             optimizer=functools.partial(torch.optim.Adam, lr=1e-3))

    def serving_input_receiver_fn(self):
        return None
