"""Prediction / evaluation output files (Monolith's ``_get_file_ops``).

One file per worker, ``{output_path}/part-{worker:05d}``; one line per example: the
``output_fields`` features in their order, then the predictions (a dict's heads sorted by key, a
list's in order), joined by ``delimiter``. ``[n, 1]`` tensors are squeezed to one value per line;
wider tensors and jagged features print as ``[a b c]``; floats print as TensorFlow prints them.
"""

from __future__ import annotations

import os
from typing import IO, Any, Callable, Sequence

import numpy as np
import torch

from monolith.sparse import Batch, JaggedTensor


def _formatter(dtype: np.dtype) -> Callable[[Any], str]:
    """How TensorFlow prints one element: floats with the fewest of 6 or 9 significant digits
    (15 or 17 for doubles) that read back as the same value, as ``tf.strings.format`` does."""
    if dtype == np.float64:
        short, full, exact = "%.15g", "%.17g", float
    elif np.issubdtype(dtype, np.floating):
        short, full, exact = "%.6g", "%.9g", np.float32
    else:
        return str

    def format_float(value: float) -> str:
        text = short % value
        return text if exact(text) == exact(value) or value != value else full % value

    return format_float


def _columns(value: Any, n: int, name: str) -> list[str]:
    """One formatted string per example."""
    if isinstance(value, JaggedTensor):
        return ["[" + " ".join(str(v) for v in row) + "]" for row in value.to_lists()]
    array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    if array.ndim > 1 and array.shape[-1] == 1:
        array = array.reshape(array.shape[:-1])
    if array.shape[:1] != (n,):
        raise ValueError(f"output field '{name}' has shape {list(array.shape)}, expected first dim {n}")
    text = _formatter(array.dtype)
    if array.ndim == 1:
        return [text(v) for v in array.tolist()]
    return ["[" + " ".join(text(v) for v in row.reshape(-1).tolist()) + "]" for row in array]


def ordered_predictions(pred: Any) -> list[tuple[str, Any]]:
    """``(name, tensor)`` of the predictions in file order: a dict by sorted key, a list in order."""
    if isinstance(pred, dict):
        return sorted(pred.items())
    if isinstance(pred, (list, tuple)):
        return [(f"pred_{i}", p) for i, p in enumerate(pred)]
    return [("pred", pred)]


class PredictionWriter:
    """Writes ``output_fields`` and predictions of each batch to ``{output_path}/part-{worker:05d}``.

    Args:
        output_path: directory of the output files.
        output_fields: comma-separated feature names written before the predictions (may be empty).
        delimiter: field delimiter.
        worker_index: this worker's index (the file suffix).
    """

    def __init__(self, output_path: str, output_fields: str | Sequence[str] | None, delimiter: str = "\t",
                 worker_index: int = 0) -> None:
        if isinstance(output_fields, str):
            output_fields = [f.strip() for f in output_fields.split(",") if f.strip()]
        self.fields = list(output_fields or [])
        self.delimiter = delimiter
        self.path = os.path.join(output_path, f"part-{worker_index:05d}")
        os.makedirs(output_path, exist_ok=True)
        self._file: IO[str] = open(self.path, "w")

    def write(self, batch: Batch, pred: Any) -> None:
        """Appends one line per example of ``batch``."""
        n = batch.batch_size
        columns = []
        for field in self.fields:
            if field not in batch:
                raise KeyError(f"output field '{field}' is not a feature of the batch; features: {batch.keys()}")
            columns.append(_columns(batch[field], n, field))
        columns += [_columns(value, n, name) for name, value in ordered_predictions(pred)]
        self._file.write("".join(self.delimiter.join(row) + "\n" for row in zip(*columns)))

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "PredictionWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
