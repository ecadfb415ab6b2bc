"""Learning-rate schedules for embedding slices (Monolith's ``learning_rate_functions.py``)."""

from __future__ import annotations

import abc
import math

import numpy as np

from monolith.optim.base import check_int, check_real


class LearningRateFunction(abc.ABC):
    """A schedule: called with the global step, returns that step's learning rate."""

    @abc.abstractmethod
    def __call__(self, global_step: int) -> float:
        """The learning rate at ``global_step``."""

    def __str__(self) -> str:
        # Monolith compares these strings to decide whether two slices share a configuration.
        params = ",".join(f"{key}={value}" for key, value in sorted(vars(self).items()))
        return f'LearningRateFunction("{type(self).__name__}",Params:{params})'


class PolynomialDecay(LearningRateFunction):
    """``tf.compat.v1.train.polynomial_decay`` from ``initial_learning_rate`` to ``end_learning_rate``
    over ``decay_steps``: ``(initial - end) * (1 - step / decay_steps) ** power + end``, in float32.

    Without ``cycle`` the step is capped at ``decay_steps``; with it, ``decay_steps`` is stretched to the
    first multiple of itself not below the step (1 for step 0).
    """

    def __init__(
        self,
        initial_learning_rate: float,
        decay_steps: int,
        end_learning_rate: float = 0.0001,
        power: float = 1.0,
        cycle: bool = False,
        name: str | None = None,
    ) -> None:
        owner = type(self).__name__
        self.initial_learning_rate = check_real(owner, "initial_learning_rate", initial_learning_rate, low=0.0)
        self.decay_steps = check_int(owner, "decay_steps", decay_steps, low=1)
        self.end_learning_rate = check_real(owner, "end_learning_rate", end_learning_rate, low=0.0)
        self.power = check_real(owner, "power", power, low=0.0)
        if not isinstance(cycle, (bool, np.bool_)):
            raise ValueError(f"{owner}: cycle must be a bool, got {cycle!r}")
        self.cycle = bool(cycle)
        if name is not None and not isinstance(name, str):
            raise ValueError(f"{owner}: name must be a str or None, got {name!r}")
        self.name = name

    def __call__(self, global_step: int) -> float:
        step = np.float32(check_int(type(self).__name__, "global_step", global_step, low=0))
        decay_steps = np.float32(self.decay_steps)
        if self.cycle:
            decay_steps *= np.float32(1.0 if step == 0 else math.ceil(step / decay_steps))
        else:
            step = min(step, decay_steps)
        remaining = np.float32(1.0) - step / decay_steps
        initial, end = np.float32(self.initial_learning_rate), np.float32(self.end_learning_rate)
        return float((initial - end) * remaining ** np.float32(self.power) + end)
