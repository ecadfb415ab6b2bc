"""Examples/s of 1 and 2 training processes on the same synthetic Criteo-like workload.

Each process trains batches of ``batch_size`` (so 2 processes train twice the examples per step);
the figure is examples/s of all processes together, timed over the steps after warm-up (start-up
and the checkpoint that ends training are not counted). Bytes sent per step and rank count the
embedding all_to_all traffic (ids, rows, gradients) and the dense all-reduce payload. Processes
that train alone at the same time show the most any synchronous run could reach on the machine;
the same processes held at a barrier after every step (still no communication) show what lock-step
alone costs there: ranks wait for the slowest at every step, and their identical phases meet in the
shared caches and memory bus at the same moments.

    python -m benchmarks.distributed_benchmark          # every configuration, prints the table
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from datetime import timedelta

import torch.distributed as dist

from benchmarks.plots import Bars
from monolith.model import TrainingHook

_WARMUP = 5
SYNCHRONOUS, INDEPENDENT, LOCKSTEP = "synchronous", "independent", "independent, one barrier per step"
_LOCKSTEP_ENV = "MONOLITH_BENCH_LOCKSTEP"  # "port,rank,world" of a lock-step process


class _StepClock(TrainingHook):
    """The time, and the embedding bytes sent so far, at the end of every training step."""

    def __init__(self, model) -> None:
        self.model = model
        self.times: list[float] = []
        self.bytes_sent: list[int] = []

    def after_step(self, step, batch, output) -> None:
        self.times.append(time.perf_counter())
        self.bytes_sent.append(sum(getattr(m, "bytes_sent", 0) for m in self.model.ctx.tables.values()))


class _Lockstep(TrainingHook):
    """Holds independent processes at a barrier (a key-value store, no process group) after every step."""

    def __init__(self, port: int, rank: int, world: int) -> None:
        self.rank, self.world = rank, world
        self.store = dist.TCPStore("127.0.0.1", port, world, is_master=rank == 0, timeout=timedelta(seconds=300))

    def after_step(self, step, batch, output) -> None:
        self.store.set(f"{step}/{self.rank}", "")
        self.store.wait([f"{step}/{r}" for r in range(self.world)])


def worker(out_file: str, steps: int, batch_size: int, hidden: str) -> None:
    """One training process (run directly, or by torchrun): writes its timing as JSON.

    The timed span runs from the end of the last warm-up step to the end of the last step: the
    steps themselves, not start-up or the checkpoint that closes ``train``.
    """
    from benchmarks.criteo_model import CriteoModel
    from monolith.estimator import Estimator, RunConfig

    model = CriteoModel(hidden=tuple(int(h) for h in hidden.split(",")), batch_size=batch_size,
                        num_batches=steps + _WARMUP)
    # Every rank writes its checkpoint shards into the same model_dir.
    estimator = Estimator(model, RunConfig(model_dir=os.path.join(os.path.dirname(out_file), "model"),
                                           log_step_count_steps=10**9, enable_summaries=False, progress_bar=False))
    clock = _StepClock(model)
    hooks: list[TrainingHook] = [clock]
    if os.environ.get(_LOCKSTEP_ENV):
        hooks.append(_Lockstep(*(int(v) for v in os.environ[_LOCKSTEP_ENV].split(","))))
    estimator.train(max_steps=_WARMUP + steps, hooks=hooks)
    elapsed = clock.times[-1] - clock.times[_WARMUP - 1]
    sparse_bytes = clock.bytes_sent[-1] - clock.bytes_sent[_WARMUP - 1]
    world = estimator.dist.world_size if estimator.dist is not None else 1
    dense_bytes = sum(p.numel() * 4 for p in model.parameters()) if world > 1 else 0
    with open(out_file, "w") as f:
        json.dump({"examples_per_sec": steps * batch_size / elapsed,
                   "bytes_per_step": sparse_bytes / steps + dense_bytes}, f)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(processes: int, threads: int, kind: str, steps: int, batch_size: int, hidden: str) -> dict[str, float]:
    """One timed run of ``processes`` processes of ``threads`` threads each: one :data:`SYNCHRONOUS` job
    (torchrun for more than one), or processes that each train alone at the same time
    (:data:`INDEPENDENT`), or alone but held at a barrier after every step (:data:`LOCKSTEP`)."""
    with tempfile.TemporaryDirectory() as out:
        module = ["-m", "benchmarks.distributed_benchmark"]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        if processes > 1 and kind == SYNCHRONOUS:
            launches = [(out, [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
                               "--master_addr=127.0.0.1", f"--master_port={_free_port()}", *module], env)]
        else:  # each in its own folder: its own checkpoints
            barrier_port = _free_port() if kind == LOCKSTEP else None
            launches = [(os.path.join(out, str(i)), [sys.executable, *module],
                         env if barrier_port is None else {**env, _LOCKSTEP_ENV: f"{barrier_port},{i},{processes}"})
                        for i in range(processes)]
        jobs = []
        for folder, command, job_env in launches:
            os.makedirs(folder, exist_ok=True)
            # stderr to a file, not a pipe: a pipe nobody reads while the others run could stall a process.
            with open(os.path.join(folder, "stderr.txt"), "w") as stderr:
                jobs.append(subprocess.Popen(command + ["worker", folder, str(steps), str(batch_size), hidden],
                                             env=job_env, stdout=subprocess.DEVNULL, stderr=stderr))
        for job, (folder, command, _) in zip(jobs, launches):
            if job.wait():
                with open(os.path.join(folder, "stderr.txt")) as stderr:
                    raise RuntimeError(f"{' '.join(command)} failed ({job.returncode}):\n{stderr.read()[-3000:]}")
        ranks = [json.load(open(os.path.join(folder, name))) for folder, _, names in os.walk(out)
                 for name in names if name.startswith("rank-") and name.endswith(".json")]
    return {"examples_per_sec": sum(r["examples_per_sec"] for r in ranks),
            "bytes_per_step": sum(r["bytes_per_step"] for r in ranks) / len(ranks)}


def run(rounds: int = 5, steps: int = 30, batch_size: int = 4096, hidden: str = "512,256") -> dict:
    """Examples/s of one process on every core, one process on one core, one process per core training
    on its own (no communication: what the machine gives that many processes at once, the ceiling of
    synchronous training), the same held at a barrier after every step (what lock-step alone costs),
    and one process per core training synchronously.

    The configurations take turns for ``rounds`` rounds and each reports its median, so a burst of
    other work on a shared machine does not decide the comparison.
    """
    cores = os.cpu_count() or 1
    configs = [(1, cores, SYNCHRONOUS), (1, 1, SYNCHRONOUS), (cores, 1, INDEPENDENT), (cores, 1, LOCKSTEP),
               (cores, 1, SYNCHRONOUS)]
    runs: dict[tuple[int, int, str], list[dict[str, float]]] = {c: [] for c in configs}
    for _ in range(rounds):
        for config in configs:
            runs[config].append(_train(*config, steps, batch_size, hidden))
    rows = []
    for (processes, threads, kind), results in runs.items():
        results = sorted(results, key=lambda r: r["examples_per_sec"])
        median = results[len(results) // 2]
        rows.append({"processes": processes, "threads": threads, "kind": kind, **median,
                     "all": [round(r["examples_per_sec"]) for r in results]})
    return {"rounds": rounds, "steps": steps, "batch_size": batch_size, "rows": rows}


def report(results: list[dict]) -> str:
    """Markdown table of :func:`run` results, with speed-ups over one process on one core and on every core."""
    r = results[0]
    every_core, one_core = (r["rows"][0]["examples_per_sec"], r["rows"][1]["examples_per_sec"])
    lines = [f"Each process trains batches of {r['batch_size']:,} for {_WARMUP} warm-up and {r['steps']} timed steps "
             "(timed from the end of the warm-up to the end of the last step: start-up and the checkpoint that "
             "ends training are not counted); the configurations "
             f"take turns for {r['rounds']} rounds and each row is the median round (all rounds in brackets). "
             "Scaling is measured against one process on one core; one process whose torch threads use every core "
             "is shown beside it. Independent processes train alone at the same time, without communicating: "
             "what the machine gives that many processes at once (shared caches, memory bandwidth, clock), the "
             "ceiling of synchronous training on it. Held at a barrier after every step, they show what "
             "lock-step alone costs there (waiting for the slowest, identical phases contending at the same moments).",
             "",
             "| processes x torch threads | examples/s (all processes) | vs 1 process on 1 core | "
             "vs 1 process on every core | bytes sent per step and rank | rounds (examples/s) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for row in r["rows"]:
        lines.append(f"| {_label(row)} | {row['examples_per_sec']:,.0f} | "
                     f"{row['examples_per_sec'] / one_core:.2f}x | {row['examples_per_sec'] / every_core:.2f}x | "
                     f"{row['bytes_per_step'] / 1e6:.2f} MB | {', '.join(f'{v:,}' for v in row['all'])} |")
    return "\n".join(lines)


def figures(results: list[dict]) -> list[Bars]:
    """Examples/s of every configuration (median round)."""
    rows = results[0]["rows"]
    return [Bars("distributed", "Training processes x torch threads: examples/s of all processes", "examples/s",
                 [_label(row) for row in rows], {"examples/s": [row["examples_per_sec"] for row in rows]})]


def _label(row: dict) -> str:
    return f"{row['processes']} x {row['threads']}" + (f", {row['kind']}" if row["kind"] != SYNCHRONOUS else "")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        rank = os.environ.get("RANK", "0")
        worker(os.path.join(sys.argv[2], f"rank-{rank}.json"), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
    else:
        print(report([run()]))
