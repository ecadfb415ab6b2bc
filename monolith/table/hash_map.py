"""A growable int64 -> row map for FIDs: numba open addressing with linear probing.

Keys and values sit interleaved in one int64 array (``slots[2*i]`` key, ``slots[2*i+1]`` row) so a
probe touches one cache line. Capacity is a power of two and doubles when the load passes 3/4,
which keeps the map at 16-43 bytes per key. There is no fixed capacity and no collision between
keys: every key owns its slot, which is what makes Monolith's embedding table "collisionless".

Rows are handed out densely in insertion order (0, 1, 2, ...), so the row stores beside the map
never have holes; removing keys (eviction) rebuilds the map from the surviving keys.
"""

from __future__ import annotations

import numba
import numpy as np

from monolith.prefetch import PREFETCH_AHEAD, prefetch
from monolith.table.page_in import Ahead, populated_ahead

#: Marks an empty slot. A real key equal to it is kept aside in ``_sentinel_row``.
EMPTY_KEY = np.int64(-(2**63))
_MAX_LOAD_NUM, _MAX_LOAD_DEN = 3, 4
#: Maps of at least this many slots prepare their next slot array ahead of doubling (see find_or_insert).
_PREPARE_FROM_SLOTS = 1 << 16
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@numba.njit(cache=True, inline="always")
def _home_slot(key: np.int64, shift: np.uint64) -> np.int64:
    # Fibonacci hashing: the top bits of key * 2^64/phi depend on every bit of the key, so both
    # sequential ids and FIDs that differ only in their slot bits spread over the table.
    return np.int64((np.uint64(key) * _GOLDEN) >> shift)


@numba.njit(cache=True, inline="always")
def _prefetch_home(slots, shift, keys, i):
    # Branch-free (past the end it prefetches the last key's slot again): with a branch here,
    # numba keeps a reference-count increment and decrement of every array per key, atomic
    # operations that made a probe of a cache-resident map 7x slower.
    prefetch(slots, 2 * _home_slot(keys[min(i, keys.size - 1)], shift))


@numba.njit(cache=True, nogil=True)
def _find(slots, shift, sentinel_row, keys, out_rows):
    mask = slots.size // 2 - 1
    for i in range(keys.size):
        _prefetch_home(slots, shift, keys, i + PREFETCH_AHEAD)
        key = keys[i]
        if key == EMPTY_KEY:
            out_rows[i] = sentinel_row[0]
            continue
        h = _home_slot(key, shift)
        while True:
            stored = slots[2 * h]
            if stored == key:
                out_rows[i] = slots[2 * h + 1]
                break
            if stored == EMPTY_KEY:
                out_rows[i] = -1
                break
            h = (h + 1) & mask


@numba.njit(cache=True, nogil=True)
def _find_or_insert(slots, shift, sentinel_row, keys, out_rows, start, size, max_size):
    """Processes keys[start:] until done or the map is full; returns (next index, new size)."""
    mask = slots.size // 2 - 1
    for i in range(start, keys.size):
        _prefetch_home(slots, shift, keys, i + PREFETCH_AHEAD)
        key = keys[i]
        if key == EMPTY_KEY:
            if sentinel_row[0] < 0:
                sentinel_row[0] = size
                size += 1
            out_rows[i] = sentinel_row[0]
            continue
        h = _home_slot(key, shift)
        while True:
            stored = slots[2 * h]
            if stored == key:
                out_rows[i] = slots[2 * h + 1]
                break
            if stored == EMPTY_KEY:
                if size >= max_size:
                    return i, size
                slots[2 * h] = key
                slots[2 * h + 1] = size
                out_rows[i] = size
                size += 1
                break
            h = (h + 1) & mask
    return keys.size, size


@numba.njit(cache=True, nogil=True)
def _insert_unique(slots, shift, keys, rows):
    """Re-inserts distinct keys (none equal to EMPTY_KEY) with given rows into an empty map."""
    mask = slots.size // 2 - 1
    for i in range(keys.size):
        _prefetch_home(slots, shift, keys, i + PREFETCH_AHEAD)
        h = _home_slot(keys[i], shift)
        while slots[2 * h] != EMPTY_KEY:
            h = (h + 1) & mask
        slots[2 * h] = keys[i]
        slots[2 * h + 1] = rows[i]


