"""Streaming mean squared error."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from monolith.metrics.auc import check_pair


class MeanSquaredError:
    """``mean((preds - labels) ** 2)`` over every element seen since the last reset.

    Keeps only a float64 sum and a count. ``compute()`` returns NaN before any element is seen.
    """

    name = "mse"

    def __init__(self) -> None:
        self._sum_squared_error = 0.0
        self._count = 0

    def update(self, labels: Any, preds: Any) -> None:
        """Add a batch of targets and predictions (same number of elements, any shape).

        Raises:
            ValueError: sizes differ or a value is NaN/inf.
        """
        y, p = check_pair(labels, preds, "MeanSquaredError")
        self._sum_squared_error += float(np.square(p - y).sum())
        self._count += y.size

    def compute(self) -> float:
        return self._sum_squared_error / self._count if self._count else float("nan")

    def reset(self) -> None:
        self._sum_squared_error, self._count = 0.0, 0

    def state(self) -> dict[str, float | int]:
        """``{"sum_squared_error": float, "count": int}``."""
        return {"sum_squared_error": self._sum_squared_error, "count": self._count}

    def merge(self, other: MeanSquaredError | Mapping[str, float | int]) -> None:
        """Add another worker's totals, given its :class:`MeanSquaredError` or its :meth:`state`.

        Raises:
            ValueError: a state without ``sum_squared_error`` and ``count``.
        """
        state = other.state() if isinstance(other, MeanSquaredError) else other
        if "sum_squared_error" not in state or "count" not in state:
            raise ValueError(
                f"MeanSquaredError.merge needs a MeanSquaredError or a state with 'sum_squared_error' and "
                f"'count', got keys {list(state)}"
            )
        self._sum_squared_error += float(state["sum_squared_error"])
        self._count += int(state["count"])
