"""Training speed on small real-data DeepFMs: this project's Estimator against the same network in plain PyTorch.

The model is ``monolith.demo.DeepFM`` (per feature a 1-wide ``bias`` and a 16-wide ``vec`` slice, FM over
the vecs, an MLP 64-32-1; Adagrad on the embeddings, Adam on the MLP, global-norm clipping), trained
through the public API (``Estimator.train`` reading the model's ``input_fn``); the baseline is
``monolith.demo.HashedDeepFM`` trained by ``monolith.demo.BaselineTrainer`` (the steps of ``make run``'s
table), with as many rows per feature as the collisionless tables end with. Both see the same batches
(256 examples) in the same order. Two data sets:

* MovieLens-100K (``make run``'s data): 80,000 training ratings, 6 features (genre multi-hot), one pass
  of 313 steps per round;
* Frappe-sized: a Parquet file shaped like the Frappe app-usage log (288,609 examples, 10 categorical
  fields with Frappe's cardinalities, 5,382 distinct ids; labels from a fixed random logistic model),
  read by :class:`monolith.data.ParquetReader` in ``input_fn``, ``epochs`` passes per round; the
  baseline trains from the same batches decoded once and held in memory, as a plain PyTorch user would
  hold a data set of that size.

Every round trains a fresh model of each system, step by step in turns in one process with one torch
thread (the baseline's step runs inside the input of the Estimator's run, timed apart), so that load
from other work on a shared machine slows both alike; each round's ratio is kept and the median
reported. Monolith's time is the Estimator's whole step (``train_step``, hooks, metrics) plus reading
its batch; the first step of each system (the build pass) is not counted.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from monolith.data import ParquetReader
from monolith.demo import BaselineTrainer, DeepFM, HashedDeepFM, _movielens, distinct_train_ids
from monolith.estimator import Estimator, RunConfig
from monolith.mode_keys import ModeKeys
from monolith.modules.embedding_lookup import HashEmbedding
from monolith.sparse import Batch

#: Frappe's fields and how many distinct values each has (5,382 in all).
FRAPPE_FIELDS = {"user": 957, "item": 4082, "daytime": 7, "weekday": 7, "isweekend": 2, "homework": 3, "cost": 2,
                 "weather": 9, "country": 80, "city": 233}
FRAPPE_EXAMPLES = 288_609
BATCH = 256


def write_frappe_like(path: Path, examples: int = FRAPPE_EXAMPLES, seed: int = 0) -> None:
    """A Parquet file of Frappe's shape: Zipf-skewed values per field, labels from a random logistic model."""
    rng = np.random.default_rng(seed)
    columns, logit = {}, np.zeros(examples)
    for field, size in FRAPPE_FIELDS.items():
        weights = 1.0 / np.arange(1, size + 1) ** 0.8
        values = rng.choice(size, size=examples, p=weights / weights.sum())
        columns[field] = pa.array(values.astype(np.int64))
        logit += rng.normal(0, 0.7, size)[values]
    columns["label"] = pa.array((rng.random(examples) < 1 / (1 + np.exp(-logit))).astype(np.float32))
    pq.write_table(pa.table(columns), path)


class FrappeDeepFM(DeepFM):
    """The demo's DeepFM reading a Frappe-like Parquet file (``data_path``) ``epochs`` times."""

    @classmethod
    def params(cls):
        p = super().params()
        p.features = list(FRAPPE_FIELDS)
        return p

    def input_fn(self, mode: str) -> Iterator[Batch]:
        reader = ParquetReader(self.p.data_path, list(FRAPPE_FIELDS), [], "label", BATCH)
        for _ in range(self.p.epochs if mode == ModeKeys.TRAIN else 1):
            yield from reader


