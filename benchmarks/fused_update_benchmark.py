"""Fused lookup + sparse gradient update: the collisionless table against torch's EmbeddingBag, in one process.

One training step over ``slots`` slots x ``batch`` examples, one id per slot per example, each slot's ids
drawn from its own skewed (Zipf-like) stream: look up every slot's ids, sum-pool them per example, take
loss = sum of squares of the ``[batch, slots * dim]`` output, backward, sparse Adagrad update
(learning rate 0.01, initial accumulator 1.0, no epsilon) of the rows the batch touched.

* monolith, merged table: one :class:`EmbeddingHashTable` for all slots (Monolith's merged table: slots
  with the same slice config share a table, the slot bits of the FIDs keep them apart), one
  :class:`HashEmbedding` lookup, :class:`ReduceSum`, ``dedup="sum"``.
* monolith, table per slot: the same with one table per slot (the embedding factory's default layout).
* baseline: per slot ``torch.nn.EmbeddingBag(rows, dim, mode="sum", sparse=True)`` over ``fid % rows``
  and one ``torch.optim.Adagrad``; distinct ids of a slot that share a bucket share a row. By default each
  slot's vocabulary (``distinct``) is about its ``rows``, the size one would give a hashed table.

Both sides sum the gradients of repeated ids and update each touched row once (``dedup="sum"``, torch
coalesces its sparse gradient). Batches are built before timing. The systems take turns step by step,
so background load on a shared machine slows them alike, and torch runs on one thread by default, as the
table's numba kernels do (two torch threads contending with other processes for two cores stall).
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch

from benchmarks.fid_map_benchmark import skewed_stream
from benchmarks.plots import Bars
from monolith.fid import get_signature, make_fid
from monolith.modules.combiners import ReduceSum
from monolith.modules.embedding_lookup import HashEmbedding
from monolith.optim import AdagradOptimizer, RandomUniformInitializer
from monolith.table import EmbeddingHashTable, SliceConfig

LEARNING_RATE = 0.01
INITIAL_ACCUMULATOR = 1.0
INIT_RANGE = 0.05
BASELINE = "torch EmbeddingBag + Adagrad"
MERGED = "monolith, merged table"
PER_SLOT = "monolith, table per slot"

#: One training step, given its index (which selects the batch).
Step = Callable[[int], None]


def slot_fids(slots: int, distinct: int, size: int) -> np.ndarray:
    """``[size, slots]`` FIDs: column ``s`` is a skewed stream over ``distinct`` keys of slot ``s + 1``."""
    columns = [make_fid(slot, get_signature(skewed_stream(distinct, size, seed=slot))) for slot in range(1, slots + 1)]
    return np.stack(columns, axis=1)


def _by_slot(fids: np.ndarray, batch: int) -> torch.Tensor:
    """``[slots, steps, batch]``: each slot's ids of each step, contiguous."""
    return torch.from_numpy(np.ascontiguousarray(fids.T).reshape(fids.shape[1], -1, batch))


def _sum_of_squares(pooled: torch.Tensor) -> torch.Tensor:
    return pooled.square().sum()


def _table(dim: int, seed: int) -> EmbeddingHashTable:
    config = SliceConfig(
        "vec",
        dim,
        initializer=RandomUniformInitializer(-INIT_RANGE, INIT_RANGE),
        optimizer=AdagradOptimizer(LEARNING_RATE, INITIAL_ACCUMULATOR),
    )
    return EmbeddingHashTable([config], seed=seed)


def _merged(fids: np.ndarray, batch: int, dim: int) -> Step:
    slots = fids.shape[1]
    module = HashEmbedding(_table(dim, seed=0))
    # Row i holds step i's ids example-major, so the pooled [batch * slots, dim] reshapes to [batch, slots * dim].
    ids = torch.from_numpy(fids.reshape(-1, batch * slots))
    lengths = torch.ones(batch * slots, dtype=torch.int64)
    combiner = ReduceSum()

    def step(i: int) -> None:
        pooled = combiner(module(ids[i]), lengths).reshape(batch, slots * dim)
        _sum_of_squares(pooled).backward()
        module.apply_gradients(global_step=i, dedup="sum")

    return step


def _per_slot(fids: np.ndarray, batch: int, dim: int) -> Step:
    modules = [HashEmbedding(_table(dim, seed=slot)) for slot in range(fids.shape[1])]
    ids = _by_slot(fids, batch)
    lengths = torch.ones(batch, dtype=torch.int64)
    combiner = ReduceSum()

    def step(i: int) -> None:
        pooled = torch.cat([combiner(module(ids[s, i]), lengths) for s, module in enumerate(modules)], dim=1)
        _sum_of_squares(pooled).backward()
        for module in modules:
            module.apply_gradients(global_step=i, dedup="sum")

    return step


