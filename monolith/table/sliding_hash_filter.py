"""Monolith's bounded occurrence filter, its ``SlidingHashFilter``, with per-slot thresholds.

The exact :class:`~monolith.table.OccurrenceFilter` keeps a counter per id it has not admitted, so
its memory grows with every rare id. This filter counts in fixed memory as Monolith does: a ring of
``split_num`` open-addressed arrays of 16-bit cells, each cell a 12-bit signature of an id and a
4-bit count. An id's cell is searched from its hash over at most 16 cells of the head split, then
of the next one; when it is new there, its count is carried over from the newest older split that
holds it (looking back at most ``split_num - 2`` splits). When the head split holds its capacity,
the next split becomes the head and the one after it is cleared, so ids unseen for that long are
forgotten and count again from zero.

Admission is Monolith's ``ShouldBeFiltered(fid, count, T)``: an id passes when its count before
this batch reaches T, then the batch's occurrences are added. Two ids with one signature near one
place share a count, and an id that finds no free cell passes at once (Monolith's ``failure_count``):
both admit ids early, never late. Monolith hashes with ``absl::Hash``; this uses splitmix64's
finaliser, so cells differ from Monolith's while the rule and its error are the same.

The cells hold no ids, so a checkpoint's filters can only go back to the ranks that wrote them:
with another number of ranks they start empty (:func:`~monolith.table.shards.with_own_filter`).
"""

from __future__ import annotations

import json

import numba
import numpy as np

from monolith.fid import MAX_SLOT_V2, SIGNATURE_BITS_V2
from monolith.splitmix import mix64
from monolith.table.config import COUNTER_MAX, SlidingHashFilterConfig
from monolith.table.occurrence_filter import OccurrenceFilter

_SLOT_MASK = np.int64(MAX_SLOT_V2)
_MAX_STEP = 16  # cells searched per split (SlidingHashFilter::MAX_STEP)
_FORWARD = 2  # splits searched from the head (max_forward_step_)
#: Entries of a table state that hold this filter (the rest of ``filter_*`` is the exact filter's).
STATE_KEYS = ("filter_splits", "filter_split_ids", "filter_sliding")


@numba.njit(cache=True, inline="always")
def _find(cells, home, sign):
    """HashFilter::find: the first cell from ``home`` that is empty or holds ``sign``; -1 if none."""
    pos = home
    for _ in range(_MAX_STEP):
        if cells[pos] == 0 or (cells[pos] >> 4) == sign:
            return pos
        pos += 1
        if pos == cells.size:
            pos = 0
    return -1


@numba.njit(cache=True, inline="always")
def _add(splits, ids, capacity, split, pos, sign, count):
    """HashFilterIterator::add: adds ``count`` (saturating at 15) to a cell; returns its count before."""
    count = min(count, 15)
    value = np.int64(splits[split, pos])
    if value == 0:
        ids[split] = min(ids[split] + 1, capacity)
        splits[split, pos] = np.uint16((sign << 4) + count)
        return 0
    before = value & 15
    splits[split, pos] = np.uint16(value | 15 if before + count >= 15 else value + count)
    return before


@numba.njit(cache=True, nogil=True)
def _admit(splits, ids, ring, capacity, keys, occurrences, thresholds, shift, passed):
    """SlidingHashFilter::add and ShouldBeFiltered for each key in order. ``ids``: ids held by each
    split; ``ring``: [head, splits filled since the start, ids that found no cell]."""
    n = splits.shape[0]
    home_range = np.uint64(splits.shape[1] - 64)
    for i in range(keys.size):
        threshold = thresholds[(keys[i] >> shift) & _SLOT_MASK]
        if threshold <= 0:  # Monolith counts nothing for a slot without a threshold
            continue
        home = np.int64(mix64(np.uint64(keys[i])) % home_range)
        sign = (keys[i] >> 17) & 0xFFF  # Monolith's signature: (fid >> 17 | fid << 15) & 0xFFF
        head = ring[0]
        split, pos = head, -1
        for _ in range(_FORWARD):
            pos = _find(splits[split], home, sign)
            if pos >= 0:
                break
            split = (split + 1) % n
        if pos < 0:
            ring[2] += 1
            continue  # no free cell: Monolith answers max_count(), so the id passes
        if splits[split, pos] != 0:
            passed[i] = _add(splits, ids, capacity, split, pos, sign, occurrences[i]) >= threshold
            continue
        before = 0
        older = (head - 1) % n
        for _ in range(min(ring[1], n - _FORWARD)):
            old = _find(splits[older], home, sign)
            if old >= 0 and splits[older, old] != 0:
                before = np.int64(splits[older, old] & 15)
                break
            older = (older - 1) % n
        _add(splits, ids, capacity, split, pos, sign, before + occurrences[i])
        passed[i] = before >= threshold
        if ids[head] >= capacity - 1:  # HashFilter::full(): the next split becomes the head
            head = (head + 1) % n
            ring[0] = head
            ring[1] += 1
            cleared = (head + _FORWARD - 1) % n
            splits[cleared] = 0
            ids[cleared] = 0