class _Phases:
    """Seconds spent in named phases of the steps, from wrapped calls and module or optimizer hooks."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._started: dict[str, float] = {}

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def wrap(self, name: str, call):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return call(*args, **kwargs)
            finally:
                self.add(name, time.perf_counter() - start)
        return timed

    def start(self, name: str) -> None:
        self._started[name] = time.perf_counter()

    def stop(self, name: str) -> None:
        self.add(name, time.perf_counter() - self._started[name])

    def around_forward(self, name: str, module: torch.nn.Module) -> None:
        module.register_forward_pre_hook(lambda *_: self.start(name))
        module.register_forward_hook(lambda *_: self.stop(name))

    def around_step(self, name: str, optimizer: torch.optim.Optimizer) -> None:
        optimizer.register_step_pre_hook(lambda *_: self.start(name))
        optimizer.register_step_post_hook(lambda *_: self.stop(name))


class _Interleaved:
    """The input of the Estimator's run that also trains the baseline, step by step in turns.

    The generator yields monolith's batches; the Estimator's step on a batch is the time from its yield
    until the Estimator asks for the next one, and reading a batch counts as monolith's too. Between the
    two, the baseline trains one step on its own batch, timed apart. The first step of each (the build
    pass, first allocations) is not counted.
    """

    def __init__(self, baseline: BaselineTrainer, baseline_batches: Iterator[Batch], phases: _Phases | None = None,
                 instrument=lambda: None) -> None:
        self.baseline = baseline
        self.baseline_batches = baseline_batches
        self.monolith_s = self.baseline_s = 0.0
        self.steps = 0
        self.phases = phases
        self.instrument = instrument  # called once monolith's model is built, to time its phases

    def wrap(self, batches: Iterable[Batch]) -> Iterator[Batch]:
        batches = iter(batches)
        yielded = None
        while True:
            resumed = time.perf_counter()
            if yielded is not None and self.steps > 1:
                self.monolith_s += resumed - yielded  # the Estimator's step on the batch yielded last
            start = time.perf_counter()
            theirs = next(self.baseline_batches, None)
            if theirs is not None:
                self.baseline.step(theirs)
            baseline_s = time.perf_counter() - start
            start = time.perf_counter()
            ours = next(batches, None)
            read_s = time.perf_counter() - start
            if ours is None:
                return
            self.steps += 1
            if self.steps > 1:
                self.baseline_s += baseline_s
                self.monolith_s += read_s
                if self.phases is not None:
                    self.phases.add("monolith: reading the batch", read_s)
            elif self.phases is not None:
                self.phases.seconds.clear()  # the first steps are not counted
            if self.steps == 2:
                self.instrument()
            yielded = time.perf_counter()
            yield ours


def _round(p, baseline_batches: Iterator[Batch], rows: dict[str, int], seed: int,
           phases: _Phases | None = None) -> tuple[float, float, float, float]:
    """Examples/s of monolith and of the baseline, trained in turns on one pass each, and their seconds in all
    (with ``phases``, the time of each phase of their steps is added there)."""
    torch.manual_seed(seed)
    model = p.instantiate()
    torch.manual_seed(seed)
    lookup_pooled_together = HashEmbedding.lookup_pooled_together
    baseline = BaselineTrainer(HashedDeepFM(rows, p.vec_dim, p.hidden_units, features=p.features), p)
    with tempfile.TemporaryDirectory() as model_dir:
        estimator = Estimator(model, RunConfig(model_dir=model_dir, seed=seed, log_step_count_steps=1 << 30,
                                               progress_bar=False, enable_summaries=False))
        instrument = lambda: None  # noqa: E731
        if phases is not None:
            phases.around_forward("plain PyTorch: forward", baseline.model)
            phases.around_step("plain PyTorch: dense update (Adam)", baseline.dense_opt)
            phases.around_step("plain PyTorch: sparse update (Adagrad)", baseline.sparse_opt)

            def instrument() -> None:
                # Instance attributes in front of the methods the Estimator calls.
                estimator.train_step = phases.wrap("monolith: train_step", estimator.train_step)
                model.model_fn = phases.wrap("monolith: model_fn (forward, lookups included)", model.model_fn)
                model.ctx.apply_gradients = phases.wrap("monolith: sparse update (tables)", model.ctx.apply_gradients)
                for module in model.ctx.tables.values():
                    phases.around_forward("monolith: table lookups", module)
                # Features looked up together do not call their modules: their lookups are timed here.
                HashEmbedding.lookup_pooled_together = staticmethod(phases.wrap("monolith: table lookups",
                                                                                lookup_pooled_together))

        turns = _Interleaved(baseline, baseline_batches, phases, instrument)
        try:
            estimator.train(input_fn=lambda mode: turns.wrap(model.input_fn(mode)))
        finally:
            HashEmbedding.lookup_pooled_together = staticmethod(lookup_pooled_together)
    examples = (turns.steps - 1) * BATCH
    return examples / turns.monolith_s, examples / turns.baseline_s, turns.monolith_s, turns.baseline_s


def run(dataset: str = "movielens", rounds: int = 5, epochs: int = 1, seed: int = 0,
        frappe_examples: int = FRAPPE_EXAMPLES) -> dict:
    """Trains both systems ``rounds`` times, step by step in turns; returns examples/s per round and ratios."""
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as scratch:
        if dataset == "movielens":
            p = DeepFM.params()
            data = _movielens(None, BATCH).train
            train = list(data)
            baseline_batches = lambda: (b for _ in range(epochs) for b in data)  # noqa: E731 - read as make run does
        elif dataset == "frappe":
            p = FrappeDeepFM.params()
            p.data_path = str(Path(scratch) / "frappe.parquet")
            write_frappe_like(Path(p.data_path), frappe_examples, seed)
            train = list(ParquetReader(p.data_path, list(FRAPPE_FIELDS), [], "label", BATCH))
            baseline_batches = lambda: (b for _ in range(epochs) for b in train)  # noqa: E731 - decoded once
        else:
            raise ValueError(f"dataset must be 'movielens' or 'frappe', got {dataset!r}")
        p.epochs = epochs
        p.train.per_replica_batch_size = BATCH
        rows = distinct_train_ids(train, p.features)
        ours, theirs = [], []
        for _ in range(rounds):
            a, b, _, _ = _round(p, baseline_batches(), rows, seed)
            ours.append(a)
            theirs.append(b)
        # One more round with every phase timed (hooks and wrappers cost a little, so not in the ratios).
        phases = _Phases()
        _, _, monolith_s, baseline_s = _round(p, baseline_batches(), rows, seed, phases)
    steps = epochs * len(train) - 1
    ms = {name: seconds / steps * 1e3 for name, seconds in phases.seconds.items()}
    ms["monolith: step"] = monolith_s / steps * 1e3
    ms["plain PyTorch: step"] = baseline_s / steps * 1e3
    ratios = [a / b for a, b in zip(ours, theirs)]
    return {"dataset": dataset, "rounds": rounds, "epochs": epochs, "steps": epochs * len(train),
            "examples": sum(b.batch_size for b in train), "features": len(p.features), "distinct": sum(rows.values()),
            "monolith": ours, "baseline": theirs, "ratios": ratios, "ratio": statistics.median(ratios),
            "phases_ms": _phase_table(ms)}


def _phase_table(ms: dict[str, float]) -> dict[str, float]:
    """Milliseconds per step of each phase, the remainders named: what the timed parts leave of a step."""
    rest = dict(ms)
    train_step = rest.pop("monolith: train_step")
    rest["monolith: forward outside the table lookups"] = (rest.pop("monolith: model_fn (forward, lookups included)")
                                                           - rest["monolith: table lookups"])
    rest["monolith: backward, clipping, dense update (Adam)"] = (
        train_step - rest["monolith: forward outside the table lookups"] - rest["monolith: table lookups"]
        - rest["monolith: sparse update (tables)"])
    rest["monolith: Estimator loop (metrics, hooks)"] = (rest["monolith: step"] - train_step
                                                         - rest["monolith: reading the batch"])
    rest["plain PyTorch: backward, clipping"] = (rest["plain PyTorch: step"] - rest["plain PyTorch: forward"]
                                                 - rest["plain PyTorch: dense update (Adam)"]
                                                 - rest["plain PyTorch: sparse update (Adagrad)"])
    return dict(sorted(rest.items()))


def report(results: list[dict]) -> str:
    """Markdown: one row per data set, the median ratio and every round."""
    lines = ["| data | steps per round | monolith examples/s (median) | plain PyTorch examples/s (median) | "
             "monolith vs plain PyTorch (median) | ratio of each round |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in results:
        name = "MovieLens-100K" if r["dataset"] == "movielens" else "Frappe-sized Parquet"
        lines.append(f"| {name} ({r['examples']:,} examples, {r['features']} features, {r['distinct']:,} ids) | "
                     f"{r['steps']:,} | {statistics.median(r['monolith']):,.0f} | "
                     f"{statistics.median(r['baseline']):,.0f} | {r['ratio']:.2f}x | "
                     f"{', '.join(f'{x:.2f}' for x in r['ratios'])} |")
    for r in results:
        name = "MovieLens-100K" if r["dataset"] == "movielens" else "Frappe-sized Parquet"
        lines += ["", f"Where a step's time goes, {name} (ms per step, one more round with every phase timed):", "",
                  "| phase | ms per step |", "| --- | --- |"]
        lines += [f"| {phase} | {ms:.3f} |" for phase, ms in r["phases_ms"].items()]
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    print(report([run(dataset=name) for name in (sys.argv[1:] or ["movielens", "frappe"])]))
