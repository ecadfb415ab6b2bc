"""Monolith's serving-side float compressors (``runtime/hash_table/compressor/float_compressor.cc``)."""

from __future__ import annotations

import numpy as np

from monolith.optim.base import Compressor, check_real


def _rows_of(encoded: np.ndarray, dim: int, owner: str) -> None:
    if encoded.ndim != 2 or encoded.shape[1] != dim:
        raise ValueError(f"{owner}: encoded rows must have shape [n, {dim}], got {encoded.shape}")


class Fp32Compressor(Compressor):
    """Stores rows unchanged as float32."""

    def encode(self, rows: np.ndarray) -> np.ndarray:
        return np.array(rows, dtype=np.float32)

    def decode(self, encoded: np.ndarray, dim: int) -> np.ndarray:
        _rows_of(encoded, dim, type(self).__name__)
        return np.array(encoded, dtype=np.float32)


class Fp16Compressor(Compressor):
    """Stores rows as IEEE half floats, rounded to nearest-even (overflow becomes infinity), like
    ``half_float::half`` with its default rounding in Monolith."""

    def encode(self, rows: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):  # overflow to infinity is the intended encoding
            return np.asarray(rows, dtype=np.float32).astype(np.float16)

    def decode(self, encoded: np.ndarray, dim: int) -> np.ndarray:
        _rows_of(encoded, dim, type(self).__name__)
        return encoded.astype(np.float32)


class FixedR8Compressor(Compressor):
    """Fixed-range int8 quantisation (Monolith's ``FakeQuantizer``): ``step = r / 128``; a value is
    moved half a step away from zero, divided by ``step``, truncated toward zero and clamped to
    ``[-128, 127]``; NaN encodes as 0. Decoding is ``q * step``. ``fixed_range`` is stored as ``r``.

    Deviation from Monolith: values whose step count overflows a C ``int`` (e.g. +1e30 or +inf) clamp to
    127 here; Monolith's undefined float-to-int conversion sends positive ones to -128, i.e. ``-r``.
    """

    def __init__(self, fixed_range: float = 1.0) -> None:
        self.r = check_real(type(self).__name__, "fixed_range", fixed_range, low=0.0, low_open=True)
        self._step = np.float32(self.r) / np.float32(128)
        self._half_step = self._step / np.float32(2)

    def encode(self, rows: np.ndarray) -> np.ndarray:
        values = np.asarray(rows, dtype=np.float32)
        shifted = np.where(values >= 0, values + self._half_step, values - self._half_step)
        # Clamp before the int cast so out-of-range values saturate instead of wrapping.
        steps = np.clip(np.trunc(shifted / self._step), -128, 127)
        return np.nan_to_num(steps, nan=0.0).astype(np.int8)

    def decode(self, encoded: np.ndarray, dim: int) -> np.ndarray:
        _rows_of(encoded, dim, type(self).__name__)
        return encoded.astype(np.float32) * self._step
