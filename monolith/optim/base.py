"""Interfaces shared by per-slice optimizers, initializers and compressors.

An embedding table keeps, for every slice, a contiguous float32 weight store ``[capacity, dim]``
and a float32 optimizer-state store ``[capacity, state_width(dim)]``. These classes operate on
rows of those stores; the per-row arithmetic runs in numba kernels, Python only dispatches per batch.
"""

from __future__ import annotations

import abc
import math
import numbers
from typing import Any

import numpy as np

from monolith.optim.fid_random import FidRandom


def check_real(
    owner: str,
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Return ``value`` as a float, or raise ``ValueError`` naming ``owner``'s ``name``, the value and the range.

    ``low``/``high`` bound the accepted range (inclusive unless ``low_open``/``high_open``); booleans,
    non-numbers and non-finite values are always rejected.
    """
    expected = "a finite number"
    if low is not None and high is not None:
        expected += f" in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    elif low is not None:
        expected += f" {'>' if low_open else '>='} {low}"
    elif high is not None:
        expected += f" {'<' if high_open else '<='} {high}"
    ok = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        raise ValueError(f"{owner}: {name} must be {expected}, got {value!r}")
    return float(value)


def check_int(owner: str, name: str, value: Any, *, low: int) -> int:
    """Return ``value`` as an int, or raise ``ValueError`` unless it is an integer ``>= low``."""
    if not isinstance(value, numbers.Integral) or isinstance(value, (bool, np.bool_)) or value < low:
        raise ValueError(f"{owner}: {name} must be an integer >= {low}, got {value!r}")
    return int(value)


class SliceOptimizer(abc.ABC):
    """The update rule of one embedding slice (Monolith's ``OptimizerInterface``)."""

    #: Monolith's proto name of the optimizer, e.g. ``"adagrad"``.
    name: str = ""

    @property
    @abc.abstractmethod
    def learning_rate(self) -> float:
        """The configured learning rate (the proto default where the user left it as None)."""

    @abc.abstractmethod
    def state_width(self, dim: int) -> int:
        """Number of float32 state values kept per row for a slice of ``dim``."""

    @abc.abstractmethod
    def init_state(self, state: np.ndarray) -> None:
        """Fill ``state`` (``[n, state_width]`` float32, rows just created) with initial values."""

    @abc.abstractmethod
    def apply(
        self,
        weights: np.ndarray,
        state: np.ndarray,
        rows: np.ndarray,
        grads: np.ndarray,
        learning_rate: float,
        global_step: int,
    ) -> None:
        """Update ``weights[rows[i]]`` and ``state[rows[i]]`` with ``grads[i]``, in order.

        ``rows`` is int64 ``[m]`` and may repeat (local training applies one update per occurrence);
        ``grads`` is float32 ``[m, dim]``; ``learning_rate`` is this step's rate for the slice.
        """

    def config(self) -> dict[str, Any]:
        """Plain-data description, used by checkpoints and the model dump."""
        return {"type": type(self).__name__, **{k: v for k, v in vars(self).items() if not k.startswith("_")}}


class Initializer(abc.ABC):
    """Fills newly created embedding rows."""

    @abc.abstractmethod
    def initialize(self, rows: np.ndarray, rng: FidRandom | np.random.Generator) -> None:
        """Fill ``rows`` (``[n, dim]`` float32, written in place), drawing from ``rng.random(shape,
        dtype=np.float32)``: a table passes a :class:`~monolith.optim.fid_random.FidRandom` over the
        rows' FIDs, so a row's value depends on its FID, not on the order rows are created."""

    def config(self) -> dict[str, Any]:
        return {"type": type(self).__name__, **{k: v for k, v in vars(self).items() if not k.startswith("_")}}


class Compressor(abc.ABC):
    """Serving-side row encoding (Monolith's ``FloatCompressor``)."""

    @abc.abstractmethod
    def encode(self, rows: np.ndarray) -> np.ndarray:
        """Compress float32 ``[n, dim]`` rows to their stored form."""

    @abc.abstractmethod
    def decode(self, encoded: np.ndarray, dim: int) -> np.ndarray:
        """Restore float32 ``[n, dim]`` rows from :meth:`encode`'s output."""

    def config(self) -> dict[str, Any]:
        return {"type": type(self).__name__, **{k: v for k, v in vars(self).items() if not k.startswith("_")}}
