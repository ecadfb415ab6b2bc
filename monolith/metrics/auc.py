"""Exact streaming ROC AUC (equal to scikit-learn's ``roc_auc_score``, ties counted as half)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch


def as_flat_numpy(x: Any, what: str) -> np.ndarray:
    """``x`` (tensor, array or sequence) flattened to a 1-D numpy array; tensors are detached first."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.dtype == object:
        raise TypeError(f"{what} must be numeric, got dtype object")
    return arr.reshape(-1)


def check_pair(labels: Any, preds: Any, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Flatten ``labels`` and ``preds`` to float64 ``[n]`` each, checking equal size and finiteness."""
    y = as_flat_numpy(labels, f"{metric} labels").astype(np.float64)
    p = as_flat_numpy(preds, f"{metric} preds").astype(np.float64)
    if y.shape != p.shape:
        raise ValueError(f"{metric}: labels and preds need the same number of elements, got {y.size} and {p.size}")
    if not (np.isfinite(y).all() and np.isfinite(p).all()):
        raise ValueError(f"{metric}: labels and preds must be finite (no NaN/inf)")
    return y, p


class AUC:
    """Area under the ROC curve over every ``(label, pred)`` pair seen since the last reset.

    AUC is not decomposable, so all pairs are kept (1 byte + 8 bytes each) and ranked in
    :meth:`compute`: sort by prediction, group equal predictions, and count for every positive the
    negatives ranked below it, plus half of those tied with it.

    ``compute()`` returns NaN while there is no positive or no negative example (AUC is undefined).
    """

    name = "auc"

    def __init__(self) -> None:
        self._labels: list[np.ndarray] = []
        self._preds: list[np.ndarray] = []

    def update(self, labels: Any, preds: Any) -> None:
        """Add a batch: ``labels`` 0/1 and ``preds`` scores, same number of elements (any shape).

        Raises:
            ValueError: sizes differ, a value is NaN/inf, or a label is not 0 or 1.
        """
        y, p = check_pair(labels, preds, "AUC")
        if not ((y == 0.0) | (y == 1.0)).all():  # np.isin's sort would cost more than the rest of update
            raise ValueError(f"AUC labels must be 0 or 1, got values {np.unique(y)[:10].tolist()}")
        self._labels.append(y.astype(bool))
        self._preds.append(p)

    def _pairs(self) -> tuple[np.ndarray, np.ndarray]:
        # Concatenate once and keep the result, so repeated compute()/state() calls stay cheap.
        if len(self._labels) != 1:
            self._labels = [np.concatenate(self._labels) if self._labels else np.zeros(0, bool)]
            self._preds = [np.concatenate(self._preds) if self._preds else np.zeros(0, np.float64)]
        return self._labels[0], self._preds[0]

    def __len__(self) -> int:
        return sum(a.size for a in self._labels)

    def compute(self) -> float:
        """The AUC in [0, 1], or NaN when only one class (or nothing) has been seen."""
        labels, preds = self._pairs()
        n_pos = int(labels.sum())
        n_neg = labels.size - n_pos
        if n_pos == 0 or n_neg == 0:
            return float("nan")
        order = np.argsort(preds, kind="stable")
        sorted_preds, sorted_labels = preds[order], labels[order]
        # Tie groups: runs of equal predictions in sorted order.
        starts = np.flatnonzero(np.r_[True, sorted_preds[1:] != sorted_preds[:-1]])
        sizes = np.diff(np.r_[starts, labels.size])
        pos = np.add.reduceat(sorted_labels.astype(np.int64), starts)
        neg = sizes - pos
        neg_below = np.cumsum(neg) - neg
        # Integer count of 2 * (pairs ranked correctly + half the tied pairs): exact, no rank sums.
        twice_correct = 2 * int(np.dot(pos, neg_below)) + int(np.dot(pos, neg))
        return twice_correct / (2 * n_pos * n_neg)

    def reset(self) -> None:
        self._labels, self._preds = [], []

    def state(self) -> dict[str, np.ndarray]:
        """Copies of all pairs seen: ``{"labels": bool [n], "preds": float64 [n]}``."""
        labels, preds = self._pairs()
        return {"labels": labels.copy(), "preds": preds.copy()}

    def merge(self, other: AUC | Mapping[str, np.ndarray]) -> None:
        """Add another worker's pairs, given its :class:`AUC` or its :meth:`state`.

        Raises:
            ValueError: a state without ``labels``/``preds`` of equal size.
        """
        state = other.state() if isinstance(other, AUC) else other
        if "labels" not in state or "preds" not in state:
            raise ValueError(f"AUC.merge needs an AUC or a state with 'labels' and 'preds', got keys {list(state)}")
        labels = np.asarray(state["labels"], dtype=bool).reshape(-1)
        preds = np.asarray(state["preds"], dtype=np.float64).reshape(-1)
        if labels.shape != preds.shape:
            raise ValueError(f"AUC.merge: state labels and preds sizes differ, {labels.size} vs {preds.size}")
        self._labels.append(labels)
        self._preds.append(preds)
