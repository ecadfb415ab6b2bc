"""Splitting and merging table states, for re-sharding checkpoints across ranks.

A table state (:meth:`EmbeddingHashTable.state_dict`) is keyed by FID row by row, so shards
written by N ranks merge into one state, and one state splits into the part any rank owns.
"""

from __future__ import annotations

import json
import logging
from typing import Callable, Sequence

import numpy as np

from monolith.table.sliding_hash_filter import STATE_KEYS as _SLIDING_FILTER

logger = logging.getLogger(__name__)

_PER_ROW = ("keys", "timestamps")
#: The exact occurrence filter's entries, one per id counted ("filter_seen" is absent from older files).
_PER_FILTER_ENTRY = ("filter_keys", "filter_counts", "filter_seen")


def _per_row(state: dict[str, np.ndarray]) -> list[str]:
    return [*_PER_ROW, *(k for k in state if k.startswith(("weights_", "state_")))]


def _per_filter_entry(states: Sequence[dict[str, np.ndarray]]) -> list[str]:
    return [k for k in _PER_FILTER_ENTRY if all(k in s for s in states)]


def merge_states(states: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One state holding the rows and counters of all ``states`` (shards of one table).

    Sliding hash filters hold no ids, so they cannot merge: the state keeps one only when it is of
    a single shard (:func:`with_own_filter` gives each rank back its own).
    """
    if not states:
        raise ValueError("no table shards to merge")
    slices = [json.loads(bytes(s["meta"]).decode())["slices"] for s in states]
    if any(s != slices[0] for s in slices[1:]):
        raise ValueError("table shards disagree on their slices; they come from different models")
    drop = _PER_FILTER_ENTRY + (_SLIDING_FILTER if len(states) > 1 else ())
    merged = {k: v for k, v in states[0].items() if k not in drop}
    for key in _per_row(states[0]) + _per_filter_entry(states):
        merged[key] = np.concatenate([s[key] for s in states])
    metas = [json.loads(bytes(s["meta"]).decode()) for s in states]
    # "Now" for expiry is the newest update any shard saw.
    meta = {**metas[0], "max_update_time": max(m.get("max_update_time", 0) for m in metas)}
    merged["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    return merged


def select_keys(state: dict[str, np.ndarray], keep: Callable[[np.ndarray], np.ndarray]) -> dict[str, np.ndarray]:
    """The part of ``state`` whose FIDs satisfy ``keep`` (a vectorised predicate on int64 FIDs),
    without a sliding hash filter, whose cells hold no ids."""
    selected = {k: v for k, v in state.items() if k not in _SLIDING_FILTER}
    rows = keep(state["keys"])
    for key in _per_row(state):
        selected[key] = state[key][rows]
    counters = keep(state["filter_keys"])
    for key in _per_filter_entry([state]):
        selected[key] = state[key][counters]
    return selected


def with_own_filter(state: dict[str, np.ndarray], shards: Sequence[dict[str, np.ndarray]], rank: int,
                    world_size: int) -> dict[str, np.ndarray]:
    """``state`` (rank's part of a table) with the sliding hash filter that rank wrote among ``shards``
    (in rank order). Written by another number of ranks, the filters cannot be re-split: the rank's
    filter starts empty, said once in a warning, and ids count again from zero."""
    if not any(_SLIDING_FILTER[0] in s for s in shards):
        return state
    if len(shards) == world_size:
        return {**state, **{k: shards[rank][k] for k in _SLIDING_FILTER if k in shards[rank]}}
    if rank == 0:
        logger.warning("the sliding hash filters of a table written by %d ranks cannot be split for %d; they "
                       "start empty and ids not yet admitted count their occurrences again", len(shards), world_size)
    return state
