"""Examples/s of 1 and 2 training processes on the same synthetic Criteo-like workload.

Each process trains batches of ``batch_size`` (so 2 processes train twice the examples per step);
the figure is examples/s of all processes together, timed after warm-up steps. Bytes sent per step
and rank count the embedding all_to_all traffic (ids, rows, gradients) and the dense all-reduce
payload.

    python -m benchmarks.distributed_benchmark          # both runs, prints the table
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import torch

_WARMUP = 5


def worker(out_file: str, steps: int, batch_size: int, hidden: str) -> None:
    """One training process (run directly, or by torchrun): writes its timing as JSON."""
    from benchmarks.criteo_model import CriteoModel
    from monolith.distributed import ShardedHashEmbedding
    from monolith.estimator import Estimator, RunConfig

    model = CriteoModel(hidden=tuple(int(h) for h in hidden.split(",")), batch_size=batch_size,
                        num_batches=steps + _WARMUP)
    # Every rank writes its checkpoint shards into the same model_dir.
    estimator = Estimator(model, RunConfig(model_dir=os.path.join(os.path.dirname(out_file), "model"),
                                           log_step_count_steps=10**9, enable_summaries=False, progress_bar=False))
    estimator.train(max_steps=_WARMUP)
    sent_before = sum(getattr(m, "bytes_sent", 0) for m in model.ctx.tables.values())
    start = time.perf_counter()
    estimator.train(max_steps=_WARMUP + steps)
    elapsed = time.perf_counter() - start
    world = estimator.dist.world_size if estimator.dist is not None else 1
    sparse_bytes = sum(m.bytes_sent for m in model.ctx.tables.values() if isinstance(m, ShardedHashEmbedding))
    dense_bytes = sum(p.numel() * 4 for p in model.parameters()) if world > 1 else 0
    with open(out_file, "w") as f:
        json.dump({"examples_per_sec": steps * batch_size / elapsed,
                   "bytes_per_step": (sparse_bytes - sent_before) / steps + dense_bytes}, f)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(processes: int, steps: int = 30, batch_size: int = 4096, hidden: str = "512,256") -> dict[str, float]:
    """Trains with ``processes`` processes (torchrun for more than one); returns the measurements."""
    with tempfile.TemporaryDirectory() as out:
        args = ["worker", out, str(steps), str(batch_size), hidden]
        script = [sys.executable, "-m", "benchmarks.distributed_benchmark"]
        if processes > 1:
            script = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
                      "--master_addr=127.0.0.1", f"--master_port={_free_port()}", "-m",
                      "benchmarks.distributed_benchmark"]
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, os.cpu_count() // processes))}
        subprocess.run(script + args, check=True, env=env, capture_output=True)
        ranks = [json.load(open(os.path.join(out, name))) for name in sorted(os.listdir(out)) if name.endswith(".json")]
    return {"processes": processes, "examples_per_sec": sum(r["examples_per_sec"] for r in ranks) / len(ranks)
            * len(ranks), "bytes_per_step": sum(r["bytes_per_step"] for r in ranks) / len(ranks)}


def report(results: list[dict[str, float]]) -> str:
    """Markdown table of :func:`run` results, with the speed-up over one process."""
    base = results[0]["examples_per_sec"]
    lines = ["| processes | examples/s (all processes) | speed-up | bytes sent per step and rank |",
             "| --- | --- | --- | --- |"]
    for r in results:
        lines.append(f"| {r['processes']} | {r['examples_per_sec']:,.0f} | {r['examples_per_sec'] / base:.2f}x | "
                     f"{r['bytes_per_step'] / 1e6:.2f} MB |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        rank = os.environ.get("RANK", "0")
        worker(os.path.join(sys.argv[2], f"rank-{rank}.json"), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
    else:
        torch.set_num_threads(os.cpu_count())
        print(report([run(1), run(2)]))
