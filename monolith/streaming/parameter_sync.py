"""Real-time parameter sync: push the rows training changed, and the dense weights, to serving.

This is what makes Monolith "real time": every ``interval_s`` seconds the trainer sends serving
the embedding rows written since the previous push (and the FIDs evicted since), plus the dense
weights, so serving answers with parameters a few seconds old while training goes on.

Pushes run on their own thread, on a clock rather than after steps, so a change made by the last
step before a quiet spell still reaches serving within one interval. The thread takes a snapshot
under the estimator's ``step_lock`` (between steps) and sends it without holding the lock.

A checkpoint leaves out the rows past their expire time, so a trainer restarted from it no longer
has them and would never tell serving to drop them. The first push after each checkpoint therefore
evicts the expired rows from the trainer's tables and sends their FIDs as deleted (a sweep per
push would cost a pass over every row each interval).
"""

from __future__ import annotations

import logging
import threading
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
    """A training hook that pushes parameter deltas to a serving endpoint every ``interval_s``.

    Args:
        serving_url: base URL of the serving process (``http://127.0.0.1:8500``).
        interval_s: seconds between pushes (Monolith's default is 10; 1 keeps serving within
            about a second of training).
        evict_interval_s: seconds between expiry sweeps of the tables after steps, besides the
            sweep before the first push after each checkpoint (None: only that one); evicted FIDs
            are removed from serving with the next push.
        push_fn: sends one update (default: HTTP POST to ``{serving_url}/v1/update``).

    Under torch.distributed each rank pushes the rows of its own table shards; rank 0 also pushes
    the dense weights. A push with nothing changed is not sent.
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
        self._dense_marker = -1
        self._last_evict = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def begin(self, estimator: Any) -> None:
        # Serving starts from an export of the checkpoint training resumed from: only later
        # changes need to travel.
        self._estimator = estimator
        self._markers = {name: module.table.change_marker for name, module in estimator.model.ctx.tables.items()}
        self._dense_marker = estimator.global_step
        self._last_evict = time.monotonic()
        self._swept_after: str | None = None  # the checkpoint after which expired rows were last swept
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="parameter-sync", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.push()
            except Exception:  # a dead sync thread would leave serving stale with no sign
                logger.exception("parameter sync to %s: push failed (retried with the next push)", self.serving_url)

    def after_step(self, step: int, batch: Any, output: Any) -> None:
        now = time.monotonic()
        if self.evict_interval_s is not None and now - self._last_evict >= self.evict_interval_s:
            self.evict()
            self._last_evict = now

    def end(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        if self._estimator is not None:
            self.push()

    def evict(self) -> None:
        """Runs the tables' expiry; the evicted FIDs go out with the next push."""
        with self._estimator.step_lock:
            self._evict_locked()

    def _evict_locked(self) -> None:
        """:meth:`evict`, with the ``step_lock`` held."""
        for name, module in self._estimator.model.ctx.tables.items():
            dropped = module.table.evict_expired()
            if dropped.size:
                self._evicted.setdefault(name, []).append(dropped)

    def _snapshot(self) -> tuple[dict[str, Any], dict[str, int], int]:
        """What changed since the last successful push, taken between two training steps."""
        estimator = self._estimator
        with estimator.step_lock:
            if estimator.checkpoint_path != self._swept_after:
                self._evict_locked()
                self._swept_after = estimator.checkpoint_path
            tables, markers = {}, {}
            for name, module in estimator.model.ctx.tables.items():
                table = module.table
                markers[name] = table.change_marker
                ids, rows = table.changed_since(self._markers.get(name, 0))
                deleted = np.concatenate([np.zeros(0, np.int64), *self._evicted.pop(name, [])])
                # A FID evicted and then inserted again since the last push is present, not deleted.
                deleted = np.unique(deleted[~table.contains(deleted)])
                if ids.size or deleted.size:
                    tables[name] = {"ids": torch.from_numpy(ids), "rows": torch.from_numpy(rows),
                                    "deleted": torch.from_numpy(deleted)}
            step = estimator.global_step
            dense = None
            if (estimator.dist is None or estimator.dist.rank == 0) and step != self._dense_marker:
                dense = {k: v.detach().cpu().clone() for k, v in estimator.model.state_dict().items()}
        return {"version": step, "tables": tables, "dense": dense}, markers, step

    def _restore_evicted(self, tables: dict[str, Any]) -> None:
        """Puts the deletions of a push that failed back, ahead of any newer ones."""
        with self._estimator.step_lock:
            for name, part in tables.items():
                if part["deleted"].numel():
                    self._evicted.setdefault(name, []).insert(0, part["deleted"].numpy())

    def push(self) -> bool:
        """Sends everything changed since the last successful push; returns whether it went out.

        A failed push (serving down, refusing, or not speaking HTTP) is logged and retried with the
        next one: training goes on, and nothing changed in between is lost.
        """
        update, markers, step = self._snapshot()
        if not update["tables"] and update["dense"] is None:
            return False
        try:
            self.push_fn(self.serving_url, update)
        except Exception as error:  # whatever the peer did, the next push retries
            logger.warning("parameter sync to %s failed at step %d (retried with the next push): %s: %s",
                           self.serving_url, step, type(error).__name__, error)
            self._restore_evicted(update["tables"])
            return False
        self._markers.update(markers)
        self._dense_marker = step
        self.version = step
        self.pushes += 1
        return True
