"""Start-up of the `monolith` command: how long `--help` and an argument error take, against a bare interpreter and `import torch`.

Each command runs as a fresh process (``python -m monolith ...``, what the console script runs), the
commands in turns, ``repeats`` times; the figure of each is its median wall time. ``--help`` and
argument errors import neither torch nor the package's modules: they cost an interpreter start and
argparse, while any command that trains or serves pays for ``import torch`` first.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

from benchmarks.plots import Bars

#: What runs, by name: the interpreter's arguments and the exit status expected.
COMMANDS = {
    "python -c pass (bare interpreter)": (["-c", "pass"], 0),
    "monolith --help": (["-m", "monolith", "--help"], 0),
    "monolith train --help": (["-m", "monolith", "train", "--help"], 0),
    "monolith serve --help": (["-m", "monolith", "serve", "--help"], 0),
    "monolith train (argument error: no --model)": (["-m", "monolith", "train"], 2),
    "python -c 'import torch'": (["-c", "import torch"], 0),
}
HELP = "monolith --help"
BARE = "python -c pass (bare interpreter)"
TORCH = "python -c 'import torch'"


def _seconds(args: list[str], status: int) -> float:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    elapsed = time.perf_counter() - start
    if proc.returncode != status:
        raise RuntimeError(f"{args}: exit status {proc.returncode}, expected {status}")
    return elapsed


def run(repeats: int = 7) -> dict:
    """Median wall seconds of each of :data:`COMMANDS` over ``repeats`` turns (all in brackets)."""
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(repeats):
        for name, (args, status) in COMMANDS.items():
            times[name].append(_seconds(args, status))
    return {"repeats": repeats, "median_s": {n: statistics.median(t) for n, t in times.items()}, "all_s": times}


def report(results: list[dict]) -> str:
    """Markdown table: each command's median seconds, against a bare interpreter and ``import torch``."""
    r = results[0]
    median = r["median_s"]
    lines = [f"Each command {r['repeats']} times in turns, a fresh process each time; median wall time "
             "(all runs in brackets).", "",
             "| command | median s | vs bare interpreter | vs import torch | runs (s) |",
             "| --- | --- | --- | --- | --- |"]
    for name, seconds in median.items():
        lines.append(f"| {name} | {seconds:.3f} | {seconds / median[BARE]:.1f}x | {seconds / median[TORCH]:.2f}x | "
                     f"{', '.join(f'{t:.2f}' for t in r['all_s'][name])} |")
    return "\n".join(lines)


def figures(results: list[dict]) -> list[Bars]:
    """Median seconds of each command."""
    median = results[0]["median_s"]
    return [Bars("cli", "monolith command start-up: median wall time of a fresh process", "seconds",
                 list(median), {"median": list(median.values())})]


if __name__ == "__main__":
    print(report([run()]))