class FidMap:
    """Maps int64 FIDs to dense row numbers ``0..len-1``, growing on demand.

    ``initial_capacity`` keys fit before the map first grows (it allocates their slots up front).

    Example::

        m = FidMap()
        m.find_or_insert(np.array([7, 9, 7]))  # -> array([0, 1, 0])
        m.find(np.array([9, 5]))               # -> array([1, -1])
    """

    def __init__(self, initial_capacity: int = 768) -> None:
        if initial_capacity < 1:
            raise ValueError(f"initial_capacity must be >= 1, got {initial_capacity}")
        #: The slot array of the next doubling, being paged in ahead: (its capacity, the array to come).
        self._next: tuple[int, Ahead] | None = None
        self._allocate(_slots_for(initial_capacity))
        self._size = 0
        self._sentinel_row = np.full(1, -1, dtype=np.int64)

    def _allocate(self, capacity: int) -> None:
        prepared, self._next = self._next, None
        slots = prepared[1].get() if prepared is not None and prepared[0] == capacity else None
        if slots is not None:
            slots.fill(EMPTY_KEY)
            self._slots = slots
        else:
            self._slots = np.full(2 * capacity, EMPTY_KEY, dtype=np.int64)
        self._shift = np.uint64(64 - (capacity.bit_length() - 1))
        self._max_size = capacity * _MAX_LOAD_NUM // _MAX_LOAD_DEN

    def __len__(self) -> int:
        return self._size

    @property
    def capacity(self) -> int:
        """Number of slots; the map holds at most 3/4 of it before doubling."""
        return self._slots.size // 2

    @property
    def room(self) -> int:
        """How many keys in all the map holds before it grows."""
        return self._max_size

    @property
    def nbytes(self) -> int:
        """Bytes held by the map itself (not the row stores beside it)."""
        return self._slots.nbytes

    def find(self, keys: np.ndarray) -> np.ndarray:
        """Rows of ``keys`` (int64 ``[n]``); ``-1`` where a key is absent. Inserts nothing."""
        keys = _as_keys(keys)
        rows = np.empty(keys.size, dtype=np.int64)
        _find(self._slots, self._shift, self._sentinel_row, keys, rows)
        return rows

    def find_or_insert(self, keys: np.ndarray) -> np.ndarray:
        """Rows of ``keys``, inserting absent keys with the next free rows in order of appearance.

        New keys get rows ``len(self)`` (before the call) onwards, so the caller can initialise its
        row stores for the contiguous range of new rows.
        """
        keys = _as_keys(keys)
        rows = np.empty(keys.size, dtype=np.int64)
        done, size = 0, self._size
        while True:
            done, self._size = _find_or_insert(
                self._slots, self._shift, self._sentinel_row, keys, rows, done, self._size, self._max_size
            )
            if done == keys.size:
                break
            self._rehash(2 * self.capacity)
        room = self._max_size - self._size
        if (self._next is None and self.capacity >= _PREPARE_FROM_SLOTS
                and room < max(self.capacity // 16, 16 * (self._size - size))):
            # About to double: the larger slot array's pages are faulted in on a background thread meanwhile.
            prepared = populated_ahead(4 * self.capacity, np.int64)
            self._next = None if prepared is None else (2 * self.capacity, prepared)
        return rows

    def clear(self) -> None:
        """Removes every key, keeping the capacity (and its memory, already paged in)."""
        self._slots.fill(EMPTY_KEY)
        self._size = 0
        self._sentinel_row[0] = -1

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        """All ``(keys, rows)``, ordered by row."""
        occupied = self._slots[0::2] != EMPTY_KEY
        keys = self._slots[0::2][occupied]
        rows = self._slots[1::2][occupied]
        if self._sentinel_row[0] >= 0:
            keys = np.append(keys, EMPTY_KEY)
            rows = np.append(rows, self._sentinel_row[0])
        order = np.argsort(rows, kind="stable")
        return keys[order], rows[order]

    def rebuild(self, keys: np.ndarray, room_for: int = 0) -> None:
        """Replaces the contents with distinct ``keys``, key ``i`` getting row ``i``, with room for
        ``room_for`` keys in all before the map grows again."""
        keys = _as_keys(keys)
        rows = np.arange(keys.size, dtype=np.int64)
        sentinel = keys == EMPTY_KEY
        self._sentinel_row[0] = rows[sentinel][0] if sentinel.any() else -1
        self._allocate(_slots_for(max(keys.size, room_for)))
        _insert_unique(self._slots, self._shift, keys[~sentinel], rows[~sentinel])
        self._size = keys.size

    def _rehash(self, capacity: int) -> None:
        occupied = self._slots[0::2] != EMPTY_KEY
        keys, rows = self._slots[0::2][occupied], self._slots[1::2][occupied]
        self._allocate(capacity)
        _insert_unique(self._slots, self._shift, keys, rows)


class KeyGrouper:
    """Numbers the distinct keys of one batch at a time ``0, 1, ...`` in order of first appearance.

    Grouping by hash is O(n), several times faster than ``np.unique``'s or ``torch.unique``'s sort.
    The map is kept from batch to batch: a fresh one each time paid for paging its memory in again
    (about 1 ms for a 4,096 batch).
    """

    def __init__(self) -> None:
        self._map: FidMap | None = None

    def group(self, keys: np.ndarray) -> tuple[np.ndarray, int]:
        """The group of each of ``keys`` (int64 ``[n]``) and the number of groups."""
        keys = _as_keys(keys)
        groups = self._map
        if groups is None or groups.room < keys.size or groups.capacity > 8 * max(keys.size, 1024):
            groups = self._map = FidMap(max(keys.size, 1))
        else:
            groups.clear()
        return groups.find_or_insert(keys), len(groups)


def _slots_for(keys: int) -> int:
    """The fewest slots (a power of two, at least 16) that hold ``keys`` keys within the load limit."""
    capacity = 16
    while capacity * _MAX_LOAD_NUM // _MAX_LOAD_DEN < keys:
        capacity *= 2
    return capacity


def _as_keys(keys) -> np.ndarray:
    keys = np.asarray(keys)
    if keys.dtype != np.int64:
        if keys.dtype.kind not in "iu":
            raise ValueError(f"FIDs must be integers, got dtype {keys.dtype}")
        keys = keys.astype(np.int64)
    return np.ascontiguousarray(keys.reshape(-1))
