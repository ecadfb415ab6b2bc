"""``python -m benchmarks`` (``make bench``): runs every benchmark, checks the goals, writes RESULTS.md.

``--quick`` runs small sizes and only prints, leaving RESULTS.md alone (for a fast look, e.g. ``make run``).
A new benchmark is one more :class:`Benchmark` appended to :data:`BENCHMARKS`: a module with
``run(**kwargs) -> dict`` and ``report(results) -> str``, the keyword sets of its runs, and its goals.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import inspect
import os
import platform
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Callable

import numba
import numpy as np
import torch

from benchmarks import (
    cli_benchmark,
    deepfm_benchmark,
    distributed_benchmark,
    fid_map_benchmark,
    freshness_benchmark,
    fused_update_benchmark,
    growth_benchmark,
    input_pipeline_benchmark,
    online_benchmark,
    peers_benchmark,
    plots,
    quality_benchmark,
    serving_benchmark,
)
from monolith.atomic import atomic_write

RESULTS = Path(__file__).with_name("RESULTS.md")


@dataclasses.dataclass(frozen=True)
class Goal:
    """One target and whether the measured figure meets it."""

    name: str
    target: str
    measured: str
    passed: bool


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """A benchmark module, the keyword arguments of each of its runs (full and quick), its goals and,
    where it has curves or comparisons, its figures (drawn beside RESULTS.md by :mod:`benchmarks.plots`)."""

    title: str
    module: ModuleType
    runs: list[dict]
    quick_runs: list[dict]
    goals: Callable[[list[dict]], list[Goal]]
    figures: Callable[[list[dict]], list[plots.Bars | plots.Curves]] | None = None


def _fid_map_goals(results: list[dict]) -> list[Goal]:
    largest = max(results, key=lambda r: r["distinct"])
    worst_bytes = max(r["map_bytes_per_key"] for r in results)
    return [
        Goal(
            f"FID map skewed stream at {largest['distinct']:,} keys, one thread",
            ">= 25M ids/s",
            f"{largest['stream_ids_per_s'] / 1e6:.1f}M ids/s",
            largest["stream_ids_per_s"] >= 25e6,
        ),
        Goal("FID map overhead per key", "<= 48 bytes", f"{worst_bytes:.1f} bytes", worst_bytes <= 48),
    ]


def _fused_goals(results: list[dict]) -> list[Goal]:
    goals = []
    for r in results:
        baseline = r["systems"][fused_update_benchmark.BASELINE]["steps_per_s"]
        for name in (fused_update_benchmark.MERGED, fused_update_benchmark.PER_SLOT):
            ours = r["systems"][name]
            goals.append(Goal(
                f"Fused lookup + update, {name}, vs torch EmbeddingBag + Adagrad",
                ">= 1.0x",
                f"{ours['vs_baseline']:.2f}x ({ours['steps_per_s']:.1f} vs {baseline:.1f} steps/s)",
                ours["vs_baseline"] >= 1.0,
            ))
    return goals


def _distributed_goals(results: list[dict]) -> list[Goal]:
    rows = results[0]["rows"]
    single = rows[1]  # one process on one core
    per_core = {row["kind"]: row for row in rows[2:]}  # one process per core, by kind
    speedup = {kind: row["examples_per_sec"] / single["examples_per_sec"] for kind, row in per_core.items()}
    many = per_core[distributed_benchmark.SYNCHRONOUS]
    scaling = speedup[distributed_benchmark.SYNCHRONOUS]
    return [Goal(f"{many['processes']} training processes on {many['processes']} cores vs 1 process on 1 core "
                 "(examples/s)", ">= 1.6x",
                 f"{scaling:.2f}x (independent processes: {speedup[distributed_benchmark.INDEPENDENT]:.2f}x, "
                 f"with a barrier per step: {speedup[distributed_benchmark.LOCKSTEP]:.2f}x)",
                 scaling >= 1.6)]


def _freshness_goals(results: list[dict]) -> list[Goal]:
    return [Goal(f"freshness (event produced -> prediction changed), rows synced every {r['sync_interval_s']:g} s "
                 f"(dense weights every {r['dense_sync_interval_s']:g} s)",
                 "< 2 s", f"{r['freshness_max_s']:.2f} s worst of {r['measurements']}", r["freshness_max_s"] < 2.0)
            for r in results if r["sync_interval_s"] == 1.0]


def _serving_goals(results: list[dict]) -> list[Goal]:
    goals = []
    for r in results:
        on, speedup = r["batching"]["on"], serving_benchmark.batching_speedup(r)
        goals.append(Goal(f"Serving, {r['batching_clients']} clients of single-example JSON requests: dynamic "
                          f"batching vs none, same server", ">= 3.0x requests/s, p99 <= 50 ms",
                          f"{speedup:.2f}x ({on['requests_per_s']:.0f} vs "
                          f"{r['batching']['off']['requests_per_s']:.0f} requests/s), p99 {on['p99_ms']:.0f} ms",
                          speedup >= 3.0 and on["p99_ms"] <= 50))
        worst = max(r["large"], key=lambda row: row["memory_ratio"])
        goals.append(Goal("Serving, a large predict request's peak memory over its body", "<= 4x",
                          f"{worst['memory_ratio']:.2f}x ({worst['request']})", worst["memory_ratio"] <= 4))
    return goals


def _online_goals(results: list[dict]) -> list[Goal]:
    goals = []
    for r in results:
        for count in r["shard_counts"]:
            e = r["by_count"][count]
            gains = [on - off for on, off in zip(e[online_benchmark.ONLINE]["shard_averaged"],
                                                 e[online_benchmark.BATCH]["shard_averaged"])]
            goals.append(Goal(f"Online above batch-only, shard-averaged AUC, N = {count} (every seed)", "> 0 each",
                              ", ".join(f"{100 * g:+.2f}" for g in gains), all(g > 0 for g in gains)))
    return goals


def _peers_goals(results: list[dict]) -> list[Goal]:
    goals = []
    for r in results:
        targets = [(peers_benchmark.MONOLITH_RESERVED.format(rows=r["rows"]), peers_benchmark.TORCH, 1.0),
                   (peers_benchmark.MONOLITH, peers_benchmark.TORCH, 1.0),
                   (peers_benchmark.MONOLITH, peers_benchmark.TORCHREC_MC.format(interval=1), 2.0)]
        for ours_name, name, target in targets:
            if name in r["systems"]:  # the TorchRec systems run only with the peers venv
                ours = r["systems"][ours_name]["examples_per_s"]
                theirs = r["systems"][name]["examples_per_s"]
                goals.append(Goal(f"Training examples/s, {ours_name} vs {name}", f">= {target:.1f}x",
                                  f"{ours / theirs:.2f}x ({ours:,.0f} vs {theirs:,.0f})", ours / theirs >= target))
        if peers_benchmark.TORCHREC in r["systems"]:
            ours, theirs = r["systems"][peers_benchmark.MONOLITH], r["systems"][peers_benchmark.TORCHREC]
            threads = f"{r['torch_threads']} torch thread(s)"
            speed = ours["examples_per_s"] / theirs["examples_per_s"]
            goals.append(Goal(f"Training examples/s, {peers_benchmark.MONOLITH} vs {peers_benchmark.TORCHREC}, "
                              f"{threads}", ">= 1.1x", f"{speed:.2f}x", speed >= 1.1))
            embedding = ours["embedding_ms"] / theirs["embedding_ms"]
            goals.append(Goal(f"Embedding time per step, {peers_benchmark.MONOLITH} vs {peers_benchmark.TORCHREC}, "
                              f"{threads}", "<= 0.8x",
                              f"{embedding:.2f}x ({ours['embedding_ms']:.1f} vs {theirs['embedding_ms']:.1f} ms)",
                              embedding <= 0.8))
    return goals


def _deepfm_goals(results: list[dict]) -> list[Goal]:
    return [Goal(f"Training examples/s, DeepFM on {'MovieLens-100K' if r['dataset'] == 'movielens' else 'Frappe-sized'}"
                 " data, monolith's Estimator vs plain PyTorch (median of rounds)", ">= 1.0x",
                 f"{r['ratio']:.2f}x", r["ratio"] >= 1.0) for r in results]


def _cli_goals(results: list[dict]) -> list[Goal]:
    median = results[0]["median_s"]
    help_s, torch_s = median[cli_benchmark.HELP], median[cli_benchmark.TORCH]
    return [Goal("`monolith --help` answers (a fresh process, median)", "< 0.5 s",
                 f"{help_s:.2f} s ({help_s / torch_s:.2f}x `python -c 'import torch'`, {torch_s:.2f} s)",
                 help_s < 0.5)]


def _growth_goals(results: list[dict]) -> list[Goal]:
    goals = []
    for r in results:
        first, last = r["points"][0], r["points"][-1]
        ratio = last["examples_per_s"] / first["examples_per_s"]
        goals.append(Goal(f"Training examples/s flat as the tables grow ({first['ids']:,} -> {last['ids']:,} ids)",
                          ">= 0.9x", f"{ratio:.2f}x", ratio >= 0.9))
    return goals


def _input_pipeline_goals(results: list[dict]) -> list[Goal]:
    # Half of the overlap the two stages allow on this machine: prefetch cannot beat the slower of
    # the two while the other runs beside it.
    return [Goal(f"Input prefetch(2) vs reading in turn, {r['step']} (wall time; ideal here "
                 f"{r['ideal_here']:.2f}x, with two free cores {r['ideal']:.2f}x)", ">= half the ideal gain here",
                 f"{r['speedup']:.2f}x", r["speedup"] - 1 >= (r["ideal_here"] - 1) / 2)
            for r in results]


BENCHMARKS: list[Benchmark] = [
    Benchmark(
        "FID map: lookup-or-insert against a Python dict",
        fid_map_benchmark,
        runs=[{"distinct": 1_000_000}, {"distinct": 10_000_000}],
        quick_runs=[{"distinct": 100_000, "stream": 2_000_000, "dict_sample": 200_000}],
        goals=_fid_map_goals,
        figures=fid_map_benchmark.figures,
    ),
    Benchmark(
        "Fused lookup + sparse Adagrad update against torch EmbeddingBag",
        fused_update_benchmark,
        runs=[{}],
        quick_runs=[{"batch": 512, "baseline_rows": 1 << 16, "distinct": 100_000, "warmup": 3, "steps": 10}],
        goals=_fused_goals,
        figures=fused_update_benchmark.figures,
    ),
    Benchmark(
        "Synchronous training: 1 vs 2 processes (torchrun, gloo)",
        distributed_benchmark,
        runs=[{}],
        quick_runs=[{"rounds": 1, "steps": 5, "batch_size": 512}],
        goals=_distributed_goals,
        figures=distributed_benchmark.figures,
    ),
    Benchmark(
        "Serving: HTTP predict throughput and latency, dynamic batching, large requests",
        serving_benchmark,
        runs=[{}],
        quick_runs=[{"duration_s": 3, "batch_sizes": (8,), "batching_rounds": 1, "fids_per_table": 10_000,
                     "large_fid_bytes": 1 << 20, "large_examples": 2_000}],
        goals=_serving_goals,
        figures=serving_benchmark.figures,
    ),
    Benchmark(
        "Real-time freshness: broker -> trainer -> parameter sync -> server",
        freshness_benchmark,
        runs=[{"sync_interval_s": 1.0, "measurements": 10}],
        quick_runs=[{"sync_interval_s": 1.0, "measurements": 2}],
        goals=_freshness_goals,
    ),
    Benchmark(
        "Online training vs batch-only through the live loop (the Monolith paper's Table 2)",
        online_benchmark,
        runs=[{}],
        quick_runs=[{"shard_counts": (10,), "seeds": (0,)}],
        goals=_online_goals,
        figures=online_benchmark.figures,
    ),
    Benchmark(
        "Training side by side: monolith, plain PyTorch and TorchRec on a Criteo-like workload",
        peers_benchmark,
        runs=[{}, {"torch_threads": 2, "eviction_intervals": ()}],
        quick_runs=[{"steps": 10, "warmup": 3, "batch": 512, "rows": 1 << 14, "vocab": 100_000, "hidden": (64, 32)}],
        goals=_peers_goals,
        figures=peers_benchmark.figures,
    ),
    Benchmark(
        "Training speed on small real-data DeepFMs: monolith's Estimator against plain PyTorch",
        deepfm_benchmark,
        runs=[{"dataset": "movielens"}, {"dataset": "frappe"}],
        quick_runs=[{"dataset": "movielens", "rounds": 1}],
        goals=_deepfm_goals,
    ),
    Benchmark(
        "Growth: examples/s and memory from 1M to 50M distinct ids",
        growth_benchmark,
        runs=[{}],
        quick_runs=[{"sizes": (100_000, 1_000_000), "steps": 5, "warmup": 2, "batch": 512, "vocab": 100_000,
                     "hidden": (64, 32)}],
        goals=_growth_goals,
        figures=growth_benchmark.figures,
    ),
    Benchmark(
        "Input pipeline: prefetch overlapping reading with training",
        input_pipeline_benchmark,
        runs=[{}, {"device_step_ms": 100}],
        quick_runs=[{"examples": 5_000, "repeats": 1}, {"examples": 5_000, "repeats": 1, "device_step_ms": 100}],
        goals=_input_pipeline_goals,
    ),
    Benchmark(
        "Model quality on real data: DeepFM, monolith against hashed plain PyTorch",
        quality_benchmark,
        runs=[{"dataset": name} for name in ("movielens", "adult")],
        quick_runs=[{"dataset": "movielens", "seeds": (0,), "epochs": 1, "evals": 2, "thresholds": (1,),
                     "expire_times": (30,)}],
        goals=lambda results: [],
        figures=quality_benchmark.figures,
    ),
    Benchmark(
        "The monolith command: start-up of --help and argument errors",
        cli_benchmark,
        runs=[{}],
        quick_runs=[{"repeats": 2}],
        goals=_cli_goals,
        figures=cli_benchmark.figures,
    ),
]


def machine() -> str:
    """One line: cores, CPU model, memory, library versions and the load when the run began."""
    model = "unknown CPU"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{len(os.sched_getaffinity(0))} cores (nproc), {model}, {memory_gib:.0f} GiB; Python "
        f"{platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}, numba {numba.__version__}; "
        f"load average {os.getloadavg()[0]:.1f} at start (a shared machine: figures move with other work on it)"
    )


def _about(module: ModuleType) -> str:
    # A module docstring's first paragraph says what it measures.
    return inspect.getdoc(module).split("\n\n")[0].replace("\n", " ")


def run_all(quick: bool) -> str:
    """Runs every benchmark (small sizes when ``quick``); returns the results document as markdown."""
    header = machine()
    sections, goals = [], []
    for bench in BENCHMARKS:
        print(f"running {bench.title} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        results = [bench.module.run(**kwargs) for kwargs in (bench.quick_runs if quick else bench.runs)]
        print(f"  done in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
        section = f"## {bench.title}\n\n{_about(bench.module)}\n\n{bench.module.report(results)}"
        if bench.figures is not None and not quick:  # a quick run only prints
            section += "\n\n" + plots.draw_all(bench.figures(results), RESULTS.parent)
        sections.append(section)
        goals.extend(bench.goals(results))
    goal_lines = ["| goal | target | measured | result |", "| --- | --- | --- | --- |"]
    goal_lines += [f"| {g.name} | {g.target} | {g.measured} | {'PASS' if g.passed else 'FAIL'} |" for g in goals]
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = "`.venv/bin/python -m benchmarks --quick`" if quick else "`make bench` (`.venv/bin/python -m benchmarks`)"
    intro = [
        "# Benchmark results" + (" (quick sizes)" if quick else ""),
        "",
        f"Made by {command} on {now}.",
        "",
        f"Machine: {header}.",
        "",
        "## Goals",
        "",
        *goal_lines,
    ]
    return "\n".join(intro) + "\n\n" + "\n\n".join(sections) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Command line: runs the benchmarks, prints the document and, unless ``--quick``, writes RESULTS.md."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes; print only, RESULTS.md is left alone")
    args = parser.parse_args(argv)
    document = run_all(args.quick)
    print(document)
    if not args.quick:
        with atomic_write(RESULTS, "w") as f:
            f.write(document)
        print(f"wrote {RESULTS}", file=sys.stderr)


if __name__ == "__main__":
    main()
