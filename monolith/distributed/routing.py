"""Where each id of a lookup goes: its owner rank, and its place in the exchange buffers.

A lookup's ids are deduplicated (:class:`~monolith.table.hash_map.KeyGrouper`), and the distinct ids
are laid out by owner rank (stable: in order of first appearance within a rank), which is the order
they travel in, the order their rows come back in and the order their summed gradients go out in.
:func:`plan_route` does that in one pass of a numba kernel; a lookup then needs only each
occurrence's position in that layout to read its row and to add its gradient.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

_GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15 as int64: the products wrap around in int64


def shard_of(ids: torch.Tensor, world_size: int) -> torch.Tensor:
    """Owner rank of each FID: a multiplicative hash of the id modulo ``world_size``."""
    mixed = (ids * _GOLDEN) >> 33  # the high bits depend on every bit of the id
    return torch.remainder(mixed & 0x7FFFFFFF, world_size)


@numba.njit(cache=True, inline="always")
def _owner(fid: np.int64, world_size: np.int64) -> np.int64:
    # shard_of, one id at a time (arithmetic shift and wrapping product, as torch's int64).
    mixed = (fid * np.int64(_GOLDEN)) >> np.int64(33)
    return (mixed & np.int64(0x7FFFFFFF)) % world_size


@numba.njit(cache=True)
def _plan(ids, groups, count, times, world_size, width):
    n = ids.size
    per_id_times = times.size == n
    unique = np.empty(count, dtype=np.int64)
    latest = np.empty(count, dtype=np.int64)
    occurrences = np.zeros(count, dtype=np.int64)
    seen = 0
    for j in range(n):
        g = groups[j]
        t = times[j] if per_id_times else times[0]
        occurrences[g] += 1
        if g == seen:  # groups are numbered in order of first appearance
            unique[g] = ids[j]
            latest[g] = t
            seen += 1
        elif t > latest[g]:
            latest[g] = t
    owners = np.empty(count, dtype=np.int64)
    counts = np.zeros(world_size, dtype=np.int64)
    for g in range(count):
        owners[g] = _owner(unique[g], world_size)
        counts[owners[g]] += 1
    next_slot = np.empty(world_size, dtype=np.int64)
    start = 0
    for r in range(world_size):
        next_slot[r] = start
        start += counts[r]
    position = np.empty(count, dtype=np.int64)
    keyed = np.empty((count, width), dtype=np.int64)
    for g in range(count):
        p = next_slot[owners[g]]
        next_slot[owners[g]] = p + 1
        position[g] = p
        keyed[p, 0] = unique[g]
        keyed[p, 1] = latest[g]
        if width == 3:
            keyed[p, 2] = occurrences[g]
    occurrence_position = np.empty(n, dtype=np.int64)
    for j in range(n):
        occurrence_position[j] = position[groups[j]]
    return keyed, counts, occurrence_position


def plan_route(ids: np.ndarray, groups: np.ndarray, count: int, times: np.ndarray,
               world_size: int, with_occurrences: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lays the distinct ids of one lookup out by owner rank.

    Args:
        ids: int64 ``[n]``, the lookup's ids (with repeats).
        groups: ``[n]``, the distinct-id number of each occurrence, numbered ``0..count-1`` in
            order of first appearance (:meth:`KeyGrouper.group`).
        count: number of distinct ids.
        times: int64 request times, ``[n]`` (one per occurrence) or ``[1]`` (the whole lookup).
        world_size: number of ranks.
        with_occurrences: add each distinct id's number of occurrences (for occurrence filters).

    Returns:
        ``keyed`` int64 ``[count, 2]``: (id, its latest request time) of the distinct ids, those
        of rank 0 first, then rank 1's, ... (``[count, 3]`` with the occurrences as third column);
        ``counts`` ``[world_size]``: distinct ids per rank; ``positions`` ``[n]``: the row of
        ``keyed`` each occurrence belongs to.
    """
    return _plan(ids, groups, count, times, world_size, 3 if with_occurrences else 2)
