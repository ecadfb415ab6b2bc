"""Input prefetch: reading and parsing on a background thread overlapping training, against no prefetch.

A file of Monolith ``Example`` s (26 FID features and a label each) is read by ``PBDataset`` into
batches while a step is trained on each batch: once in turn (``for batch in reader``) and once with
``reader.prefetch(2)``. The ratio of the two wall times is the speed-up; the ideal is
(read + train) / max(read, train), from timing the reading alone and the training alone. The step is
a torch MLP on the CPU (one thread: the reading thread needs a core of its own to overlap), or, with
``device_step_ms``, a wait of that long per step, as a host waits for a GPU step (no CPU used).

Overlapping needs a second core as fast beside the first as alone. Where the cores share one
physical core (SMT siblings, as virtual CPUs often are), each runs slower while the other works, so
a CPU step's reading and training are also timed beside a process that keeps another core busy; the
"ideal here" is (read + train) / max(both of those), what prefetch could reach on this machine (for a
waiting step, which leaves the reading its core, the ideal). The same batches are also read by a
``DataLoader`` worker process (``num_workers=1``): a reading thread's Python holds the interpreter
lock that the training thread needs between its ops, a worker process holds none of it.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from monolith.data import PBDataset
from monolith.data.pb_dataset import write_pb_file
from monolith.data.proto.example_pb2 import Example
from monolith.fid import make_fid

_FEATURES = [f"f{i}" for i in range(26)]


def _write(path: Path, examples: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 1 << 40, (examples, len(_FEATURES)))
    labels = rng.integers(0, 2, examples)

    def messages():
        for row, label in zip(ids.tolist(), labels.tolist()):
            e = Example(label=[float(label)])
            for slot, (name, fid) in enumerate(zip(_FEATURES, row), start=1):
                e.named_feature.add(name=name).feature.fid_v2_list.value.append(make_fid(slot, fid))
            yield e

    write_pb_file(path, messages(), "example", has_sort_id=False)


def _seconds(loop: Callable[[], object]) -> float:
    """Wall seconds of one ``loop()``."""
    start = time.perf_counter()
    loop()
    return time.perf_counter() - start


def run(examples: int = 20_000, batch_size: int = 1024, width: int = 1024, repeats: int = 3,
        device_step_ms: float | None = None) -> dict:
    """Times reading alone, training alone, both in turn and both with prefetch (best of ``repeats`` rounds)."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.ReLU(), torch.nn.Linear(width, width),
                                torch.nn.ReLU(), torch.nn.Linear(width, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    dense = torch.randn(batch_size, width)

    def step(batch) -> None:
        if device_step_ms is not None:
            time.sleep(device_step_ms / 1000)
            return
        logits = model(dense[: batch.batch_size]).reshape(-1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch["label"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "part-0"
        _write(path, examples)
        reader = PBDataset(str(path), batch_size, sparse_features=_FEATURES, has_sort_id=False, line_id_fields=())
        cached = list(reader)  # also warms the page cache and the parser

        loops = {
            "read_s": lambda: [None for _ in reader],
            "train_s": lambda: [step(b) for b in cached],
            "serial_s": lambda: [step(b) for b in reader],
            "prefetch_s": lambda: [step(b) for b in reader.prefetch(2)],
            "worker_s": lambda: [step(b) for b in torch.utils.data.DataLoader(reader, batch_size=None, num_workers=1,
                                                                                prefetch_factor=2)],
        }
        # Rounds of all loops, best of each: a change in the machine's load hits every loop alike.
        best = dict.fromkeys([*loops, "read_busy_s", "train_busy_s"], float("inf"))
        for _ in range(repeats):
            for name, loop in loops.items():
                best[name] = min(best[name], _seconds(loop))
            if device_step_ms is not None:  # a waiting step leaves the reading its core
                continue
            busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            try:
                for name, busy_name in (("read_s", "read_busy_s"), ("train_s", "train_busy_s")):
                    best[busy_name] = min(best[busy_name], _seconds(loops[name]))
            finally:
                busy.kill()
                busy.wait()
        read_s, train_s, serial_s, prefetch_s, worker_s = (best[name] for name in loops)
        if device_step_ms is not None:
            best["read_busy_s"], best["train_busy_s"] = read_s, train_s
    return {
        "examples": examples,
        "step": "CPU MLP" if device_step_ms is None else f"device wait {device_step_ms:g} ms",
        "batch_size": batch_size,
        "batches": len(cached),
        "read_s": read_s,
        "train_s": train_s,
        "serial_s": serial_s,
        "prefetch_s": prefetch_s,
        "speedup": serial_s / prefetch_s,
        "worker_s": worker_s,
        "worker_speedup": serial_s / worker_s,
        "ideal": (read_s + train_s) / max(read_s, train_s),
        "read_busy_s": best["read_busy_s"],
        "train_busy_s": best["train_busy_s"],
        "ideal_here": (read_s + train_s) / max(best["read_busy_s"], best["train_busy_s"]),
    }


def report(results: list[dict]) -> str:
    lines = [
        "| step | examples x batch | read alone (s) | train alone (s) | read / train beside a busy core (s) "
        "| in turn (s) | prefetch(2) (s) | speed-up | DataLoader worker (s) | speed-up | ideal (two free cores) "
        "| ideal here |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        lines.append(
            f"| {r['step']} | {r['examples']:,} x {r['batch_size']} | {r['read_s']:.2f} | {r['train_s']:.2f} "
            f"| {r['read_busy_s']:.2f} / {r['train_busy_s']:.2f} | {r['serial_s']:.2f} | {r['prefetch_s']:.2f} "
            f"| {r['speedup']:.2f}x | {r['worker_s']:.2f} | {r['worker_speedup']:.2f}x | {r['ideal']:.2f}x "
            f"| {r['ideal_here']:.2f}x |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(report([run(), run(device_step_ms=100)]))
