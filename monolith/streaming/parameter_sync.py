"""Real-time parameter sync: push the rows training changed, and the dense weights, to serving.

This is what makes Monolith "real time": every ``interval_s`` seconds the trainer sends serving
the embedding rows written since the previous push (and the FIDs evicted since), plus the dense
weights, so serving answers with parameters a few seconds old while training goes on.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import numpy as np
import torch

from monolith.model import TrainingHook

logger = logging.getLogger(__name__)

PushFn = Callable[[str, dict[str, Any]], Any]


def _default_push(url: str, update: dict[str, Any]) -> Any:
    from monolith.serving.client import push_update

    return push_update(url, update)


class ParameterSync(TrainingHook):
    """A training hook that pushes parameter deltas to a serving endpoint.

    Args:
        serving_url: base URL of the serving process (``http://127.0.0.1:8500``).
        interval_s: seconds between pushes (Monolith's default is 10; 1 keeps serving within
            about a second of training).
        evict_interval_s: seconds between expiry sweeps of the tables (None: never); evicted FIDs
            are removed from serving with the next push.
        push_fn: sends one update (default: HTTP POST to ``{serving_url}/v1/update``).

    Under torch.distributed each rank pushes the rows of its own table shards; rank 0 also pushes
    the dense weights.
    """

    def __init__(self, serving_url: str, interval_s: float = 10.0, evict_interval_s: float | None = None,
                 push_fn: PushFn = _default_push) -> None:
        if interval_s <= 0:
            raise ValueError(f"sync interval must be > 0 seconds, got {interval_s}")
        self.serving_url = serving_url
        self.interval_s = interval_s
        self.evict_interval_s = evict_interval_s
        self.push_fn = push_fn
        self.version = 0
        self.pushes = 0
        self._estimator = None
        self._markers: dict[str, int] = {}
        self._evicted: dict[str, list[np.ndarray]] = {}
        self._last_push = self._last_evict = time.monotonic()

    def begin(self, estimator: Any) -> None:
        # Serving starts from an export of the checkpoint training resumed from: only later
        # changes need to travel.
        self._estimator = estimator
        self._markers = {name: module.table.change_marker for name, module in estimator.model.ctx.tables.items()}
        self._last_push = self._last_evict = time.monotonic()

    def after_step(self, step: int, batch: Any, output: Any) -> None:
        now = time.monotonic()
        if self.evict_interval_s is not None and now - self._last_evict >= self.evict_interval_s:
            self.evict()
            self._last_evict = now
        if now - self._last_push >= self.interval_s:
            self.push(step)
            self._last_push = now

    def end(self) -> None:
        if self._estimator is not None:
            self.push(self._estimator.global_step)

    def evict(self) -> None:
        """Runs the tables' expiry; the evicted FIDs go out with the next push."""
        for name, module in self._estimator.model.ctx.tables.items():
            dropped = module.table.evict_expired()
            if dropped.size:
                self._evicted.setdefault(name, []).append(dropped)

    def push(self, step: int) -> bool:
        """Sends everything changed since the last successful push; returns whether it went out.

        A failed push (serving down or refusing) is logged and retried with the next one: training
        goes on, and nothing changed in between is lost.
        """
        tables, markers = {}, {}
        for name, module in self._estimator.model.ctx.tables.items():
            table = module.table
            markers[name] = table.change_marker
            ids, rows = table.changed_since(self._markers.get(name, 0))
            deleted = np.concatenate(self._evicted.get(name, [np.zeros(0, np.int64)]))
            # A FID evicted and then inserted again since the last push is present, not deleted.
            deleted = np.unique(deleted[~table.contains(deleted)])
            if ids.size or deleted.size:
                tables[name] = {"ids": torch.from_numpy(ids), "rows": torch.from_numpy(rows),
                                "deleted": torch.from_numpy(deleted)}
        dist = self._estimator.dist
        dense = None
        if dist is None or dist.rank == 0:
            dense = {k: v.detach().cpu().clone() for k, v in self._estimator.model.state_dict().items()}
        try:
            self.push_fn(self.serving_url, {"version": step, "tables": tables, "dense": dense})
        except (OSError, RuntimeError) as error:  # URLError is an OSError; UpdateRejected a RuntimeError
            logger.warning("parameter sync to %s failed at step %d (retried with the next push): %s",
                           self.serving_url, step, error)
            return False
        self._markers.update(markers)
        self._evicted.clear()
        self.version = step
        self.pushes += 1
        return True
