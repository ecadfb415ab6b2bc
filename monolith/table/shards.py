"""Splitting and merging table states, for re-sharding checkpoints across ranks.

A table state (:meth:`EmbeddingHashTable.state_dict`) is keyed by FID row by row, so shards
written by N ranks merge into one state, and one state splits into the part any rank owns.
"""

from __future__ import annotations

import json
from typing import Callable, Sequence

import numpy as np

_PER_ROW = ("keys", "timestamps")
_PER_FILTER_ENTRY = ("filter_keys", "filter_counts")


def _per_row(state: dict[str, np.ndarray]) -> list[str]:
    return [*_PER_ROW, *(k for k in state if k.startswith(("weights_", "state_")))]


def merge_states(states: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One state holding the rows and counters of all ``states`` (shards of one table)."""
    if not states:
        raise ValueError("no table shards to merge")
    slices = [json.loads(bytes(s["meta"]).decode())["slices"] for s in states]
    if any(s != slices[0] for s in slices[1:]):
        raise ValueError("table shards disagree on their slices; they come from different models")
    merged = dict(states[0])
    for key in _per_row(states[0]) + list(_PER_FILTER_ENTRY):
        merged[key] = np.concatenate([s[key] for s in states])
    metas = [json.loads(bytes(s["meta"]).decode()) for s in states]
    # "Now" for expiry is the newest update any shard saw.
    meta = {**metas[0], "max_update_time": max(m.get("max_update_time", 0) for m in metas)}
    merged["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    return merged


def select_keys(state: dict[str, np.ndarray], keep: Callable[[np.ndarray], np.ndarray]) -> dict[str, np.ndarray]:
    """The part of ``state`` whose FIDs satisfy ``keep`` (a vectorised predicate on int64 FIDs)."""
    selected = dict(state)
    rows = keep(state["keys"])
    for key in _per_row(state):
        selected[key] = state[key][rows]
    counters = keep(state["filter_keys"])
    for key in _PER_FILTER_ENTRY:
        selected[key] = state[key][counters]
    return selected
