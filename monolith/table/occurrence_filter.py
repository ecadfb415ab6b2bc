"""Per-slot occurrence-threshold admission (Monolith's hash filter).

A FID not yet in its table is admitted on its (T+1)-th occurrence, T being its slot's
``occurrence_threshold``: the filter compares the count seen so far with T *before* counting the
current occurrence. Monolith uses a probabilistic counting filter; this one counts exactly, in a
:class:`FidMap` of its own, so two FIDs never share a counter.
"""

from __future__ import annotations

import numba
import numpy as np

from monolith.fid import MAX_SLOT_V2, SIGNATURE_BITS_V2
from monolith.table.hash_map import FidMap

_SLOT_MASK = np.int64(MAX_SLOT_V2)


@numba.njit(cache=True, nogil=True)
def _admit(counter_rows, counts, keys, occurrences, thresholds, shift, passed):
    for i in range(keys.size):
        slot = (keys[i] >> shift) & _SLOT_MASK
        row = counter_rows[i]
        passed[i] = counts[row] >= thresholds[slot]
        counts[row] = min(np.int64(counts[row]) + occurrences[i], 2147483647)


class OccurrenceFilter:
    """Counts occurrences of FIDs that are not yet admitted and tells which occurrences pass.

    ``thresholds`` is an int32 array indexed by slot (v2 layout): ``thresholds[slot]`` is T.

    Example::

        f = OccurrenceFilter(thresholds)       # thresholds[0] == 1
        f.admit(np.array([5, 5, 5]))           # -> [False, True, True]
    """

    def __init__(self, thresholds: np.ndarray) -> None:
        self.thresholds = np.ascontiguousarray(thresholds, dtype=np.int32)
        if self.thresholds.shape != (MAX_SLOT_V2 + 1,):
            raise ValueError(f"thresholds must have one entry per slot ({MAX_SLOT_V2 + 1}), got {self.thresholds.shape}")
        self._counter_rows = FidMap()
        self._counts = np.zeros(1024, dtype=np.int32)

    def __len__(self) -> int:
        """Number of FIDs being counted."""
        return len(self._counter_rows)

    @property
    def enabled(self) -> bool:
        """False when every threshold is 0, so every occurrence passes without counting."""
        return bool(self.thresholds.any())

    def admit(self, keys: np.ndarray, occurrences: np.ndarray | None = None) -> np.ndarray:
        """Counts the occurrences of ``keys`` (in order) and returns a bool mask of those admitted.

        ``occurrences[i]`` (default 1) is how many occurrences ``keys[i]`` stands for: it passes when
        its count before them reaches its threshold, then all of them are counted (Monolith's
        filter after deduplication).
        """
        passed = np.ones(keys.size, dtype=np.bool_)
        if not self.enabled or keys.size == 0:
            return passed
        occurrences = (np.ones(keys.size, dtype=np.int64) if occurrences is None
                       else np.ascontiguousarray(occurrences, dtype=np.int64))
        rows = self._counter_rows.find_or_insert(keys)
        if len(self._counter_rows) > self._counts.size:
            grown = np.zeros(max(2 * self._counts.size, len(self._counter_rows)), dtype=np.int32)
            grown[: self._counts.size] = self._counts
            self._counts = grown
        _admit(rows, self._counts, keys, occurrences, self.thresholds, SIGNATURE_BITS_V2, passed)
        return passed

    def forget(self, keys: np.ndarray) -> None:
        """Drops the counters of ``keys`` (admitted FIDs need no counter any more)."""
        all_keys, rows = self._counter_rows.items()
        keep = ~np.isin(all_keys, keys)
        self._counts = self._counts[rows[keep]].copy()
        self._counter_rows.rebuild(all_keys[keep])

    def state(self) -> dict[str, np.ndarray]:
        """Counters as plain arrays, for checkpoints."""
        keys, rows = self._counter_rows.items()
        return {"filter_keys": keys, "filter_counts": self._counts[rows].copy()}

    @staticmethod
    def check_state(state: dict[str, np.ndarray]) -> None:
        """Raises ``ValueError`` unless ``state`` holds one count per key, as :meth:`state` writes."""
        keys, counts = state["filter_keys"], state["filter_counts"]
        if keys.shape != counts.shape or keys.ndim != 1:
            raise ValueError(f"filter state mismatch: {keys.size} keys but {counts.size} counts")

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Restores counters written by :meth:`state`."""
        self.check_state(state)
        keys, counts = state["filter_keys"], state["filter_counts"]
        self._counter_rows.rebuild(keys)
        self._counts = np.ascontiguousarray(counts, dtype=np.int32).copy()
        if self._counts.size == 0:
            self._counts = np.zeros(1024, dtype=np.int32)
