"""The collisionless embedding table (Monolith's cuckoo hash table) with per-slice optimizers.

Every admitted FID owns one row; a row is the concatenation of the table's slices, each slice with
its own initializer, optimizer and optimizer state. Rows are created by the first update that
passes the slot's occurrence filter; looking up an absent FID returns zeros and inserts nothing.
Each row remembers the time of its last update so rows of a slot can expire.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import time
import zipfile
from typing import Iterable, Sequence

import numba
import numpy as np
import torch

from monolith.atomic import atomic_write
from monolith.fid import MAX_SLOT_V2, SIGNATURE_BITS_V2, fid_to_int64
from monolith.optim.fid_random import FidRandom
from monolith.table.config import DEFAULT_EXPIRE_TIME_DAYS, SlidingHashFilterConfig, SliceConfig, SlotConfig
from monolith.table.sliding_hash_filter import SlidingHashFilter
from monolith.table.hash_map import FidMap, KeyGrouper
from monolith.table.occurrence_filter import OccurrenceFilter
from monolith.table.page_in import page_in_ahead, populated_ahead
from monolith.prefetch import prefetch_row_ahead

logger = logging.getLogger(__name__)

_FORMAT = "monolith-embedding-table"
_FORMAT_VERSION = 1
_SECONDS_PER_DAY = 86400
DEDUP_MODES = ("local", "sum")
#: One update per distinct id of a step, its gradients summed: how sharded tables (and Monolith's sync
#: training) update, so one process trains like N by default.
DEFAULT_DEDUP = "sum"
#: An expiry pass (eviction or a save's skipping) that drops more than this share of a table's rows
#: logs a warning, once per table: so large a share usually means the request times are on another
#: clock than the rows' (events stamped now into rows last updated years ago).
MASS_EXPIRY_SHARE = 0.5


@numba.njit(cache=True, nogil=True)
def _gather(weights, rows, out, column):
    dim = weights.shape[1]
    for i in range(rows.size):
        prefetch_row_ahead(weights, rows, i)
        row = rows[i]
        if row >= 0:
            for j in range(dim):
                out[i, column + j] = weights[row, j]
        else:
            for j in range(dim):
                out[i, column + j] = 0.0


@numba.njit(cache=True, nogil=True)
def sum_rows_by_group(groups, count, values):
    """``[count, dim]``: row ``g`` is the sum of the rows of ``values`` in group ``g``, in their order."""
    summed = np.zeros((count, values.shape[1]), dtype=values.dtype)
    for i in range(groups.size):
        g = groups[i]
        for j in range(values.shape[1]):
            summed[g, j] += values[i, j]
    return summed


@numba.njit(cache=True, nogil=True)
def _sum_by_group(groups, count, keys, rows, grads, times, counts):
    """Per group ``0..count-1``: its key and row, its gradients summed in occurrence order, its
    latest time and its summed occurrence count."""
    group_keys = np.empty(count, dtype=np.int64)
    group_rows = np.empty(count, dtype=np.int64)
    latest = np.zeros(count, dtype=np.int64)
    total = np.zeros(count, dtype=np.int64)
    for i in range(groups.size):
        g = groups[i]
        group_keys[g] = keys[i]
        group_rows[g] = rows[i]
        total[g] += counts[i]
        if times[i] > latest[g]:
            latest[g] = times[i]
    return group_keys, group_rows, sum_rows_by_group(groups, count, grads), latest, total


@numba.njit(cache=True, nogil=True)
def _record(timestamps, changed_at, rows, req_time, change):
    """Rows ``rows`` were written by change number ``change`` at ``req_time`` (a row keeps its newest time)."""
    for i in range(rows.size):
        r = rows[i]
        if req_time[i] > timestamps[r]:
            timestamps[r] = req_time[i]
        changed_at[r] = change


def _utc(seconds: int) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _slots_of(keys: np.ndarray) -> np.ndarray:
    return (keys >> SIGNATURE_BITS_V2) & MAX_SLOT_V2


@dataclasses.dataclass(frozen=True)
class RowHint:
    """Where a lookup found its ids: ``rows`` (-1 where absent) under the table's row ``numbering``,
    when the table held ``size`` rows.

    :meth:`EmbeddingHashTable.apply_gradients` of the same ids reuses the rows instead of searching the
    map again, unless rows were renumbered (eviction, load) since, which gives the table a new numbering.
    Rows are only appended under one numbering, so while the table still holds ``size`` rows the
    absent ids are still absent.
    """

    rows: np.ndarray
    numbering: object
    size: int

    @staticmethod
    def concat(hints: "list[RowHint | None]") -> "RowHint | None":
        """One hint for the concatenated ids of several lookups, if each left one under the same numbering."""
        if not hints or any(h is None or h.numbering is not hints[0].numbering for h in hints):
            return None
        if len(hints) == 1:
            return hints[0]
        return RowHint(np.concatenate([h.rows for h in hints]), hints[0].numbering, min(h.size for h in hints))


class EmbeddingHashTable:
    """FID -> embedding row store that grows on demand.

    Args:
        slices: the slices of every row, in column order.
        slots: per-slot admission/expiry settings; slots not listed use the defaults.
        default_occurrence_threshold: T for unlisted slots (admitted on the (T+1)-th occurrence).
        default_expire_time: expiry in days for unlisted slots.
        seed: keys the initializers: a row's initial value depends on (seed, slice, FID) alone
            (:class:`~monolith.optim.fid_random.FidRandom`), so an id starts alike in every table
            built alike, in one process and in N.
        initial_capacity: ids the table holds before it first grows (Monolith's ``initial_capacity``
            of ``CuckooHashTableConfig``). Its map slots and row stores are allocated and paged in
            when the table is built, so training pays no growth until it holds that many ids.
        occurrence_filter: None counts occurrences exactly, one counter per id not yet admitted
            (dropped once unseen for the slot's expire time); a :class:`SlidingHashFilterConfig` counts
            them in fixed memory as Monolith does, admitting a few ids early.

    Example::

        table = EmbeddingHashTable([SliceConfig("vec", 2, optimizer=SgdOptimizer(0.1))])
        table.lookup(np.array([7]))                       # tensor([[0., 0.]]), nothing inserted
        table.apply_gradients(np.array([7]), torch.ones(1, 2))
        len(table)                                        # 1
    """

    def __init__(
        self,
        slices: Sequence[SliceConfig],
        slots: Iterable[SlotConfig] = (),
        *,
        default_occurrence_threshold: int = 0,
        default_expire_time: int = DEFAULT_EXPIRE_TIME_DAYS,
        seed: int = 0,
        name: str = "table",
        initial_capacity: int = 0,
        occurrence_filter: SlidingHashFilterConfig | None = None,
    ) -> None:
        if isinstance(initial_capacity, bool) or not isinstance(initial_capacity, int) or initial_capacity < 0:
            raise ValueError(f"table '{name}': initial_capacity must be an int >= 0, got {initial_capacity!r}")
        self.name = name
        self.slices: list[SliceConfig] = []
        self.seed = seed
        self.initial_capacity = initial_capacity
        self._map = FidMap(max(initial_capacity, 768))
        self._grouper = KeyGrouper()
        self._numbering = object()
        # Reserved as a table grown to initial_capacity would be, so that growing past it copies nothing.
        self._capacity = _store_capacity(initial_capacity, 1024)
        #: Rows below this are paged in (written, or populated ahead by page_in_ahead).
        self._paged_to = initial_capacity
        #: The stores of the next growth, being allocated and paged in ahead: (their capacity, each to come).
        self._next_stores: tuple[int, list] | None = None
        self._keys = self._new_store(np.int64)
        self._timestamps = self._new_store(np.int64)
        #: Newest request time of any update, filtered ids' included ("now" for expiry, as Monolith's
        #: max_update_ts_sec_); kept across eviction and checkpoints.
        self._max_update_time = 0
        self._warned_mass_expiry = False
        # Change counter of each row's last write, so the rows changed since a marker can be
        # pushed to serving (Monolith's real-time parameter sync).
        self._changes = 0
        self._changed_at = self._new_store(np.int64)
        self._weights: list[np.ndarray] = []
        self._states: list[np.ndarray] = []
        SlotConfig(0, default_occurrence_threshold, default_expire_time)  # validates the defaults
        self._thresholds = np.full(MAX_SLOT_V2 + 1, default_occurrence_threshold, dtype=np.int32)
        self._expire_days = np.full(MAX_SLOT_V2 + 1, default_expire_time, dtype=np.int64)
        self._filter = (OccurrenceFilter(self._thresholds) if occurrence_filter is None
                        else SlidingHashFilter(self._thresholds, occurrence_filter))
        self._filter.check_threshold(0, default_occurrence_threshold)
        for slot in slots:
            self.configure_slot(slot)
        for config in slices:
            self.add_slice(config)

    # ----------------------------------------------------------------- configuration
    def add_slice(self, config: SliceConfig) -> None:
        """Appends a slice; rows that already exist get it freshly initialised."""
        if any(s.name == config.name for s in self.slices):
            raise ValueError(f"table '{self.name}' already has a slice named '{config.name}'")
        weights = self._new_store(np.float32, config.dim)
        state = self._new_store(np.float32, config.optimizer.state_width(config.dim))
        self.slices.append(config)
        self._weights.append(weights)
        self._states.append(state)
        self._initialize(len(self.slices) - 1, 0, len(self))
        self._paged_to = min(self._paged_to, max(len(self), self.initial_capacity))  # the new stores' pages

    def _new_store(self, dtype: type, width: int | None = None) -> np.ndarray:
        """A zeroed row store of the table's capacity, the first ``initial_capacity`` rows paged in.

        ``np.zeros`` maps pages lazily; writing the reserved rows once makes the OS back them now
        rather than one page fault at a time while training.
        """
        store = np.zeros((self._capacity,) if width is None else (self._capacity, width), dtype=dtype)
        store[: self.initial_capacity] = 0
        return store

    def configure_slot(self, config: SlotConfig) -> None:
        """Sets the occurrence threshold and expire time of one slot."""
        self._filter.check_threshold(config.slot, config.occurrence_threshold)
        self._thresholds[config.slot] = config.occurrence_threshold
        self._expire_days[config.slot] = config.expire_time

    def slot_config(self, slot: int) -> SlotConfig:
        """The admission/expiry settings in force for ``slot``."""
        return SlotConfig(slot, int(self._thresholds[slot]), int(self._expire_days[slot]))

    @property
    def dim(self) -> int:
        """Total row width: the sum of the slice dims."""
        return sum(s.dim for s in self.slices)

    def slice_columns(self, name: str) -> slice:
        """Column range of slice ``name`` within a row."""
        start = 0
        for config in self.slices:
            if config.name == name:
                return slice(start, start + config.dim)
            start += config.dim
        raise KeyError(f"table '{self.name}' has no slice '{name}'; slices: {[s.name for s in self.slices]}")

    def __len__(self) -> int:
        return len(self._map)

    @property
    def capacity(self) -> int:
        """How many ids the table holds before its map or its row stores next grow."""
        return min(self._map.room, self._capacity)

    @property
    def nbytes(self) -> int:
        """Bytes of the map and of the rows in use (keys, times, weights and optimizer state).

        Reserved row capacity is not counted: its pages take memory only once rows are written.
        """
        per_row = sum(a.itemsize * int(np.prod(a.shape[1:])) for a in self._weights + self._states)
        per_row += self._keys.itemsize + self._timestamps.itemsize + self._changed_at.itemsize
        return self._map.nbytes + len(self) * per_row

    # ----------------------------------------------------------------- reading
    def lookup(self, ids) -> torch.Tensor:
        """Rows of ``ids`` as float32 ``[n, dim]``; zeros for absent ids, which are not inserted."""
        return self.lookup_with_hint(ids)[0]

    def lookup_with_hint(self, ids) -> tuple[torch.Tensor, RowHint]:
        """:meth:`lookup`, and a :class:`RowHint` that spares :meth:`apply_gradients` of the same ids a search."""
        rows = self._map.find(_as_ids(ids))
        return torch.from_numpy(self._gather(rows)), RowHint(rows, self._numbering, len(self))

    def _gather(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((rows.size, self.dim), dtype=np.float32)
        column = 0
        for weights in self._weights:
            _gather(weights, rows, out, column)
            column += weights.shape[1]
        return out

    def contains(self, ids) -> np.ndarray:
        """Bool mask of the ids that own a row."""
        return self._map.find(_as_ids(ids)) >= 0

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        """All ``(fids [n], rows [n, dim])`` currently in the table, in row order."""
        size = len(self)
        return self._keys[:size].copy(), self._gather(np.arange(size, dtype=np.int64))

    # ----------------------------------------------------------------- training
    def apply_gradients(
        self,
        ids,
        grads: torch.Tensor | np.ndarray,
        global_step: int = 0,
        req_time: int | np.ndarray | None = None,
        dedup: str = DEFAULT_DEDUP,
        *,
        hint: RowHint | None = None,
        occurrences: np.ndarray | torch.Tensor | None = None,
    ) -> None:
        """Updates the rows of ``ids`` with ``grads`` (``[n, dim]``) through each slice's optimizer.

        Absent ids that pass their slot's occurrence filter are inserted (initialised) first.
        ``dedup="sum"`` (the default) first sums the gradients of each distinct id, then filters it
        once with all its occurrences counted, and applies one update (Monolith's sync training;
        ``occurrences`` tells how many occurrences each entry stands for, for an id already summed
        elsewhere; default 1 each). ``dedup="local"`` applies one update per occurrence, in order,
        each occurrence counted and filtered on its own (Monolith's single-process Python path); a
        stateful optimizer (Adam, Adagrad) then takes as many steps as an id repeats.
        ``req_time`` (seconds, scalar or per id; default now) becomes the rows' last-update time.
        ``hint``, from :meth:`lookup_with_hint` of these same ids, saves searching for them again.
        """
        if dedup not in DEDUP_MODES:
            raise ValueError(f"dedup must be one of {DEDUP_MODES}, got {dedup!r}")
        keys = _as_ids(ids)
        grads = _as_grads(grads, keys.size, self.dim)
        times = _as_times(req_time, keys.size)
        if times.size:
            self.advance_clock(times.max())
        rows = self._find(keys, hint)
        counts = None
        if dedup == "sum":
            counts = (np.ones(keys.size, dtype=np.int64) if occurrences is None
                      else _as_occurrences(occurrences, keys.size))
            # Grouping by hash and summing in a kernel beat np.unique and np.add.at several-fold.
            groups, count = self._grouper.group(keys)
            keys, rows, grads, times, counts = _sum_by_group(groups, count, keys, rows, grads, times, counts)
        rows = self._admit_missing(keys, rows, times, counts)
        updated = rows >= 0
        if not updated.all():
            rows, grads, times = rows[updated], grads[updated], times[updated]
        if rows.size == 0:
            return
        column = 0
        for config, weights, state in zip(self.slices, self._weights, self._states):
            slice_grads = np.ascontiguousarray(grads[:, column : column + config.dim])
            config.optimizer.apply(weights, state, rows, slice_grads, config.learning_rate(global_step), global_step)
            column += config.dim
        self._record_writes(rows, times)

    def _record_writes(self, rows: np.ndarray, times: np.ndarray) -> None:
        self._changes += 1
        _record(self._timestamps, self._changed_at, rows, times, self._changes)

    @property
    def change_marker(self) -> int:
        """A marker of the table's writes so far, for :meth:`changed_since`."""
        return self._changes

    def changed_since(self, marker: int) -> tuple[np.ndarray, np.ndarray]:
        """``(fids, rows)`` of the rows written (updated, inserted, assigned) after ``marker``."""
        changed = np.flatnonzero(self._changed_at[: len(self)] > marker)
        return self._keys[changed].copy(), self._gather(changed)

    @property
    def filters_occurrences(self) -> bool:
        """Whether a slot of this table has an occurrence threshold (absent ids are counted)."""
        return self._filter.enabled

    def _find(self, keys: np.ndarray, hint: RowHint | None = None) -> np.ndarray:
        """Rows of ``keys``, -1 where absent."""
        if hint is not None and hint.numbering is self._numbering and hint.rows.shape == keys.shape:
            rows = hint.rows.copy()
            if hint.size != len(self):
                # Ids absent at lookup time may have been inserted by an update since.
                absent = np.flatnonzero(rows < 0)
                rows[absent] = self._map.find(keys[absent])
            return rows
        return self._map.find(keys)

    def _admit_missing(self, keys: np.ndarray, rows: np.ndarray, times: np.ndarray,
                       counts: np.ndarray | None = None) -> np.ndarray:
        """``rows`` with the absent ids that pass the filter inserted; -1 for those filtered out.

        ``times``: request time of each key; ``counts``: occurrences each key stands for (distinct
        keys); None: each key is one occurrence, counted in order.
        """
        missing = np.flatnonzero(rows < 0)
        if missing.size == 0:
            return rows
        admitted = missing[self._filter.admit(keys[missing], None if counts is None else counts[missing],
                                              times[missing])]
        if admitted.size:
            rows[admitted] = self._insert(keys[admitted])
        return rows

    def _insert(self, keys: np.ndarray) -> np.ndarray:
        """Rows of ``keys``, creating (initialising) rows for the absent ones."""
        old_size = len(self)
        rows = self._map.find_or_insert(keys)
        if len(self) > old_size:
            self._grow_stores(len(self))
            new = rows >= old_size
            # Repeats of a new key scatter the same key to its row, so no dedup is needed.
            self._keys[rows[new]] = keys[new]
            self._timestamps[old_size : len(self)] = 0
            for index in range(len(self.slices)):
                self._initialize(index, old_size, len(self))
            self._page_in_ahead()
        return rows

    def _page_in_ahead(self) -> None:
        """Once fewer than half a chunk of the rows reserved ahead are paged in, has the next chunk
        (1/32 of the rows held, at least ``_PAGE_IN_ROWS``) paged in on a background thread, so that
        appending rows does not wait for page faults. Only for stores reserved far ahead: small ones
        double, writing their pages as they copy."""
        size = len(self)
        if self._capacity < _RESERVE_ROWS:
            self._prepare_growth(size)
            return
        chunk = max(_PAGE_IN_ROWS, size // 32)
        if self._paged_to - size >= chunk // 2:
            return
        start, stop = max(self._paged_to, size), min(self._capacity, size + chunk)
        page_in_ahead(self._stores(), start, stop)
        self._paged_to = stop

    def _prepare_growth(self, size: int) -> None:
        """Once a store that doubles is half full, has the stores it will grow into allocated and the rows it
        will copy and append next paged in on a background thread (see :meth:`_grow_stores`)."""
        if self._next_stores is not None or self._capacity < _PAGE_IN_ROWS or 2 * size < self._capacity:
            return
        capacity = _store_capacity(self._capacity + 1, self._capacity)
        rows = min(capacity, self._capacity + max(_PAGE_IN_ROWS, self._capacity // 4))
        futures = [populated_ahead((capacity, *store.shape[1:]), store.dtype, rows) for store in self._stores()]
        if all(future is not None for future in futures):
            self._next_stores = (capacity, futures)

    def _stores(self) -> list[np.ndarray]:
        """Every row store: keys, times, change markers, then each slice's weights and its optimizer state."""
        return [self._keys, self._timestamps, self._changed_at, *self._weights, *self._states]

    def _initialize(self, index: int, start: int, stop: int) -> None:
        if stop <= start:
            return
        config = self.slices[index]
        # Drawn from the rows' FIDs: an id starts from the same vector in any table built alike, in
        # one process or on any rank, whatever order rows are created in.
        draws = FidRandom(self.seed, index, self._keys[start:stop])
        config.initializer.initialize(self._weights[index][start:stop], draws)
        config.optimizer.init_state(self._states[index][start:stop])

    def _grow_stores(self, size: int) -> None:
        if size <= self._capacity:
            return
        capacity = _store_capacity(size, self._capacity)
        stores = self._stores()
        prepared, self._next_stores = self._next_stores, None
        if prepared is None or prepared[0] != capacity or len(prepared[1]) != len(stores):
            prepared = (capacity, [None] * len(stores))
        grown = []
        for store, future in zip(stores, prepared[1]):
            new = None if future is None else future.get()
            if new is None or new.shape[1:] != store.shape[1:] or new.dtype != store.dtype:
                new = np.zeros((capacity, *store.shape[1:]), dtype=store.dtype)
            new[: self._capacity] = store
            grown.append(new)
        slices = len(self._weights)
        self._keys, self._timestamps, self._changed_at = grown[:3]
        self._weights, self._states = grown[3 : 3 + slices], grown[3 + slices :]
        self._paged_to = self._capacity  # the copy wrote the old rows
        self._capacity = capacity

    def assign(self, ids, values: torch.Tensor | np.ndarray, req_time: int | np.ndarray | None = None) -> None:
        """Sets the rows of ``ids`` to ``values`` (``[n, dim]``), inserting absent ids unfiltered.

        Optimizer state of new rows is initialised; that of existing rows is kept. Used to load
        rows pushed from a trainer and to seed tests.
        """
        keys = _as_ids(ids)
        values = _as_grads(values, keys.size, self.dim)
        rows = self._insert(keys)
        column = 0
        for config, weights in zip(self.slices, self._weights):
            weights[rows] = values[:, column : column + config.dim]
            column += config.dim
        self._record_writes(rows, _as_times(req_time, keys.size))

    # ----------------------------------------------------------------- expiry
    @property
    def max_update_time(self) -> int:
        """The table's expiry clock: the newest request time of any update (``now`` for expiry)."""
        return self._max_update_time

    def advance_clock(self, req_time: int) -> None:
        """Moves the expiry clock forward to ``req_time`` if it is newer (never back).

        A shard of a table sharded over ranks calls it with the newest request time of a step's
        updates on every rank, so that it expires rows as one table seeing every update would.
        """
        self._max_update_time = max(self._max_update_time, int(req_time))

    def _expiry_now(self, now: int | None) -> int:
        """``now`` for expiry: as given, else the expiry clock (or a newer assigned row's time)."""
        if now is not None:
            return int(now)
        size = len(self)
        return max(self._max_update_time, int(self._timestamps[:size].max())) if size else self._max_update_time

    def _unexpired(self, now: int) -> np.ndarray:
        """Mask of the rows within their slot's expire time at ``now``.

        Warns once per table when more than :data:`MASS_EXPIRY_SHARE` of the rows are expired.
        """
        size = len(self)
        timestamps = self._timestamps[:size]
        if size == 0:
            return np.ones(0, dtype=np.bool_)
        expire_days = self._expire_days[_slots_of(self._keys[:size])]
        keep = now - timestamps < expire_days * _SECONDS_PER_DAY
        expired = size - int(np.count_nonzero(keep))
        if expired > MASS_EXPIRY_SHARE * size and not self._warned_mass_expiry:
            self._warned_mass_expiry = True
            logger.warning(
                "table '%s': expiry drops %d of its %d rows (%.1f%%, more than %d%%): now is %s (the newest "
                "request time), the dropped rows were last updated %s to %s, expire_time %d..%d days. Request "
                "times on another clock than the rows' (events stamped now into rows from another time) do "
                "this. Warned once per table.", self.name, expired, size, 100.0 * expired / size,
                round(100 * MASS_EXPIRY_SHARE), _utc(now), _utc(int(timestamps[~keep].min())),
                _utc(int(timestamps[~keep].max())), int(expire_days[~keep].min()), int(expire_days[~keep].max()))
        return keep

    def evict(self, now: int | None = None) -> int:
        """Drops rows not updated for their slot's expire time; returns how many were dropped.

        ``now`` (seconds) defaults to the newest update time in the table, as Monolith does.
        """
        return int(self.evict_expired(now).size)

    def evict_expired(self, now: int | None = None) -> np.ndarray:
        """Like :meth:`evict`, returning the FIDs dropped (serving must drop them too).

        The exact occurrence filter drops its counters of ids not seen for their slot's expire time
        as well, and those of admitted ids.
        """
        now = self._expiry_now(now)
        keep = self._unexpired(now)
        dropped = self._keys[: len(self)][~keep].copy()
        if dropped.size:
            self._compact(np.flatnonzero(keep))
        if self._filter.enabled and len(self._filter):
            # Admitted ids need no counter; an evicted id starts counting again from zero.
            self._filter.forget(np.concatenate([self._keys[: len(self)], dropped]))
            self._filter.forget_unseen(now, self._expire_days)
        return dropped

    def _compact(self, rows: np.ndarray) -> None:
        size = rows.size
        self._keys[:size] = self._keys[rows]
        self._timestamps[:size] = self._timestamps[rows]
        self._changed_at[:size] = self._changed_at[rows]
        for weights, state in zip(self._weights, self._states):
            weights[:size] = weights[rows]
            state[:size] = state[rows]
        self._map.rebuild(self._keys[:size], room_for=self.initial_capacity)
        self._numbering = object()

    # ----------------------------------------------------------------- persistence
    def state_dict(self, skip_expired: bool = True) -> dict[str, np.ndarray]:
        """Keys, rows, optimizer state, timestamps and filter counters as plain arrays.

        With ``skip_expired`` rows past their expire time are left out, as Monolith skips them on
        save, and so are the exact filter's counters of ids not seen for that long.
        """
        rows = np.arange(len(self))
        now = self._expiry_now(None)
        if skip_expired:
            rows = rows[self._unexpired(now)]
        meta = {
            "format": _FORMAT,
            "version": _FORMAT_VERSION,
            "name": self.name,
            "slices": [s.describe() for s in self.slices],
            "slot_thresholds": _per_slot_settings(self._thresholds),
            "slot_expire_days": _per_slot_settings(self._expire_days),
            "max_update_time": self._max_update_time,
        }
        state = {
            "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
            "keys": self._keys[rows],
            "timestamps": self._timestamps[rows],
            **(self._filter.state(now, self._expire_days) if skip_expired else self._filter.state()),
        }
        for index, (weights, opt_state) in enumerate(zip(self._weights, self._states)):
            state[f"weights_{index}"] = weights[rows]
            state[f"state_{index}"] = opt_state[rows]
        return state

    def load_state_dict(self, state: dict[str, np.ndarray], source: str = "state") -> None:
        """Replaces the contents with a :meth:`state_dict` of a table with the same slices."""
        meta = _read_meta(state, source)
        theirs = [(s["name"], s["dim"], s["optimizer"]["type"]) for s in meta["slices"]]
        ours = [(s.name, s.dim, type(s.optimizer).__name__) for s in self.slices]
        if theirs != ours:
            raise ValueError(f"{source}: table slices {theirs} do not match this table's {ours}")
        keys = np.ascontiguousarray(state["keys"], dtype=np.int64)
        size = keys.size
        _check_state_shapes(state, meta, size, [s.shape[1] for s in self._states], source)
        try:
            self._filter.check_state(state)
        except ValueError as error:
            raise ValueError(f"{source}: {error}") from None
        if self._grouper.group(keys)[1] != size:
            raise ValueError(f"{source}: the table's keys repeat a FID")
        self._map.rebuild(keys, room_for=self.initial_capacity)
        self._numbering = object()
        self._capacity = max(size, _store_capacity(self.initial_capacity, 1024))
        self._paged_to = max(size, self.initial_capacity)
        self._next_stores = None
        self._keys = self._new_store(np.int64)
        self._timestamps = self._new_store(np.int64)
        self._changes += 1  # every loaded row counts as changed
        self._changed_at = self._new_store(np.int64)
        self._changed_at[:size] = self._changes
        self._keys[:size] = keys
        self._timestamps[:size] = state["timestamps"]
        for index, config in enumerate(self.slices):
            self._weights[index] = self._new_store(np.float32, config.dim)
            self._states[index] = self._new_store(np.float32, self._states[index].shape[1])
            self._weights[index][:size] = state[f"weights_{index}"]
            self._states[index][:size] = state[f"state_{index}"]
        self._max_update_time = int(meta.get("max_update_time", 0))
        self._filter.load_state({k: v for k, v in state.items() if k.startswith("filter_")}, seen=self._max_update_time)

    def save(self, path: str | os.PathLike, skip_expired: bool = True) -> None:
        """Writes the table to ``path`` atomically (temporary file, fsync, rename)."""
        with atomic_write(path) as f:
            np.savez(f, **self.state_dict(skip_expired))

    def load(self, path: str | os.PathLike) -> None:
        """Reads a file written by :meth:`save`; a truncated or foreign file raises ``ValueError``."""
        self.load_state_dict(read_table_file(path), source=os.fspath(path))


def read_table_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The arrays of a table file (:meth:`EmbeddingHashTable.save`); ``ValueError`` naming the file
    when it is truncated or not such a file, ``FileNotFoundError`` when it is missing."""
    path = os.fspath(path)
    try:
        npz = np.load(path, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise ValueError("a single array, not an archive of a table's arrays")
        with npz:
            return {name: npz[name] for name in npz.files}
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, EOFError, ValueError, OSError, KeyError) as error:
        raise ValueError(f"{path}: not a readable embedding table file ({error})") from error


def _per_slot_settings(values: np.ndarray) -> dict:
    """A per-slot array as its most common value and the slots that differ (compact in the meta)."""
    distinct, counts = np.unique(values, return_counts=True)
    default = distinct[np.argmax(counts)]
    return {"default": int(default), "slots": {int(s): int(values[s]) for s in np.flatnonzero(values != default)}}


def _check_state_shapes(state: dict[str, np.ndarray], meta: dict, size: int, state_widths: list[int],
                        source: str) -> None:
    """Raises, naming the entry, when an array of ``state`` does not hold one row per key."""
    expected = {"keys": (size,), "timestamps": (size,)}
    for index, (config, width) in enumerate(zip(meta["slices"], state_widths)):
        expected[f"weights_{index}"] = (size, config["dim"])
        expected[f"state_{index}"] = (size, width)
    for name, shape in expected.items():
        if state[name].shape != shape:
            raise ValueError(f"{source}: '{name}' has shape {list(state[name].shape)}, expected {list(shape)}")


def _read_meta(state: dict[str, np.ndarray], source: str) -> dict:
    try:
        meta = json.loads(bytes(state["meta"]).decode())
    except (KeyError, ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{source}: not an embedding table (no readable 'meta' entry)") from error
    if meta.get("format") != _FORMAT:
        raise ValueError(f"{source}: format {meta.get('format')!r}, expected {_FORMAT!r}")
    if meta.get("version") != _FORMAT_VERSION:
        raise ValueError(f"{source}: format version {meta.get('version')}, expected {_FORMAT_VERSION}")
    if not isinstance(meta.get("slices"), list) or not all(isinstance(x, dict) and "dim" in x for x in meta["slices"]):
        raise ValueError(f"{source}: the table's meta has no readable 'slices'")
    required = {"keys", "timestamps", "filter_keys", "filter_counts"}
    required |= {f"{kind}_{i}" for i in range(len(meta["slices"])) for kind in ("weights", "state")}
    missing = sorted(required - set(state))
    if missing:
        raise ValueError(f"{source}: embedding table file lacks {missing}")
    return meta


#: Row stores double while small; from this many rows on they are reserved in large steps.
_RESERVE_FROM_ROWS = 1 << 16
#: Rows of the first large reservation (later ones are 8x the rows needed).
_RESERVE_ROWS = 1 << 24
#: Fewest rows a table reserved that far ahead has paged in ahead of its appends (see _page_in_ahead).
_PAGE_IN_ROWS = 1 << 14


def _store_capacity(size: int, capacity: int) -> int:
    """Row capacity to hold ``size`` rows, grown from ``capacity``.

    ``np.zeros`` of a large array maps zero pages that the OS backs only when first written, so
    capacity beyond the rows in use costs address space, not memory. A large table therefore
    reserves far ahead: it then grows for millions of rows without copying its stores (a copy
    that would stall training for seconds) and touches each page once, not once per doubling.
    """
    while capacity < min(size, _RESERVE_FROM_ROWS):
        capacity *= 2
    if capacity >= size:
        return capacity
    return max(_RESERVE_ROWS, 8 * size)


def _as_ids(ids) -> np.ndarray:
    """int64 FIDs (uint64-form ids wrap to their int64 bit pattern) from a tensor, array or list."""
    if isinstance(ids, torch.Tensor):
        if ids.dtype == torch.int64 and ids.dim() == 1 and ids.device.type == "cpu" and ids.is_contiguous():
            return ids.numpy()  # a batch's ids: the common case, read in place
        ids = ids.detach().cpu().numpy()
    elif not isinstance(ids, np.ndarray):
        ids = _int_list_as_array(ids)
    if ids.dtype != np.int64:
        if ids.dtype.kind not in "iu":
            raise ValueError(f"FIDs must be integers, got dtype {ids.dtype}")
        ids = ids.view(np.int64) if ids.dtype == np.uint64 else ids.astype(np.int64)
    return np.ascontiguousarray(ids.reshape(-1))


def _int_list_as_array(ids) -> np.ndarray:
    """A Python list of ints as int64 (uint64 ids at or above 2^63 as their two's complement)."""
    array = np.asarray(ids)
    if array.size == 0:
        return array.astype(np.int64)
    if array.dtype.kind == "f" or array.dtype == object:
        # numpy falls back to float64/object for ints beyond int64 mixed with others.
        flat = np.ravel(np.asarray(ids, dtype=object))
        if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in flat):
            return np.array([fid_to_int64(int(v)) for v in flat], dtype=np.int64).reshape(array.shape)
    return array


def _as_grads(grads, n: int, dim: int) -> np.ndarray:
    if isinstance(grads, torch.Tensor):
        grads = grads.detach().cpu()
        grads = (grads if grads.dtype in (torch.float32, torch.float64, torch.float16) else grads.float()).numpy()
    grads = np.ascontiguousarray(grads, dtype=np.float32)
    if grads.shape != (n, dim):
        raise ValueError(f"expected values of shape [{n}, {dim}] (one row per id), got {list(grads.shape)}")
    return grads


def _as_occurrences(occurrences, n: int) -> np.ndarray:
    if isinstance(occurrences, torch.Tensor):
        occurrences = occurrences.detach().cpu().numpy()
    counts = np.ascontiguousarray(occurrences, dtype=np.int64).reshape(-1)
    if counts.size != n:
        raise ValueError(f"occurrences has {counts.size} entries for {n} ids")
    if counts.size and counts.min() < 1:
        raise ValueError("occurrences must be at least 1 per id")
    return counts


def _as_times(req_time, n: int) -> np.ndarray:
    if req_time is None:
        req_time = int(time.time())
    if isinstance(req_time, torch.Tensor):
        req_time = req_time.detach().cpu().numpy()
    times = np.asarray(req_time, dtype=np.int64)
    if times.ndim == 0:
        return np.full(n, int(times), dtype=np.int64)
    times = times.reshape(-1)
    if times.size != n:
        raise ValueError(f"req_time has {times.size} entries for {n} ids")
    return np.ascontiguousarray(times)
