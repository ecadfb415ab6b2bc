"""Training examples/s and memory side by side: this project, plain PyTorch and TorchRec on one Criteo-like workload.

The workload: 26 sparse slots and 13 dense features, embedding dim 16, batch 4,096, an MLP 512-256-1 over
the concatenated embeddings and dense features, summed sigmoid cross-entropy, Adagrad (lr 0.01) on the
embeddings and Adam (lr 1e-3) on the MLP. Batches come from :class:`monolith.data.SyntheticClickLog`: each
slot draws Zipf-skewed ids from a large vocabulary plus a share of brand-new ids (the long tail real click
logs have), so the run sees tens of millions of distinct ids. Every system trains on the same batches for
the same steps:

* monolith: the Estimator with ``CriteoModel``: a collisionless table per slot, occurrence threshold 0,
  ``dedup="sum"`` (one update per distinct id, as torch's coalesced sparse gradients do), in two set-ups:
  tables growing from empty (the default), and tables reserved for as many ids as a hashed table has rows
  (``hashtable_init_capacity=rows``: the memory the hashed tables allocate before training, allocated
  before training too; past that the tables grow as usual);
* plain PyTorch: per slot ``nn.EmbeddingBag(rows, 16, mode="sum", sparse=True)`` over ``fid % rows`` and
  ``torch.optim.Adagrad``;
* TorchRec EBC: ``EmbeddingBagCollection`` over ``fid % rows``, sharded by ``DistributedModelParallel`` on
  one CPU rank, FBGEMM's fused Adagrad applied in the backward pass (TorchRec's training path);
* TorchRec MC-EBC: ``ManagedCollisionEmbeddingBagCollection``, TorchRec's nearest thing to a collisionless
  table: per slot an ``MCHManagedCollisionModule`` (``rows`` slots, DistanceLFU eviction) maps raw FIDs to
  rows in front of the same sharded collection (CPU cannot shard the MC module itself: its sharder is
  row-wise only). It admits new ids every ``eviction_interval`` steps and ids not admitted share one row, so
  it runs twice: admitting every step (each new id gets its own row in the step it first appears, as in a
  collisionless table) and every 10 steps (cheaper, but new ids wait, sharing a row, for up to 9 steps).

No system clips gradients (TorchRec's fused optimizer cannot). Each system runs in its own worker process
(the TorchRec ones in the ``benchmarks/.venv-peers`` venv, which has the same torch) so that each has its
own peak resident memory; the coordinator has them take turns step by step, so load from other work on a
shared machine slows them alike, and each process generates its batches outside the timed step, with one
torch thread. Memory per distinct id is (peak RSS - RSS before the model was built) / distinct ids seen.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.criteo_model import DIM, NUM_DENSE, NUM_SPARSE, CriteoModel, mlp
from benchmarks.plots import Bars
from monolith.data import SyntheticClickLog
from monolith.estimator import Estimator, RunConfig
from monolith.sparse import Batch

MONOLITH = "monolith (collisionless tables)"
MONOLITH_RESERVED = "monolith, tables reserved for {rows:,} ids per slot (hashtable_init_capacity)"
TORCH = "plain PyTorch (hashed EmbeddingBag)"
TORCHREC = "TorchRec EmbeddingBagCollection (hashed)"
#: Name of the managed-collision system admitting new ids every ``interval`` steps.
TORCHREC_MC = "TorchRec ManagedCollisionEmbeddingBagCollection, admitting new ids every {interval} step(s)"
ROOT = Path(__file__).resolve().parent.parent
PEERS_PYTHON = ROOT / "benchmarks" / ".venv-peers" / "bin" / "python"
LEARNING_RATE = 0.01
KEYS = [f"C{i}" for i in range(1, NUM_SPARSE + 1)]


def click_log(config: dict) -> SyntheticClickLog:
    """The endless synthetic stream of a run's ``config`` (batch ``i`` depends only on seed and ``i``)."""
    return SyntheticClickLog(NUM_SPARSE, NUM_DENSE, vocab_sizes=config["vocab"], zipf_a=config["zipf_a"],
                             new_id_rate=config["new_id_rate"], batch_size=config["batch"], num_batches=None,
                             seed=config["seed"])


def current_rss() -> int:
    """Resident bytes of this process now."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    """Most resident bytes this process has had: VmHWM, which starts afresh at exec (ru_maxrss would carry
    the high-water mark of the parent that started the process)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/self/status has no VmHWM")


