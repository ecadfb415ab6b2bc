"""Monolith's embedding initializers (``runtime/hash_table/initializer``), with ``entry.py``'s keywords."""

from __future__ import annotations

import numpy as np

from monolith.optim.base import Initializer, check_real


class ZerosInitializer(Initializer):
    """Sets new rows to 0."""

    def initialize(self, rows: np.ndarray, rng: np.random.Generator) -> None:
        rows.fill(0)


class ConstantsInitializer(Initializer):
    """Sets every element of new rows to ``constant``."""

    def __init__(self, constant: float) -> None:
        self.constant = check_real(type(self).__name__, "constant", constant)

    def initialize(self, rows: np.ndarray, rng: np.random.Generator) -> None:
        rows.fill(self.constant)


class RandomUniformInitializer(Initializer):
    """Draws new rows uniformly from ``[minval, maxval)``; ``None`` takes the proto defaults -0.05 / 0.05.

    Monolith draws from a per-thread ``std::mt19937``; here the table's ``rng`` supplies the stream, so
    values differ from Monolith's but the distribution (``minval + (maxval - minval) * U``, float32) is the same.
    """

    def __init__(self, minval: float | None = None, maxval: float | None = None) -> None:
        owner = type(self).__name__
        self.minval = check_real(owner, "minval", -0.05 if minval is None else minval)
        self.maxval = check_real(owner, "maxval", 0.05 if maxval is None else maxval, low=self.minval)

    def initialize(self, rows: np.ndarray, rng: np.random.Generator) -> None:
        rows[...] = rng.random(rows.shape, dtype=np.float32)
        rows *= np.float32(self.maxval - self.minval)
        rows += np.float32(self.minval)