def _baseline(fids: np.ndarray, batch: int, dim: int, rows: int) -> Step:
    bags = [torch.nn.EmbeddingBag(rows, dim, mode="sum", sparse=True) for _ in range(fids.shape[1])]
    for bag in bags:
        torch.nn.init.uniform_(bag.weight, -INIT_RANGE, INIT_RANGE)
    optimizer = torch.optim.Adagrad(
        [bag.weight for bag in bags], lr=LEARNING_RATE, initial_accumulator_value=INITIAL_ACCUMULATOR, eps=0.0
    )
    # Adagrad builds sparse tensors from valid indices; opting out explicitly silences torch's warning.
    torch.sparse.check_sparse_tensor_invariants.disable()
    ids = _by_slot(fids % rows, batch)
    offsets = torch.arange(batch)

    def step(i: int) -> None:
        pooled = torch.cat([bag(ids[s, i], offsets) for s, bag in enumerate(bags)], dim=1)
        _sum_of_squares(pooled).backward()
        optimizer.step()
        optimizer.zero_grad()

    return step


def _shared_bucket_fraction(fids: np.ndarray, rows: int) -> float:
    """Fraction of the distinct ids of a slot whose baseline row also serves another id of that slot."""
    shared = total = 0
    for column in fids.T:
        distinct = np.unique(column)
        counts = np.unique(distinct % rows, return_counts=True)[1]
        shared += int(counts[counts > 1].sum())
        total += distinct.size
    return shared / total


def run(
    slots: int = 26,
    batch: int = 4096,
    dim: int = 16,
    baseline_rows: int = 1 << 20,
    distinct: int = 1_000_000,
    warmup: int = 10,
    steps: int = 50,
    torch_threads: int = 1,
) -> dict:
    """Times ``steps`` training steps of each system after ``warmup`` untimed ones (numba compile, first
    inserts); returns the configuration and, per system, steps/s, examples/s, ids/s and speed relative to
    the baseline."""
    fids = slot_fids(slots, distinct, (warmup + steps) * batch)
    systems: dict[str, Step] = {
        BASELINE: _baseline(fids, batch, dim, baseline_rows),
        MERGED: _merged(fids, batch, dim),
        PER_SLOT: _per_slot(fids, batch, dim),
    }
    seconds = dict.fromkeys(systems, 0.0)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(torch_threads)
    try:
        for i in range(warmup + steps):
            for name, step in systems.items():
                start = time.perf_counter()
                step(i)
                if i >= warmup:
                    seconds[name] += time.perf_counter() - start
    finally:
        torch.set_num_threads(previous_threads)
    baseline_steps_per_s = steps / seconds[BASELINE]
    return {
        "slots": slots,
        "batch": batch,
        "dim": dim,
        "baseline_rows": baseline_rows,
        "distinct": distinct,
        "warmup": warmup,
        "steps": steps,
        "torch_threads": torch_threads,
        "shared_bucket_fraction": _shared_bucket_fraction(fids, baseline_rows),
        "systems": {
            name: {
                "steps_per_s": steps / s,
                "examples_per_s": steps * batch / s,
                "ids_per_s": steps * batch * slots / s,
                "vs_baseline": steps / s / baseline_steps_per_s,
            }
            for name, s in seconds.items()
        },
    }


def report(results: list[dict]) -> str:
    """Markdown: per :func:`run` result, its configuration and a table of the systems."""
    parts = []
    for r in results:
        lines = [
            f"{r['slots']} slots x batch {r['batch']:,} x dim {r['dim']}, one id per slot per example from skewed "
            f"streams over {r['distinct']:,} keys per slot; {r['warmup']} warm-up + {r['steps']} timed steps; "
            f"baseline {r['baseline_rows']:,} rows per slot (ids hashed modulo that), where "
            f"{100 * r['shared_bucket_fraction']:.1f}% of the distinct ids seen share their row. Adagrad lr "
            f"{LEARNING_RATE}, initial accumulator {INITIAL_ACCUMULATOR}, no epsilon; gradients of repeated ids "
            f"summed (dedup='sum'). torch threads: {r['torch_threads']}; the table's numba kernels run on one.",
            "",
            "| system | steps/s | examples/s | M ids/s | vs baseline |",
            "| --- | --- | --- | --- | --- |",
        ]
        for name, s in r["systems"].items():
            lines.append(
                f"| {name} | {s['steps_per_s']:.1f} | {s['examples_per_s']:,.0f} | {s['ids_per_s'] / 1e6:.2f} | "
                f"{s['vs_baseline']:.2f}x |"
            )
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def figures(results: list[dict]) -> list[Bars]:
    """Steps/s of each system."""
    r = results[0]
    return [Bars("fused_update", "Fused lookup + sparse Adagrad update against torch EmbeddingBag", "steps/s",
                 list(r["systems"]), {"steps/s": [s["steps_per_s"] for s in r["systems"].values()]})]


if __name__ == "__main__":
    print(report([run()]))
