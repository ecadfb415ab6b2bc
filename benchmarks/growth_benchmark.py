"""Growth: this project's training examples/s and memory as its tables grow to millions of distinct ids.

The peers benchmark's system (the Estimator with ``CriteoModel``, one collisionless table per slot) in a
process of its own, on the same stream. Before each measurement the tables are filled up to the target
number of distinct ids with fresh ids spread evenly over the 26 slots (inserted and initialised by a
zero-gradient update, as their first occurrence in training would); then ``windows`` runs of ``steps``
training steps are timed (their own new ids add to the tables) and the median window counts, which a
window slowed by other work on a shared machine does not move. A step touches ~106k rows whatever the table holds, so
examples/s should stay flat: an id costs its row, not time. Memory per id is the resident memory gained
since the model was built, over the ids held when it was read.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

from benchmarks.criteo_model import DIM, NUM_SPARSE
from benchmarks.peers_benchmark import ROOT, click_log, current_rss, monolith_estimator, peak_rss
from benchmarks.plots import Curves
from monolith.fid import make_fid

#: Signatures of the filling ids start here, far above the stream's ids.
_FILL_BASE = 1 << 46
_FILL_CHUNK = 1 << 20


def _ids_held(estimator) -> int:
    return sum(len(module.table) for module in estimator.model.ctx.tables.values())


def _fill(estimator, count: int, start: int) -> None:
    """Inserts ``count`` fresh ids (signatures from ``_FILL_BASE + start``), round-robin over the slots."""
    per_slot = np.full(NUM_SPARSE, count // NUM_SPARSE)
    per_slot[: count % NUM_SPARSE] += 1
    ctx = estimator.model.ctx
    for slot, n in enumerate(per_slot, start=1):
        table = ctx.table_of_slot(slot).table
        for lo in range(0, n, _FILL_CHUNK):
            size = min(_FILL_CHUNK, n - lo)
            signatures = _FILL_BASE + start + lo + np.arange(size, dtype=np.int64)  # the FID's slot bits differ
            table.apply_gradients(make_fid(slot, signatures), np.zeros((size, DIM), dtype=np.float32))


def _measure(config: dict) -> list[dict]:
    """Worker: fills and times at each size of ``config["sizes"]``; returns one point per size."""
    torch.set_num_threads(config["torch_threads"])
    log = click_log(config)
    with tempfile.TemporaryDirectory() as model_dir:
        estimator = monolith_estimator(config, log.batch(0), model_dir)
        before = current_rss()
        index = 0
        for _ in range(config["warmup"]):
            estimator.train_step(log.batch(index))
            index += 1
        points, filled = [], 0
        for size in config["sizes"]:
            missing = size - _ids_held(estimator)
            if missing > 0:
                _fill(estimator, missing, filled)
                filled += missing
            held = _ids_held(estimator)
            rss = current_rss()
            seconds = []
            for _ in range(config["windows"]):
                start = time.perf_counter()
                for _ in range(config["steps"]):
                    estimator.train_step(log.batch(index))
                    index += 1
                seconds.append(time.perf_counter() - start)
            points.append({
                "target": size,
                "ids": held,
                "ids_after": _ids_held(estimator),
                "examples_per_s": config["steps"] * config["batch"] / float(np.median(seconds)),
                "fastest_examples_per_s": config["steps"] * config["batch"] / min(seconds),
                "rss": rss,
                "bytes_per_id": (rss - before) / held,
                "table_bytes": sum(m.table.nbytes for m in estimator.model.ctx.tables.values()),
                "peak_rss": peak_rss(),
            })
    return points


def run(sizes: tuple[int, ...] = (1_000_000, 10_000_000, 50_000_000), steps: int = 10, windows: int = 5,
        warmup: int = 5,
        batch: int = 4096, vocab: int = 10_000_000, zipf_a: float = 1.05, new_id_rate: float = 0.6,
        hidden: tuple[int, ...] = (512, 256), torch_threads: int = 1, seed: int = 0) -> dict:
    """Measures examples/s and memory at each of ``sizes`` distinct ids, in a fresh process."""
    config = dict(sizes=list(sizes), steps=steps, windows=windows, warmup=warmup, batch=batch, vocab=vocab, zipf_a=zipf_a,
                  new_id_rate=new_id_rate, hidden=list(hidden), torch_threads=torch_threads, seed=seed)
    done = subprocess.run([sys.executable, "-m", "benchmarks.growth_benchmark", json.dumps(config)], cwd=ROOT,
                          capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"growth worker failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return {**config, "points": json.loads(done.stdout.splitlines()[-1])}


def report(results: list[dict]) -> str:
    """Markdown: per :func:`run` result, one row per size, examples/s relative to the smallest."""
    parts = []
    for r in results:
        first = r["points"][0]["examples_per_s"]
        lines = [
            f"Batch {r['batch']:,}, MLP {'-'.join(map(str, [*r['hidden'], 1]))}, the peers benchmark's stream "
            f"(Zipf({r['zipf_a']}) over {r['vocab']:,} ids per slot plus {r['new_id_rate']:.0%} new ids); "
            f"{r['warmup']} warm-up steps, then at each size {r['windows']} timed windows of {r['steps']} steps: "
            f"examples/s of the median window (and of the fastest); one torch thread.",
            "",
            "| distinct ids held | examples/s | vs the smallest | fastest window | resident memory | "
            "bytes per id (RSS) | table bytes per id | ids after the timed steps |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for p in r["points"]:
            lines.append(
                f"| {p['ids']:,} | {p['examples_per_s']:,.0f} | {p['examples_per_s'] / first:.2f}x | "
                f"{p['fastest_examples_per_s']:,.0f} | "
                f"{p['rss'] / 2**30:.2f} GiB | {p['bytes_per_id']:.0f} | {p['table_bytes'] / p['ids_after']:.0f} | "
                f"{p['ids_after']:,} |"
            )
        lines += ["", f"Peak resident memory: {r['points'][-1]['peak_rss'] / 2**30:.2f} GiB. Table bytes (per id "
                      f"held after the timed steps) count the hash maps and the rows in use; resident memory "
                      f"also holds the pages the maps' and stores' growth left behind."]
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def figures(results: list[dict]) -> list[Curves]:
    """Examples/s, and bytes per id, against the distinct ids the tables hold."""
    points = results[0]["points"]
    ids = [p["ids"] for p in points]
    return [Curves("growth_speed", "Training examples/s as the tables grow", "distinct ids held", "examples/s",
                   {"median window": (ids, [p["examples_per_s"] for p in points]),
                    "fastest window": (ids, [p["fastest_examples_per_s"] for p in points])}, logx=True),
            Curves("growth_memory", "Memory per id as the tables grow", "distinct ids held", "bytes per id",
                   {"resident memory": (ids, [p["bytes_per_id"] for p in points]),
                    "tables": (ids, [p["table_bytes"] / p["ids_after"] for p in points])}, logx=True)]


if __name__ == "__main__":
    if len(sys.argv) == 2:
        print(json.dumps(_measure(json.loads(sys.argv[1]))))
    else:
        print(report([run()]))
