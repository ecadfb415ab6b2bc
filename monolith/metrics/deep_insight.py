"""Deep-insight example sampling: one JSON line per sampled example (Monolith's file metrics).

Each line is the deep-insight message Monolith's ``write_deep_insight`` builds for an example (its
``MonolithWriteDeepInsightV2`` kernel, one message for all heads), keys sorted as its JSON library
writes them::

    {"extra_float": {"ctr": 0.5}, "extra_int": {"gid": 7}, "label": {"ctr_head": 1.0},
     "model_name": "ranker", "predict": {"ctr_head": 0.73}, "req_time": 1700000000,
     "sample_rate": {"ctr_head": 1.0}, "training_time": 1700000123, "uid": 42}

``label``, ``predict`` and ``sample_rate`` map each head to its value; ``training_time`` is when the
step ran (seconds); the ``extra_fields_keys`` features go under ``extra_int`` / ``extra_float`` by
dtype (Monolith also has ``extra_str``; tensors hold no strings), each present only when it has a
field, and ``uid`` among them is the message's ``uid`` rather than an extra, as in Monolith.

As Monolith's ``write_deep_insight``: without a ``req_time`` feature nothing is written ("Disabling
deep_insight because req_time is absent" is logged); an ``extra_fields_keys`` name that is not a
feature raises ``KeyError``. Unlike Monolith, which needs them, a batch without ``uid`` is sampled at
random and written with uid 0, and one without ``sample_rate`` is written with 1.0.

Examples are sampled by their uid, so the same user is sampled in every run.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import IO, Sequence

import numpy as np
import torch

from monolith.model import ModelOutput, TrainingHook
from monolith.sparse import Batch

logger = logging.getLogger(__name__)

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
#: The model name written when ``metrics.deep_insight_name`` is not set, as Monolith's
#: ``model_name or "model_name"`` (native_model) and its file hook's key function.
DEFAULT_MODEL_NAME = "model_name"


def sample_mask(uids: np.ndarray | None, n: int, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """Which of ``n`` examples are sampled at ``ratio``: by uid hash when uids are given."""
    if uids is None:
        return rng.random(n) < ratio
    hashed = (uids.astype(np.uint64) * _GOLDEN) >> np.uint64(11)
    return hashed.astype(np.float64) / float(1 << 53) < ratio


def _dense_column(batch: Batch, name: str) -> np.ndarray | None:
    value = batch.dense.get(name)
    if value is None and name in batch.sparse.keys():
        jagged = batch.sparse[name]
        firsts = torch.zeros(batch.batch_size, dtype=jagged.values().dtype)
        has = jagged.lengths() > 0
        firsts[has] = jagged.values()[jagged.offsets()[:-1][has]]
        value = firsts
    return None if value is None else value.detach().cpu().reshape(batch.batch_size, -1)[:, 0].numpy()


class FileMetricHook(TrainingHook):
    """Writes sampled examples of every step to
    ``{base_dir}/{dump_filename or model_name}.part-{worker:05d}.{file_ext}``.

    Files land under ``base_dir``; a relative one is taken from the working directory when the hook
    is built. The Estimator gives it ``metrics.file_base_name`` inside ``model_dir`` when relative
    (default: ``MODEL_DIR/deep_insight``; Monolith's default is the cluster mount
    ``/vepfs/jaguar_deepinsight_results``).
    The file is created at the first line written, so a run that writes none leaves none.

    Args:
        base_dir: directory of the files (``metrics.file_base_name``).
        model_name: written in every line (``metrics.deep_insight_name``); None or empty gives
            ``"model_name"``, as in Monolith.
        sample_ratio: fraction of examples written (``metrics.deep_insight_sample_ratio``).
        dump_filename: file name stem (default: the model name).
        file_ext: file extension.
        extra_fields_keys: features written under ``extra_int`` / ``extra_float``.
        worker_index: this worker's index.
        seed: seed of the random sampling of batches without ``uid``.
    """

    metric_sink = "file"

    def __init__(self, base_dir: str, model_name: str | None, sample_ratio: float, dump_filename: str = "",
                 file_ext: str = "txt", extra_fields_keys: Sequence[str] = (), worker_index: int = 0,
                 seed: int = 0) -> None:
        if not 0.0 < sample_ratio <= 1.0:
            raise ValueError(f"deep_insight_sample_ratio must be in (0, 1], got {sample_ratio}")
        self.model_name = model_name or DEFAULT_MODEL_NAME
        self.sample_ratio = sample_ratio
        self.extra_fields_keys = list(extra_fields_keys)
        self.path = os.path.abspath(os.path.join(
            base_dir, f"{dump_filename or self.model_name}.part-{worker_index:05d}.{file_ext}"))
        self._rng = np.random.default_rng(seed)
        self._file: IO[str] | None = None
        self._disabled = False

    def begin(self, estimator: object) -> None:
        logger.info("File metrics of model %s go to %s", self.model_name, self.path)

    def after_step(self, step: int, batch: Batch, output: ModelOutput) -> None:
        if self._disabled or output.labels is None:
            return
        req_time = _dense_column(batch, "req_time")
        if req_time is None:
            # Monolith decides this once, when building the graph, and writes nothing for the run.
            logger.info("Disabling deep_insight because req_time is absent")
            self._disabled = True
            return
        missing = [key for key in self.extra_fields_keys if key not in batch]
        if missing:
            raise KeyError(f"metrics.extra_fields_keys {missing} are not features of the batch "
                           f"(features: {batch.keys()})")
        n = batch.batch_size
        uids = _dense_column(batch, "uid")
        keep = np.flatnonzero(sample_mask(uids, n, self.sample_ratio, self._rng))
        heads = [(head, label, pred) for head, label, pred in zip(output.head_names, output.labels, output.preds)
                 if label is not None]
        if keep.size == 0 or not heads:
            return
        sample_rate = _dense_column(batch, "sample_rate")
        columns = {head: (label.detach().cpu().reshape(n, -1)[:, 0].numpy(),
                          pred.detach().cpu().reshape(n, -1)[:, 0].numpy()) for head, label, pred in heads}
        extras = {key: _dense_column(batch, key) for key in self.extra_fields_keys if key != "uid"}
        training_time = int(time.time())
        lines = []
        for i in keep.tolist():
            rate = float(sample_rate[i]) if sample_rate is not None else 1.0
            record = {
                "model_name": self.model_name, "uid": int(uids[i]) if uids is not None else 0,
                "req_time": int(req_time[i]), "training_time": training_time,
                "label": {head: float(labels[i]) for head, (labels, _) in columns.items()},
                "predict": {head: float(preds[i]) for head, (_, preds) in columns.items()},
                "sample_rate": {head: rate for head in columns},
            }
            for key, values in extras.items():
                # By dtype, as Monolith's Float/Int64ExtraField; other widths are widened, not dropped.
                if values.dtype.kind == "f":
                    record.setdefault("extra_float", {})[key] = float(values[i])
                else:
                    record.setdefault("extra_int", {})[key] = int(values[i])
            lines.append(json.dumps(record, sort_keys=True))
        if self._file is None:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            self._file = open(self.path, "a")
        self._file.write("\n".join(lines) + "\n")

    def end(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