def monolith_estimator(config: dict, first: Batch, model_dir: str) -> Estimator:
    """The Estimator of this project's system, built on ``first`` (tables reserved for
    ``config["initial_capacity"]`` ids each, when given)."""
    model = CriteoModel(hidden=tuple(config["hidden"]), batch_size=config["batch"], seed=config["seed"])
    model.p.clip_norm = None
    estimator = Estimator(model, RunConfig(model_dir=model_dir, enable_summaries=False, progress_bar=False,
                                           dedup="sum", seed=config["seed"],
                                           hashtable_init_capacity=config.get("initial_capacity", 0)))
    estimator.build(first)
    return estimator


class _Monolith:
    def __init__(self, config: dict, first: Batch) -> None:
        self._dir = tempfile.TemporaryDirectory()
        self.estimator = monolith_estimator(config, first, self._dir.name)
        self.rows = config["rows"]

    def step(self, batch: Batch) -> None:
        self.estimator.train_step(batch)

    def summary(self) -> dict:
        """Distinct ids seen (threshold 0: every id owns a row) and how many would share a hashed row."""
        distinct = shared = 0
        for module in self.estimator.model.ctx.tables.values():
            keys, _ = module.table.items()
            _, counts = np.unique(keys % self.rows, return_counts=True)
            distinct += keys.size
            shared += int(counts[counts > 1].sum())
        return {"distinct": distinct, "shared_fraction": shared / max(distinct, 1)}


class _DenseTower:
    """The MLP and its Adam shared by the baselines: the same layers and initial weights as CriteoModel's."""

    def __init__(self, config: dict) -> None:
        torch.manual_seed(config["seed"])
        self.mlp = mlp([NUM_SPARSE * DIM + NUM_DENSE, *config["hidden"], 1])
        self.optimizer = torch.optim.Adam(self.mlp.parameters(), lr=1e-3)

    def loss(self, embeddings: torch.Tensor, batch: Batch) -> torch.Tensor:
        logits = self.mlp(torch.cat([embeddings, batch.dense["dense"]], dim=1)).reshape(-1)
        return F.binary_cross_entropy_with_logits(logits, batch.dense["label"], reduction="sum")


class _Torch:
    def __init__(self, config: dict, first: Batch) -> None:
        self.rows = config["rows"]
        self.tower = _DenseTower(config)
        self.bags = [torch.nn.EmbeddingBag(self.rows, DIM, mode="sum", sparse=True) for _ in KEYS]
        with torch.no_grad():
            for bag in self.bags:
                bag.weight.uniform_(-0.05, 0.05)  # CriteoModel's initializer
        self.optimizer = torch.optim.Adagrad([b.weight for b in self.bags], lr=LEARNING_RATE,
                                             initial_accumulator_value=1.0, eps=0.0)
        # Adagrad builds sparse tensors from valid indices; opting out of the check silences torch's warning.
        torch.sparse.check_sparse_tensor_invariants.disable()

    def step(self, batch: Batch) -> None:
        pooled = []
        for key, bag in zip(KEYS, self.bags):
            jagged = batch.sparse[key]
            pooled.append(bag(jagged.values() % self.rows, jagged.offsets()[:-1]))
        loss = self.tower.loss(torch.cat(pooled, dim=1), batch)
        self.tower.optimizer.zero_grad(set_to_none=True)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.tower.optimizer.step()
        self.optimizer.step()

    def summary(self) -> dict:
        return {}