class SlidingHashFilter:
    """Bounded-memory admission by occurrence threshold (see the module doc and
    :class:`~monolith.table.config.SlidingHashFilterConfig`).

    ``thresholds`` is an int32 array indexed by slot (v2 layout), shared with the table.

    Example::

        f = SlidingHashFilter(thresholds, SlidingHashFilterConfig(capacity=1_000_000))
        f.admit(np.array([5, 5, 5]))           # thresholds[0] == 1 -> [False, True, True]
    """

    def __init__(self, thresholds: np.ndarray, config: SlidingHashFilterConfig) -> None:
        self.thresholds = thresholds
        self.config = config
        self._splits = np.zeros((config.split_num, config.split_cells), dtype=np.uint16)
        self._ids = np.zeros(config.split_num, dtype=np.int64)
        self._ring = np.zeros(3, dtype=np.int64)

    def __len__(self) -> int:
        """Ids the splits hold (Monolith's ``estimated_total_element``; there are no per-id entries)."""
        return int(self._ids.sum())

    @property
    def enabled(self) -> bool:
        """False when every threshold is 0, so every occurrence passes without counting."""
        return bool(self.thresholds.any())

    @property
    def nbytes(self) -> int:
        """Bytes of the cells: fixed by the config."""
        return self._splits.nbytes

    def check_threshold(self, slot: int, threshold: int) -> None:
        """Raises ``ValueError`` when ``threshold`` exceeds what a 4-bit count holds."""
        if threshold > COUNTER_MAX:
            raise ValueError(f"slot {slot}: occurrence_threshold {threshold} exceeds {COUNTER_MAX}, the most the "
                             f"sliding hash filter's 4-bit count holds; use the exact filter (no occurrence_filter)")

    def admit(self, keys: np.ndarray, occurrences: np.ndarray | None = None,
              times: np.ndarray | None = None) -> np.ndarray:
        """Counts the occurrences of ``keys`` (in order) and returns a bool mask of those admitted.

        ``occurrences[i]`` (default 1) is how many occurrences ``keys[i]`` stands for; ``times`` is
        the exact filter's interface (this one forgets by splits, not by time).
        """
        passed = np.ones(keys.size, dtype=np.bool_)
        if not self.enabled or keys.size == 0:
            return passed
        occurrences = (np.ones(keys.size, dtype=np.int64) if occurrences is None
                       else np.ascontiguousarray(occurrences, dtype=np.int64))
        _admit(self._splits, self._ids, self._ring, self.config.split_capacity,
               np.ascontiguousarray(keys, dtype=np.int64), occurrences, self.thresholds, SIGNATURE_BITS_V2, passed)
        return passed

    def forget(self, keys: np.ndarray) -> None:
        """Nothing: cells hold no ids, so one id's count cannot be dropped (the splits age them out)."""

    def forget_unseen(self, now: int, expire_days: np.ndarray) -> None:
        """Nothing: memory is fixed; ids unseen for ``split_num - 2`` splits are forgotten as they rotate."""

    def state(self, now: int | None = None, expire_days: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The splits as plain arrays, for checkpoints (with the exact filter's entries, empty)."""
        ring = {**self.config.describe(), "head": int(self._ring[0]), "rotations": int(self._ring[1]),
                "failures": int(self._ring[2])}
        return {"filter_keys": np.zeros(0, np.int64), "filter_counts": np.zeros(0, np.int32),
                "filter_seen": np.zeros(0, np.int64), "filter_splits": self._splits.copy(),
                "filter_split_ids": self._ids.copy(),
                "filter_sliding": np.frombuffer(json.dumps(ring).encode(), dtype=np.uint8)}

    def check_state(self, state: dict[str, np.ndarray]) -> None:
        """Raises ``ValueError`` unless ``state`` holds splits of this filter's config, exact counters
        (which :meth:`load_state` counts in), or no filter (a checkpoint of another number of ranks)."""
        if "filter_sliding" not in state:
            if "filter_keys" in state:
                OccurrenceFilter.check_state(state)
            return
        theirs = json.loads(bytes(state["filter_sliding"]).decode())
        if {k: theirs.get(k) for k in ("capacity", "split_num")} != self.config.describe():
            raise ValueError(f"the occurrence filter was a sliding hash filter of {theirs}, this table's is "
                             f"{self.config.describe()}")
        if state["filter_splits"].shape != self._splits.shape or state["filter_split_ids"].shape != self._ids.shape:
            raise ValueError(f"'filter_splits' has shape {list(state['filter_splits'].shape)}, "
                             f"expected {list(self._splits.shape)}")

    def load_state(self, state: dict[str, np.ndarray], seen: int = 0) -> None:
        """Restores splits written by :meth:`state`; exact counters (a table switched to this
        filter) are counted in as their ids' occurrences (``seen``: the exact filter's interface)."""
        self.check_state(state)
        self._splits[:] = 0
        self._ids[:] = 0
        self._ring[:] = 0
        if "filter_sliding" in state:
            ring = json.loads(bytes(state["filter_sliding"]).decode())
            self._splits[:] = state["filter_splits"]
            self._ids[:] = state["filter_split_ids"]
            self._ring[:] = (ring["head"], ring["rotations"], ring["failures"])
        elif "filter_keys" in state:
            self.admit(np.ascontiguousarray(state["filter_keys"], dtype=np.int64),
                       np.ascontiguousarray(state["filter_counts"], dtype=np.int64))
