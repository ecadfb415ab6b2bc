"""Deep-insight example sampling: one JSON line per sampled example and head (Monolith's file metrics).

Each line holds ``model_name``, ``target`` (the head), ``label``, ``pred``, ``req_time``, ``uid``,
``sample_rate`` and the ``extra_fields_keys`` features. Examples are sampled by their uid, so the
same user is sampled in every run (random sampling where the batch has no ``uid``).
"""

from __future__ import annotations

import json
import os
from typing import IO, Sequence

import numpy as np
import torch

from monolith.model import ModelOutput, TrainingHook
from monolith.sparse import Batch

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


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
    """Writes sampled examples of every step to ``{base}/{name}.part-{worker:05d}.{ext}``.

    Args:
        base_dir: directory of the files (``metrics.file_base_name``).
        model_name: written in every line (``metrics.deep_insight_name`` or the model name).
        sample_ratio: fraction of examples written (``metrics.deep_insight_sample_ratio``).
        dump_filename: file name stem (default ``model_name``).
        file_ext: file extension.
        extra_fields_keys: features written as extra fields.
        worker_index: this worker's index.
    """

    metric_sink = "file"

    def __init__(self, base_dir: str, model_name: str, sample_ratio: float, dump_filename: str = "",
                 file_ext: str = "txt", extra_fields_keys: Sequence[str] = (), worker_index: int = 0,
                 seed: int = 0) -> None:
        if not 0.0 < sample_ratio <= 1.0:
            raise ValueError(f"deep_insight_sample_ratio must be in (0, 1], got {sample_ratio}")
        self.model_name = model_name
        self.sample_ratio = sample_ratio
        self.extra_fields_keys = list(extra_fields_keys)
        self.path = os.path.join(base_dir, f"{dump_filename or model_name}.part-{worker_index:05d}.{file_ext}")
        self._rng = np.random.default_rng(seed)
        self._file: IO[str] | None = None

    def begin(self, estimator: object) -> None:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        self._file = open(self.path, "a")

    def after_step(self, step: int, batch: Batch, output: ModelOutput) -> None:
        if self._file is None or output.labels is None:
            return
        n = batch.batch_size
        uids = _dense_column(batch, "uid")
        keep = np.flatnonzero(sample_mask(uids, n, self.sample_ratio, self._rng))
        if keep.size == 0:
            return
        req_time = _dense_column(batch, "req_time")
        sample_rate = _dense_column(batch, "sample_rate")
        extras = {key: _dense_column(batch, key) for key in self.extra_fields_keys}
        lines = []
        for head, label, pred in zip(output.head_names, output.labels, output.preds):
            if label is None:
                continue
            labels = label.detach().cpu().reshape(n, -1)[:, 0].numpy()
            preds = pred.detach().cpu().reshape(n, -1)[:, 0].numpy()
            for i in keep.tolist():
                record = {
                    "model_name": self.model_name, "target": head, "label": float(labels[i]),
                    "pred": float(preds[i]),
                    "req_time": int(req_time[i]) if req_time is not None else 0,
                    "uid": int(uids[i]) if uids is not None else 0,
                    "sample_rate": float(sample_rate[i]) if sample_rate is not None else 1.0,
                    "global_step": step,
                    **{k: (v[i].item() if v is not None else None) for k, v in extras.items()},
                }
                lines.append(json.dumps(record))
        self._file.write("\n".join(lines) + "\n")

    def end(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
