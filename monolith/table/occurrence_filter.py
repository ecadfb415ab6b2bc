"""Per-slot occurrence-threshold admission (Monolith's hash filter).

A FID not yet in its table is admitted on its (T+1)-th occurrence, T being its slot's
``occurrence_threshold``: the filter compares the count seen so far with T *before* counting the
current occurrence. Monolith uses a probabilistic counting filter; this one counts exactly, in a
:class:`FidMap` of its own, so two FIDs never share a counter. Each counter remembers when its id
was last seen, and the table's expiry drops the counters of ids not seen for their slot's expire
time, as it drops rows (:class:`~monolith.table.sliding_hash_filter.SlidingHashFilter` is the
bounded alternative).
"""

from __future__ import annotations

import numba
import numpy as np

from monolith.fid import MAX_SLOT_V2, SIGNATURE_BITS_V2
from monolith.table.hash_map import FidMap

_SLOT_MASK = np.int64(MAX_SLOT_V2)
_SECONDS_PER_DAY = 86400


@numba.njit(cache=True, nogil=True)
def _admit(counter_rows, counts, seen, keys, occurrences, times, thresholds, shift, passed):
    for i in range(keys.size):
        slot = (keys[i] >> shift) & _SLOT_MASK
        row = counter_rows[i]
        passed[i] = counts[row] >= thresholds[slot]
        counts[row] = min(np.int64(counts[row]) + occurrences[i], 2147483647)
        seen[row] = max(seen[row], times[i])


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
        self._seen = np.zeros(1024, dtype=np.int64)  # each counter's newest request time

    def __len__(self) -> int:
        """Number of FIDs being counted."""
        return len(self._counter_rows)

    @property
    def enabled(self) -> bool:
        """False when every threshold is 0, so every occurrence passes without counting."""
        return bool(self.thresholds.any())

    @property
    def nbytes(self) -> int:
        """Bytes of the counters and their map (they grow with the ids counted)."""
        return self._counter_rows.nbytes + self._counts.nbytes + self._seen.nbytes

    def check_threshold(self, slot: int, threshold: int) -> None:
        """Every threshold an int32 holds is counted exactly."""

    def admit(self, keys: np.ndarray, occurrences: np.ndarray | None = None,
              times: np.ndarray | None = None) -> np.ndarray:
        """Counts the occurrences of ``keys`` (in order) and returns a bool mask of those admitted.

        ``occurrences[i]`` (default 1) is how many occurrences ``keys[i]`` stands for: it passes when
        its count before them reaches its threshold, then all of them are counted (Monolith's
        filter after deduplication). ``times[i]`` (seconds; default 0) is when it was seen.
        """
        passed = np.ones(keys.size, dtype=np.bool_)
        if not self.enabled or keys.size == 0:
            return passed
        occurrences = (np.ones(keys.size, dtype=np.int64) if occurrences is None
                       else np.ascontiguousarray(occurrences, dtype=np.int64))
        times = (np.zeros(keys.size, dtype=np.int64) if times is None
                 else np.ascontiguousarray(times, dtype=np.int64))
        rows = self._counter_rows.find_or_insert(keys)
        if len(self._counter_rows) > self._counts.size:
            size = max(2 * self._counts.size, len(self._counter_rows))
            self._counts, self._seen = _grown(self._counts, size), _grown(self._seen, size)
        _admit(rows, self._counts, self._seen, keys, occurrences, times, self.thresholds, SIGNATURE_BITS_V2, passed)
        return passed

    def forget(self, keys: np.ndarray) -> None:
        """Drops the counters of ``keys`` (admitted FIDs need no counter any more)."""
        all_keys, rows = self._counter_rows.items()
        self._keep(all_keys, rows, ~np.isin(all_keys, keys))

    def forget_unseen(self, now: int, expire_days: np.ndarray) -> None:
        """Drops the counters of ids not seen for their slot's expire time (``expire_days`` by slot)
        at ``now`` (seconds), by the rule that expires rows."""
        all_keys, rows = self._counter_rows.items()
        self._keep(all_keys, rows, self._recent(all_keys, rows, now, expire_days))

    def _recent(self, keys: np.ndarray, rows: np.ndarray, now: int, expire_days: np.ndarray) -> np.ndarray:
        days = expire_days[(keys >> SIGNATURE_BITS_V2) & MAX_SLOT_V2]
        return now - self._seen[rows] < days * _SECONDS_PER_DAY

    def _keep(self, keys: np.ndarray, rows: np.ndarray, keep: np.ndarray) -> None:
        if keep.all():
            return
        self._counts, self._seen = self._counts[rows[keep]].copy(), self._seen[rows[keep]].copy()
        self._counter_rows.rebuild(keys[keep])

    def state(self, now: int | None = None, expire_days: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Counters as plain arrays, for checkpoints; given ``now`` and ``expire_days`` (by slot),
        without those of ids not seen for their expire time."""
        keys, rows = self._counter_rows.items()
        if now is not None:
            recent = self._recent(keys, rows, now, expire_days)
            keys, rows = keys[recent], rows[recent]
        return {"filter_keys": keys, "filter_counts": self._counts[rows].copy(), "filter_seen": self._seen[rows].copy()}

    @staticmethod
    def check_state(state: dict[str, np.ndarray]) -> None:
        """Raises ``ValueError`` unless ``state`` holds one count (and one time, if any) per key, as
        :meth:`state` writes (a sliding hash filter's cells, which hold no ids, are refused)."""
        if "filter_sliding" in state:
            raise ValueError("the occurrence filter was a sliding hash filter (SlidingHashFilterConfig), whose cells "
                             "hold no ids; build the table with the same occurrence_filter to load it")
        keys, counts = state["filter_keys"], state["filter_counts"]
        if keys.shape != counts.shape or keys.ndim != 1:
            raise ValueError(f"filter state mismatch: {keys.size} keys but {counts.size} counts")
        if "filter_seen" in state and state["filter_seen"].shape != keys.shape:
            raise ValueError(f"filter state mismatch: {keys.size} keys but {state['filter_seen'].size} times")

    def load_state(self, state: dict[str, np.ndarray], seen: int = 0) -> None:
        """Restores counters written by :meth:`state`; ``seen`` is the time of counters written
        without times (files of before they were kept)."""
        self.check_state(state)
        keys, counts = state["filter_keys"], state["filter_counts"]
        self._counter_rows.rebuild(keys)
        size = max(keys.size, 1024)
        self._counts = _grown(np.ascontiguousarray(counts, dtype=np.int32), size)
        self._seen = _grown(np.ascontiguousarray(state.get("filter_seen", np.full(keys.size, seen)), np.int64), size)


def _grown(values: np.ndarray, size: int) -> np.ndarray:
    """``values`` zero-padded to ``size`` entries (a new array)."""
    out = np.zeros(size, dtype=values.dtype)
    out[: values.size] = values
    return out
