"""Monolith's embedding initializers (``runtime/hash_table/initializer``), with ``entry.py``'s keywords."""

from __future__ import annotations

import numpy as np

from monolith.optim.base import Initializer, check_real
from monolith.optim.fid_random import FidRandom


class ZerosInitializer(Initializer):
    """Sets new rows to 0."""

    def initialize(self, rows: np.ndarray, rng: FidRandom | np.random.Generator) -> None:
        rows.fill(0)


class ConstantsInitializer(Initializer):
    """Sets every element of new rows to ``constant``."""

    def __init__(self, constant: float) -> None:
        self.constant = check_real(type(self).__name__, "constant", constant)

    def initialize(self, rows: np.ndarray, rng: FidRandom | np.random.Generator) -> None:
        rows.fill(self.constant)


class RandomUniformInitializer(Initializer):
    """Draws new rows uniformly from ``[minval, maxval)``; ``None`` takes the proto defaults -0.05 / 0.05.

    Monolith draws from a per-thread ``std::mt19937``; here a table draws each row from its FID
    (:class:`~monolith.optim.fid_random.FidRandom`), so an id starts from the same vector in one
    process and in N; values differ from Monolith's but the distribution (``minval + (maxval -
    minval) * U``, float32) is the same.
    """

    def __init__(self, minval: float | None = None, maxval: float | None = None) -> None:
        owner = type(self).__name__
        self.minval = check_real(owner, "minval", -0.05 if minval is None else minval)
        self.maxval = check_real(owner, "maxval", 0.05 if maxval is None else maxval, low=self.minval)

    def initialize(self, rows: np.ndarray, rng: FidRandom | np.random.Generator) -> None:
        rows[...] = rng.random(rows.shape, dtype=np.float32)
        rows *= np.float32(self.maxval - self.minval)
        rows += np.float32(self.minval)


class BatchSoftmaxInitializer(Initializer):
    """Starts :class:`~monolith.optim.BatchSoftmaxOptimizer`'s step-interval estimate of new rows at
    ``init_step_interval`` (>= 1): Monolith's constants initializer with that constant.

    Monolith stores the value as ``constant``; here the attribute (and ``config()`` key) is
    ``init_step_interval``, the constructor's keyword, and ``constant`` reads it.
    """

    def __init__(self, init_step_interval: float) -> None:
        self.init_step_interval = check_real(type(self).__name__, "init_step_interval", init_step_interval, low=1.0)

    @property
    def constant(self) -> float:
        """Monolith's name of the value every new row is set to."""
        return self.init_step_interval

    def initialize(self, rows: np.ndarray, rng: FidRandom | np.random.Generator) -> None:
        rows.fill(self.init_step_interval)
