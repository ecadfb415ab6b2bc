"""Does the live loop beat a model trained once? DeepFM on time-ordered MovieLens-100K, batch-trained
on the first 5/7 of the time span, then served while a separate trainer process learns the rest from
a Kafka stream in N = 10 / 50 / 100 shards: serving's AUC on each shard before it is trained, online
against the batch model never updated.

The paper (arXiv 2209.07663, Section 4.3, Table 2, Algorithm 1) batch-trains on Criteo's first 5 days,
cuts the last 2 days into N shards and, for each shard in time order, refreshes serving's parameters
from the trainer, scores the shard with serving, then trains on it. Here the data is MovieLens-100K
in time order (label rating >= 4; ``monolith.data.movielens``): the first 5/7 of its time span is
batch-trained, the rest cut into N shards of equal time. The model is ``monolith.demo.DeepFM`` with
its own params. No package here ships another time-ordered public data set.

Every part is the real one, each in its own process: a Kafka-compatible broker (``LocalKafkaBroker``),
the trainer (``monolith train --model monolith.demo:DeepFM --stream kafka://... --serving-url ...``,
resumed from the batch phase's checkpoint) and the server (``monolith serve`` of the batch phase's
export). Each shard is scored over HTTP (``/v1/predict``), then produced to the topic; the next shard
is scored once ``/v1/health`` reports the trainer's push of the step that trained the shard's last
event (its stream offset). Only the trainer's pushes change what is served. The trainer pushes after
every step, the embedding rows and the dense weights together (``--sync-every-steps 1
--dense-sync-interval 0``), so that serving holds exactly the trainer's parameters at each shard's
start, as in Algorithm 1. Batch-only is the same served export, scored before any push.

AUC is reported pooled over every online example, and averaged over the shards (the paper's figure;
shards whose examples all have one label are left out of the average), over several seeds (the
seed of the initial weights; the data order is time's).

    python -m benchmarks.online_benchmark
"""

from __future__ import annotations

import contextlib
import os
import resource
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import numpy as np
import torch

from benchmarks.freshness_benchmark import _free_port, _healthy, _wait
from benchmarks.peers_benchmark import ROOT
from benchmarks.plots import Curves
from monolith.checkpoint import CheckpointManager
from monolith.data import load_movielens100k
from monolith.demo import FEATURES, DeepFM, auc
from monolith.estimator import Estimator, RunConfig
from monolith.serving.auth import TOKEN_ENV
from monolith.streaming import LocalKafkaBroker, encode_example

MODEL = "monolith.demo:DeepFM"
ONLINE, BATCH = "online", "batch-only"
#: The paper's split: 5 days batch-trained, 2 days online.
BATCH_SPAN = 5 / 7
_DAY = 86400.0


class Timeline:
    """MovieLens-100K in time order: the batch period's batches, and each online example's FIDs."""

    def __init__(self, batch_size: int) -> None:
        whole = next(iter(load_movielens100k(train_fraction=1.0, batch_size=10**6).train))
        times = whole.dense["req_time"].numpy()
        self.cut = int(np.searchsorted(times, times[0] + BATCH_SPAN * (times[-1] - times[0]), side="right"))
        split = load_movielens100k(train_fraction=(self.cut + 0.5) / len(times), batch_size=batch_size)
        if split.train.num_examples != self.cut:
            raise AssertionError(f"batch period of {split.train.num_examples} examples, expected {self.cut}")
        self.batches = split.train
        self.times = times[self.cut:]
        self.labels = whole.dense["label"].numpy()[self.cut:]
        per_feature = {}
        for name in FEATURES:
            values, offsets = whole.sparse[name].values().tolist(), whole.sparse[name].offsets().tolist()
            per_feature[name] = [values[offsets[i]:offsets[i + 1]] for i in range(self.cut, len(times))]
        self.examples = [{name: per_feature[name][i] for name in FEATURES} for i in range(len(self.labels))]

    def shards(self, count: int) -> list[tuple[int, int]]:
        """``count`` slices of the online examples, of equal time each (an empty one is kept: its
        interval passes with nothing to train)."""
        edges = np.linspace(self.times[0], self.times[-1], count + 1)[1:-1]
        bounds = [0, *np.searchsorted(self.times, edges, side="right").tolist(), len(self.times)]
        return list(zip(bounds[:-1], bounds[1:]))


