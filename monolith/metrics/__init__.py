"""Streaming evaluation metrics.

Each metric accumulates batches with ``update(labels, preds)``, reports with ``compute()``, starts over
with ``reset()``, and combines across workers by sending ``state()`` (plain numpy/Python data) and
calling ``merge(state_or_metric)`` on the receiver.
"""

from monolith.metrics.auc import AUC
from monolith.metrics.mse import MeanSquaredError

__all__ = ["AUC", "MeanSquaredError"]