class _TorchRec:
    managed = False

    def __init__(self, config: dict, first: Batch) -> None:
        # Imported here: only the peers venv has TorchRec.
        import torch.distributed as dist
        from torchrec import EmbeddingBagCollection, EmbeddingBagConfig
        from torchrec.distributed import DistributedModelParallel
        from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
        from torchrec.distributed.types import ShardingEnv
        from torchrec.modules.mc_embedding_modules import ManagedCollisionEmbeddingBagCollection
        from torchrec.modules.mc_modules import (DistanceLFU_EvictionPolicy, ManagedCollisionCollection,
                                                 MCHManagedCollisionModule)
        from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
        from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

        self._kjt = KeyedJaggedTensor
        self.rows = config["rows"]
        self._store = tempfile.NamedTemporaryFile()
        dist.init_process_group("gloo", store=dist.FileStore(self._store.name, 1), rank=0, world_size=1)
        tables = [EmbeddingBagConfig(name=f"t_{key}", embedding_dim=DIM, num_embeddings=self.rows,
                                     feature_names=[key]) for key in KEYS]
        # On the meta device: DistributedModelParallel allocates the sharded tables itself.
        module = EmbeddingBagCollection(tables=tables, device=torch.device("meta"))
        apply_optimizer_in_backward(torch.optim.Adagrad, module.parameters(), {"lr": LEARNING_RATE})
        if self.managed:
            remappers = {t.name: MCHManagedCollisionModule(
                zch_size=self.rows, device=torch.device("cpu"), eviction_policy=DistanceLFU_EvictionPolicy(),
                eviction_interval=config["eviction_interval"]) for t in tables}
            module = ManagedCollisionEmbeddingBagCollection(
                module, ManagedCollisionCollection(remappers, embedding_configs=tables))
        self.embeddings = DistributedModelParallel(module, device=torch.device("cpu"),
                                                   env=ShardingEnv.from_process_group(dist.group.WORLD),
                                                   sharders=[EmbeddingBagCollectionSharder()])
        self.tower = _DenseTower(config)

    def step(self, batch: Batch) -> None:
        values = batch.sparse.values()
        features = self._kjt(keys=KEYS, values=values if self.managed else values % self.rows,
                             lengths=batch.sparse.lengths())
        pooled = self.embeddings(features)
        if self.managed:
            pooled = pooled[0]  # (embeddings, remapped features)
        loss = self.tower.loss(pooled.values(), batch)
        self.tower.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # the tables' Adagrad runs inside
        self.tower.optimizer.step()

    def summary(self) -> dict:
        return {}


class _TorchRecManaged(_TorchRec):
    managed = True


SYSTEMS = {"monolith": _Monolith, "torch": _Torch, "torchrec": _TorchRec, "torchrec-mc": _TorchRecManaged}


def _serve(kind: str, config: dict) -> None:
    """Worker: builds a system of ``kind``, then times one step per index read from stdin until "done"."""
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # what libraries print must not mix with the replies
    torch.set_num_threads(config["torch_threads"])
    log = click_log(config)
    first = log.batch(0)
    before = current_rss()
    system = SYSTEMS[kind](config, first)
    replies.write("ready\n")
    for line in sys.stdin:
        if line.strip() == "done":
            break
        batch = log.batch(int(line))
        start = time.perf_counter()
        system.step(batch)
        replies.write(f"{time.perf_counter() - start}\n")
    peak = peak_rss()  # before summary(), whose scratch arrays are no part of training
    replies.write(json.dumps({"rss_before": before, "peak_rss": peak, **system.summary()}) + "\n")


class _Worker:
    """A worker process of one system, driven line by line."""

    def __init__(self, name: str, kind: str, python: str, config: dict) -> None:
        self.name = name
        self._stderr = tempfile.TemporaryFile()
        env = {**os.environ, "OMP_NUM_THREADS": str(config["torch_threads"])}
        self._proc = subprocess.Popen([python, "-m", "benchmarks.peers_benchmark", "worker", kind, json.dumps(config)],
                                      cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=self._stderr, text=True)
        self.reply_to("")  # waits for "ready"

    def reply_to(self, line: str) -> str:
        if line:
            self._proc.stdin.write(line + "\n")
            self._proc.stdin.flush()
        reply = self._proc.stdout.readline()
        if not reply:
            self._proc.wait()
            self._stderr.seek(0)
            tail = self._stderr.read().decode(errors="replace")[-3000:]
            raise RuntimeError(f"the {self.name} worker stopped (exit {self._proc.returncode}):\n{tail}")
        return reply

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        self._stderr.close()


def peers_available() -> str | None:
    """Why the TorchRec systems cannot run (no peers venv), or None when they can."""
    if not PEERS_PYTHON.exists():
        return ("TorchRec skipped: the peers venv benchmarks/.venv-peers is absent (`make bench-peers` creates it "
                "with benchmarks/setup_peers.sh)")
    return None