@contextlib.contextmanager
def _process(args: list[str], log: Path, env: dict[str, str]) -> Iterator[subprocess.Popen]:
    """A child process (stderr and stdout to ``log``), ended with SIGTERM (then killed) on leaving."""
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "monolith", *args], env=env, stdout=out,
                                   stderr=subprocess.STDOUT)
        try:
            yield process
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _score(client: httpx.Client, examples: Sequence[dict[str, list[int]]]) -> np.ndarray:
    """Serving's predictions of ``examples`` over HTTP."""
    body = {"sparse": {name: [e[name] for e in examples] for name in FEATURES}}
    answer = client.post("/v1/predict", json=body)
    answer.raise_for_status()
    return np.asarray(answer.json()["outputs"]["ctr"], dtype=np.float64)


def _trained_to(client: httpx.Client, topic: str) -> int:
    """The stream offset of partition 0 that serving's parameters were trained to (-1: none yet)."""
    stream = client.get("/v1/health").json()["stream"]
    return -1 if stream is None or stream["topic"] != topic else int(stream["offsets"].get("0", -1))


def _batch_phase(timeline: Timeline, seed: int, model_dir: str, export_dir: str) -> str:
    """Trains DeepFM on the batch period (its ``epochs`` passes) and exports it; returns the checkpoint."""
    estimator = Estimator(DeepFM.params(), RunConfig(model_dir=model_dir, seed=seed, log_step_count_steps=10**9,
                                                     enable_summaries=False, progress_bar=False))
    epochs = estimator.model.p.epochs
    estimator.train(input_fn=lambda mode: (b for _ in range(epochs) for b in timeline.batches))
    estimator.export_saved_model(export_dir)
    return CheckpointManager(model_dir).latest()


def _online_run(timeline: Timeline, shards: list[tuple[int, int]], seed: int, checkpoint: str, export: str,
                broker: LocalKafkaBroker, work: Path, env: dict[str, str], timeout_s: float,
                batch_scores: np.ndarray | None) -> np.ndarray:
    """Algorithm 1 with a fresh server of the batch export and a trainer resumed from the batch
    checkpoint; returns serving's score of every online example. With ``batch_scores`` (an array of
    the online examples' size) it is first filled with the scores of the batch-only model."""
    from confluent_kafka import Producer

    name = f"n{len(shards)}-seed{seed}"
    topic = f"ratings-{name}"
    broker.create_topic(topic)
    model_dir = work / f"trainer-{name}"
    CheckpointManager(str(model_dir)).copy_from(checkpoint)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    scores = np.zeros(len(timeline.examples))
    producer = Producer({"bootstrap.servers": broker.bootstrap_servers, "linger.ms": 0})
    serve = ["serve", "--model", export, "--port", str(port), "--log-level", "warning"]
    train = ["train", "--model", MODEL, "--model-dir", str(model_dir), "--seed", str(seed), "--threads", "1",
             "--stream", f"kafka://{broker.bootstrap_servers}/{topic}", "--stream-group", name,
             "--serving-url", url, "--sync-interval", "3600", "--dense-sync-interval", "0", "--sync-every-steps", "1"]
    # Both start at once (their start-up is most of a run's time): the trainer pushes nothing before
    # it trains, and it trains nothing before the first shard is produced, after the batch-only scores.
    with (_process(serve, work / f"serve-{name}.log", env),
          _process(train, work / f"train-{name}.log", env) as trainer,
          httpx.Client(base_url=url, timeout=60) as client):
        _wait(lambda: _healthy(url), timeout_s, "the server")
        if batch_scores is not None:
            batch_scores[:] = _score(client, timeline.examples)
        for lo, hi in shards:
            if hi == lo:
                continue
            scores[lo:hi] = _score(client, timeline.examples[lo:hi])
            for i in range(lo, hi):
                producer.produce(topic, value=encode_example(timeline.examples[i], float(timeline.labels[i]),
                                                             req_time=int(timeline.times[i])))
            if producer.flush(30):
                raise RuntimeError(f"the broker did not take shard {lo}:{hi}")
            deadline = time.monotonic() + timeout_s
            while _trained_to(client, topic) < hi:
                if trainer.poll() is not None or time.monotonic() > deadline:
                    log = (work / f"train-{name}.log").read_text()[-2000:]
                    raise RuntimeError(f"the trainer did not train and push up to offset {hi} "
                                       f"(exit status {trainer.poll()}); its log ends:\n{log}")
                time.sleep(0.05)
    return scores


def _shard_aucs(labels: np.ndarray, scores: np.ndarray, shards: list[tuple[int, int]]) -> list[float | None]:
    """Each shard's AUC (None where its examples all have one label)."""
    return [auc(labels[lo:hi], scores[lo:hi]) if 0 < labels[lo:hi].sum() < hi - lo else None for lo, hi in shards]


