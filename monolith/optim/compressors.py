"""Monolith's serving-side float compressors (``runtime/hash_table/compressor/float_compressor.cc``)
and the HashNet quantizer behind its one-bit compressor (``hash_net_quantizer.h``)."""

from __future__ import annotations

import numpy as np

from monolith.optim.base import Compressor, check_int, check_real


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


def _fused_multiply_add(a, b, c):
    """``a * b + c`` of float32 values as an FMA rounds it: the float64 product of two float32 is exact, and
    so is the float64 sum for ``1 - y * y``; for ``1 + 0.005 * step`` it can round, which differs from
    one rounding only where the result is an exact float32 tie."""
    return (np.float64(a) * np.float64(b) + np.float64(c)).astype(np.float32)


class HashNetQuantizer:
    """Monolith's ``HashNetQuantizer`` (``compressor/hash_net_quantizer.h``): the smooth sign
    ``amplitude * tanh(scale * w)`` of HashNet (Cao et al. 2017), in float32.

    :meth:`backward` scales gradients by the derivative ``amplitude * scale * (1 - tanh(scale * w)^2)``;
    at every global step that is a multiple of ``step_size`` it first sets
    ``scale = min(init_scale * (1 + 0.005 * step) ** 0.5, max_scale)``, so the function sharpens
    towards ``amplitude * sign(w)`` as training goes on. ``scale`` starts at ``init_scale``.

    ``1 - y * y`` and ``1 + 0.005 * step`` are rounded once, as the fused multiply-add of Monolith's
    build computes them: its test vectors show it, and near ``|y| = 1`` the difference is not small
    (``1 - y * y`` cancels, so rounding ``y * y`` first moves the gradient by ~5e-5 relative).
    """

    GAMMA = np.float32(0.005)
    POWER = np.float32(0.5)

    def __init__(
        self, step_size: int = 200, amplitude: float = 0.1, init_scale: float = 1.0, max_scale: float = 10000.0
    ) -> None:
        owner = type(self).__name__
        self.step_size = check_int(owner, "step_size", step_size, low=1)
        self.amplitude = check_real(owner, "amplitude", amplitude, low=0.0, low_open=True)
        self.init_scale = check_real(owner, "init_scale", init_scale, low=0.0, low_open=True)
        self.max_scale = check_real(owner, "max_scale", max_scale, low=0.0, low_open=True)
        self.scale = np.float32(self.init_scale)

    def forward(self, values: np.ndarray) -> np.ndarray:
        """``amplitude * tanh(scale * values)``, float32."""
        values = np.asarray(values, dtype=np.float32)
        return np.float32(self.amplitude) * np.tanh(self.scale * values)

    def backward(self, values: np.ndarray, grads: np.ndarray, global_step: int) -> np.ndarray:
        """``grads`` (of :meth:`forward`'s output at ``values``) scaled to gradients of ``values``."""
        step = check_int(type(self).__name__, "global_step", global_step, low=0)
        if step % self.step_size == 0:
            base = _fused_multiply_add(self.GAMMA, np.float32(step), np.float32(1.0))
            grown = np.float32(self.init_scale) * np.power(base, self.POWER, dtype=np.float32)
            self.scale = min(grown, np.float32(self.max_scale))
        y = np.tanh(self.scale * np.asarray(values, dtype=np.float32))
        factor = np.float32(self.amplitude) * self.scale * _fused_multiply_add(-y, y, np.float32(1.0))
        return np.asarray(grads, dtype=np.float32) * factor


class OneBitCompressor(Compressor):
    """One bit per value for serving (Monolith's ``OneBitFloatCompressor``, HashNet): a value encodes as
    +1 when ``amplitude * tanh(scale * v) > 0`` (``v > 0``, unless the product underflows to 0), else as -1
    (zero, negatives, NaN); it decodes as ``+-amplitude``. Like Monolith, the stored form is one int8 per
    value. ``step_size`` and ``amplitude`` are ``entry.py``'s keywords (defaults 200 and 0.05); the
    serving compressor's scale is the proto's ``init_scale`` 1.0.

    Deviation from Monolith: Monolith also reads slices that have this compressor through a HashNet
    retriever while training (lookups return ``amplitude * tanh(scale * w)`` and gradients are scaled by
    its derivative, :class:`HashNetQuantizer`); tables here train on the raw float32 rows, as they do for
    :class:`FixedR8Compressor`, and the compressor applies when exporting for serving.
    """

    def __init__(self, step_size: int = 200, amplitude: float = 0.05) -> None:
        owner = type(self).__name__
        self.step_size = check_int(owner, "step_size", step_size, low=1)
        self.amplitude = check_real(owner, "amplitude", amplitude, low=0.0, low_open=True)
        self._quantizer = HashNetQuantizer(self.step_size, self.amplitude)

    def encode(self, rows: np.ndarray) -> np.ndarray:
        return np.where(self._quantizer.forward(rows) > 0, 1, -1).astype(np.int8)

    def decode(self, encoded: np.ndarray, dim: int) -> np.ndarray:
        _rows_of(encoded, dim, type(self).__name__)
        return encoded.astype(np.float32) * np.float32(self.amplitude)