def run(steps: int = 240, warmup: int = 10, batch: int = 4096, rows: int = 1 << 19, vocab: int = 10_000_000,
        zipf_a: float = 1.05, new_id_rate: float = 0.6, hidden: tuple[int, ...] = (512, 256),
        eviction_intervals: tuple[int, ...] = (1, 10), torch_threads: int = 1, seed: int = 0) -> dict:
    """Trains every available system ``warmup`` untimed + ``steps`` timed steps in turns; returns the
    configuration and, per system, examples/s, peak RSS and memory per distinct id."""
    config = dict(batch=batch, rows=rows, vocab=vocab, zipf_a=zipf_a, new_id_rate=new_id_rate, hidden=list(hidden),
                  torch_threads=torch_threads, seed=seed)
    skipped = peers_available()
    # name -> (kind, python, the kind's own settings)
    plan = {MONOLITH: ("monolith", sys.executable, {}),
            MONOLITH_RESERVED.format(rows=rows): ("monolith", sys.executable, {"initial_capacity": rows}),
            TORCH: ("torch", sys.executable, {})}
    if skipped is None:
        plan[TORCHREC] = ("torchrec", str(PEERS_PYTHON), {})
        for interval in eviction_intervals:
            plan[TORCHREC_MC.format(interval=interval)] = ("torchrec-mc", str(PEERS_PYTHON),
                                                           {"eviction_interval": interval})
    else:
        print(f"  {skipped}", file=sys.stderr)
    workers: list[_Worker] = []
    try:
        for name, (kind, python, extra) in plan.items():
            workers.append(_Worker(name, kind, python, {**config, **extra}))
        seconds = dict.fromkeys(plan, 0.0)
        started = time.perf_counter()
        for i in range(warmup + steps):
            for worker in workers:
                elapsed = float(worker.reply_to(str(i)))
                if i >= warmup:
                    seconds[worker.name] += elapsed
        wall = time.perf_counter() - started
        summaries = {w.name: json.loads(w.reply_to("done")) for w in workers}
    finally:
        for worker in workers:
            worker.close()
    distinct = summaries[MONOLITH]["distinct"]
    systems = {}
    for name, s in summaries.items():
        systems[name] = {
            "venv": Path(plan[name][1]).parent.parent.name,
            "examples_per_s": steps * batch / seconds[name],
            "peak_rss": s["peak_rss"],
            "bytes_per_id": (s["peak_rss"] - s["rss_before"]) / distinct,
        }
    return {**config, "eviction_intervals": list(eviction_intervals), "steps": steps, "warmup": warmup,
            "distinct": distinct, "wall_s": wall,
            "shared_fraction": summaries[MONOLITH]["shared_fraction"], "skipped": skipped, "systems": systems}


def report(results: list[dict]) -> str:
    """Markdown: per :func:`run` result, its configuration and one row per system with the ratios."""
    parts = []
    for r in results:
        ours = r["systems"][MONOLITH]
        reserved = r["systems"][MONOLITH_RESERVED.format(rows=r["rows"])]
        lines = [
            f"{NUM_SPARSE} slots (one id each) + {NUM_DENSE} dense features, dim {DIM}, batch {r['batch']:,}, MLP "
            f"{'-'.join(map(str, [*r['hidden'], 1]))}; ids Zipf({r['zipf_a']}) over {r['vocab']:,} per slot plus "
            f"{r['new_id_rate']:.0%} brand-new ids; {r['warmup']} warm-up + {r['steps']} timed steps in turns "
            f"({r['wall_s']:.0f} s in all), one torch thread per process. {r['distinct']:,} distinct ids seen. "
            f"Hashed tables: {r['rows']:,} rows per slot, where {r['shared_fraction']:.0%} of the distinct ids "
            f"share their row with another id; the MC modules hold {r['rows']:,} ids per slot.",
            "",
            "| system | venv | examples/s | monolith's speed vs it | reserved monolith's speed vs it | peak RSS | "
            "bytes per distinct id | monolith's memory vs it |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name, s in r["systems"].items():
            lines.append(
                f"| {name} | {s['venv']} | {s['examples_per_s']:,.0f} | "
                f"{ours['examples_per_s'] / s['examples_per_s']:.2f}x | "
                f"{reserved['examples_per_s'] / s['examples_per_s']:.2f}x | {s['peak_rss'] / 2**30:.2f} GiB | "
                f"{s['bytes_per_id']:.0f} | {ours['bytes_per_id'] / s['bytes_per_id']:.2f}x |"
            )
        if r["skipped"]:
            lines += ["", f"{r['skipped']}."]
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def figures(results: list[dict]) -> list[Bars]:
    """Examples/s and bytes per distinct id of every system."""
    r = results[0]
    names = list(r["systems"])
    return [Bars("peers_speed", "Training examples/s on the Criteo-like workload", "examples/s", names,
                 {"examples/s": [r["systems"][n]["examples_per_s"] for n in names]}),
            Bars("peers_memory", "Peak memory per distinct id seen", "bytes per distinct id (peak RSS)", names,
                 {"bytes per id": [r["systems"][n]["bytes_per_id"] for n in names]})]


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "worker":
        _serve(sys.argv[2], json.loads(sys.argv[3]))
    else:
        print(report([run()]))