def _learned_online_share(timeline: Timeline, shards: list[tuple[int, int]], batch_users: set[int]) -> float:
    """The share of online examples whose user the batch period never saw but an earlier shard did:
    where only the online model knows the user when it scores."""
    earlier: set[int] = set()
    count = 0
    for lo, hi in shards:
        users = [e["uid"][0] for e in timeline.examples[lo:hi]]
        count += sum(u in earlier and u not in batch_users for u in users)
        earlier.update(users)
    return count / len(timeline.examples)


def _cpu_s() -> float:
    """CPU seconds of this process and of its ended children (trainers, servers, the broker)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run(shard_counts: tuple[int, ...] = (10, 50, 100), seeds: tuple[int, ...] = (0, 1, 2),
        timeout_s: float = 120.0) -> dict:
    """Runs the experiment for every shard count and seed; returns per shard count and system the
    pooled and shard-averaged AUC of each seed, the per-shard AUCs, and the setup."""
    started, cpu_started, load = time.perf_counter(), _cpu_s(), os.getloadavg()[0]
    timeline = Timeline(DeepFM.params().train.per_replica_batch_size)
    labels = timeline.labels
    results: dict = {"shard_counts": list(shard_counts), "seeds": list(seeds), "batch_examples": timeline.cut,
                     "online_examples": len(labels),
                     "online_days": float(timeline.times[-1] - timeline.times[0]) / _DAY,
                     "by_count": {}}
    seen = set(np.concatenate([b.sparse["uid"].values().numpy() for b in timeline.batches]).tolist())
    results["unseen_user_share"] = float(np.mean([e["uid"][0] not in seen for e in timeline.examples]))
    env = {**os.environ, TOKEN_ENV: secrets.token_hex(16),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with LocalKafkaBroker() as broker, tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            for seed in seeds:
                checkpoint = _batch_phase(timeline, seed, str(work / f"batch-{seed}"), str(work / f"export-{seed}"))
                export = str(work / f"export-{seed}")
                batch_scores = np.zeros(len(labels))
                for k, count in enumerate(shard_counts):
                    shards = timeline.shards(count)
                    scores = _online_run(timeline, shards, seed, checkpoint, export, broker, work, env, timeout_s,
                                         batch_scores if k == 0 else None)
                    entry = results["by_count"].setdefault(count, {
                        "shard_days": results["online_days"] / count,
                        "median_shard_examples": float(np.median([hi - lo for lo, hi in shards])),
                        "median_shard_users": float(np.median([len({e["uid"][0] for e in timeline.examples[lo:hi]})
                                                               for lo, hi in shards])),
                        "learned_online_share": _learned_online_share(timeline, shards, seen),
                        "shard_end_days": [float(timeline.times[hi - 1] - timeline.times[0]) / _DAY if hi > lo
                                           else None for lo, hi in shards],
                        ONLINE: {"pooled": [], "shard_averaged": [], "per_shard": []},
                        BATCH: {"pooled": [], "shard_averaged": [], "per_shard": []}})
                    for system, values in ((ONLINE, scores), (BATCH, batch_scores)):
                        per_shard = _shard_aucs(labels, values, shards)
                        kept = [a for a in per_shard if a is not None]
                        entry[system]["pooled"].append(auc(labels, values))
                        entry[system]["shard_averaged"].append(float(np.mean(kept)))
                        entry[system]["per_shard"].append(per_shard)
                        entry["shards_averaged"] = len(kept)
    finally:
        torch.set_num_threads(previous_threads)
    results["elapsed_s"], results["cpu_s"], results["load_at_start"] = (time.perf_counter() - started,
                                                                         _cpu_s() - cpu_started, load)
    return results


# ------------------------------------------------------------------------------------ the report
def _mean_sd(values: Sequence[float]) -> str:
    """``mean ± sd`` of AUC x 100, as the paper writes it."""
    values = [100 * v for v in values]
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {sd:.2f}"


def report(results: list[dict]) -> str:
    """Markdown: per shard count, pooled and shard-averaged AUC x 100 of online and batch-only."""
    parts = []
    for r in results:
        lines = [
            f"{r['batch_examples']:,} examples batch-trained (first 5/7 of the time span, DeepFM's own 3 passes), "
            f"{r['online_examples']:,} online over {r['online_days']:.1f} days; seeds {r['seeds']}: AUC x 100, "
            f"mean ± standard deviation. Sync: the trainer pushes the changed rows and the dense weights after every "
            f"step (`--sync-every-steps 1 --dense-sync-interval 0`); each shard is scored once serving holds the "
            f"trainer's step that trained the previous shard's last event. "
            f"{100 * r['unseen_user_share']:.0f}% of the online ratings are by users the batch period never saw "
            f"(batch-only serves them an all-zero user row). Whole run {r['elapsed_s']:.0f} s, "
            f"{r['cpu_s']:.0f} CPU-seconds in all its processes (load average {r['load_at_start']:.1f} at its start).",
            "",
            "| shards N | interval | shard-averaged AUC, online | batch-only | gain | pooled AUC, online | batch-only "
            "| gain | seeds online > batch (shard-avg / pooled) | median examples / users per shard "
            "| users known only online |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for count in r["shard_counts"]:
            e = r["by_count"][count]
            on, off = e[ONLINE], e[BATCH]
            gains = {k: [100 * (a - b) for a, b in zip(on[k], off[k])] for k in ("shard_averaged", "pooled")}
            wins = {k: sum(g > 0 for g in gains[k]) for k in gains}
            lines.append(
                f"| {count} | {24 * e['shard_days']:.1f} h | {_mean_sd(on['shard_averaged'])} | "
                f"{_mean_sd(off['shard_averaged'])} | {statistics.mean(gains['shard_averaged']):+.2f} | "
                f"{_mean_sd(on['pooled'])} | {_mean_sd(off['pooled'])} | {statistics.mean(gains['pooled']):+.2f} | "
                f"{wins['shard_averaged']}/{len(r['seeds'])} / {wins['pooled']}/{len(r['seeds'])} | "
                f"{e['median_shard_examples']:.0f} / {e['median_shard_users']:.0f} | "
                f"{100 * e['learned_online_share']:.1f}% |")
        lines += ["", *_verdicts(r)]
        lines += ["", "The paper (Criteo, Table 2), shard-averaged AUC x 100 online vs batch-only: 79.66 vs 79.42 "
                  "(N=10), 79.78 vs 79.44 (N=50), 79.80 vs 79.43 (N=100)."]
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def _verdicts(r: dict) -> list[str]:
    """The paper's expected shape, checked against the data: online above batch-only at every N and
    seed, the mean gain growing as N grows (the interval shrinks)."""
    lines = []
    counts = r["shard_counts"]
    for key, what in (("shard_averaged", "Shard-averaged"), ("pooled", "Pooled")):
        gains = {n: [a - b for a, b in zip(r["by_count"][n][ONLINE][key], r["by_count"][n][BATCH][key])]
                 for n in counts}
        below = [f"N={n} seed {seed}" for n in counts for seed, g in zip(r["seeds"], gains[n]) if g <= 0]
        means = [statistics.mean(gains[n]) for n in counts]
        growing = all(a < b for a, b in zip(means, means[1:]))
        lines.append(f"- {what} AUC: online above batch-only at every N and seed: "
                     f"{'yes' if not below else 'no (not at ' + ', '.join(below) + ')'}; mean gain growing with N "
                     f"({', '.join(f'{100 * m:+.2f}' for m in means)}): {'yes' if growing else 'no'}.")
    lines.append("- Users known only online: the share of online examples whose user the batch period never saw "
                 "but an earlier shard did, the examples where the online model alone has learned the user.")
    return lines


# ------------------------------------------------------------------------------------ the figures
def figures(results: list[dict]) -> list[Curves]:
    """Per shard count, each shard's AUC against time, online and batch-only: the mean over seeds,
    the seeds' range shaded (shards whose AUC is undefined for a seed left out)."""
    drawn = []
    for r in results:
        for count in r["shard_counts"]:
            e = r["by_count"][count]
            keep = [i for i, aucs in enumerate(zip(*e[ONLINE]["per_shard"], *e[BATCH]["per_shard"]))
                    if None not in aucs]
            days = [e["shard_end_days"][i] for i in keep]
            aucs = {system: np.asarray([[seed[i] for i in keep] for seed in e[system]["per_shard"]])
                    for system in (ONLINE, BATCH)}
            drawn.append(Curves(
                f"online_vs_batch_n{count}",
                f"MovieLens-100K, N = {count} shards of {24 * e['shard_days']:.0f} h: AUC per shard "
                f"({len(r['seeds'])} seeds)", "days into the online period (shard end)", "shard AUC",
                {system: (days, a.mean(axis=0).tolist()) for system, a in aucs.items()},
                {system: (a.min(axis=0).tolist(), a.max(axis=0).tolist()) for system, a in aucs.items()}))
    return drawn


if __name__ == "__main__":
    print(report([run()]))
