"""Real-time parameter sync: push the rows training changed, and the dense weights, to serving.

This is what makes Monolith "real time": every ``interval_s`` seconds the trainer sends serving
the embedding rows written since the previous push (and the FIDs evicted since), so serving
answers with rows a few seconds old while training goes on. The dense weights go far less often,
every ``dense_interval_s`` (as in Monolith: the dense part is large and changes slowly), riding
along with the first row push after that much time.

Pushes run on their own thread, on a clock, so a change made by the last step before a quiet spell
still reaches serving within one interval. The thread takes a snapshot under the estimator's
``step_lock`` (between steps) and sends it without holding the lock. With ``every_steps`` a push
also follows every that many training steps, made by the training thread before the next step, so
that it holds exactly those steps (one push at a time either way).

Each push carries the trainer's global step (its ``version``) and, when training from a stream,
the stream's offsets after the last batch trained (``stream``), which serving reports in
``/v1/health``: how far training has gone is observable without a checkpoint. The same is
:attr:`ParameterSync.progress` in the trainer, logged (INFO) with each push.

A checkpoint leaves out the rows past their expire time, so a trainer restarted from it no longer
has them and would never tell serving to drop them. The first push after each checkpoint therefore
evicts the expired rows from the trainer's tables and sends their FIDs as deleted (a sweep per
push would cost a pass over every row each interval).

Versions (the protocol is :mod:`monolith.serving.model`'s). A push's ``version`` is the global step
when it was taken; a delta names in ``base_version`` the version of this sync's previous successful
push, or, for its first, the global step training began at (serving is expected to start from an
export of the checkpoint training resumed from). Serving refuses a delta that does not build on the
version it holds for this rank's shard (:class:`~monolith.serving.model.BaseVersionError`, over
HTTP :class:`~monolith.serving.client.BaseVersionRejected`): it restarted from an export since, or
never held what the trainer assumed. The sync then sends at once a full snapshot, every row of
every table of this rank (one payload per table) and, on rank 0, the dense weights, which replaces
serving's rows of this rank's shard, and goes on with deltas from it. Until a full snapshot gets
through, every push is a full snapshot. A stale refusal (serving holds a newer version, e.g. the
trainer restarted from an older checkpoint) holds pushes back until training reaches that version.

Under torch.distributed every rank runs its own sync with its own version chain: its pushes name
its ``rank`` and ``world_size``, carry only the rows of its table shards, and rank 0's also the
dense weights.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from typing import Any, Callable

import numpy as np
import torch

from monolith.model import TrainingHook

logger = logging.getLogger(__name__)

PushFn = Callable[[str, dict[str, Any]], Any]

#: The dense weights are pushed this many times less often than the rows, unless told otherwise.
DENSE_INTERVAL_FACTOR = 6


def _default_push(url: str, update: dict[str, Any], token: str | None = None) -> Any:
    from monolith.serving.client import push_update

    return push_update(url, update, token=token)


class ParameterSync(TrainingHook):
    """A training hook that pushes parameter deltas to a serving endpoint every ``interval_s``.

    Args:
        serving_url: base URL of the serving process (``http://127.0.0.1:8500``).
        interval_s: seconds between pushes of the changed rows (Monolith's default is 10; 1 keeps
            serving within about a second of training).
        dense_interval_s: seconds between pushes of the dense weights (None: ``DENSE_INTERVAL_FACTOR``
            times ``interval_s``; 0: with every push); the last push, at the end of training, always
            carries them.
        every_steps: also push after every this many global steps (None: by the clock only).
        evict_interval_s: seconds between expiry sweeps of the tables after steps, besides the
            sweep before the first push after each checkpoint (None: only that one); evicted FIDs
            are removed from serving with the next push.
        push_fn: sends one update (default: HTTP POST to ``{serving_url}/v1/update``).
        token: the serving token the default ``push_fn`` sends (default: ``$MONOLITH_SERVING_TOKEN``;
            :mod:`monolith.serving.auth`).

    Under torch.distributed each rank pushes the rows of its own table shards; rank 0 also pushes
    the dense weights. A delta with nothing changed is not sent. After serving refused a delta for
    its base version, a full snapshot is sent (module docstring); ``full_pushes`` counts those.
    """

    def __init__(self, serving_url: str, interval_s: float = 10.0, evict_interval_s: float | None = None,
                 push_fn: PushFn | None = None, token: str | None = None, dense_interval_s: float | None = None,
                 every_steps: int | None = None) -> None:
        if interval_s <= 0:
            raise ValueError(f"sync interval must be > 0 seconds, got {interval_s}")
        if dense_interval_s is not None and dense_interval_s < 0:
            raise ValueError(f"dense sync interval must be >= 0 seconds, got {dense_interval_s}")
        if every_steps is not None and (isinstance(every_steps, bool) or not isinstance(every_steps, int)
                                        or every_steps < 1):
            raise ValueError(f"sync every_steps must be a positive int or None, got {every_steps!r}")
        self.serving_url = serving_url
        self.interval_s = interval_s
        self.dense_interval_s = DENSE_INTERVAL_FACTOR * interval_s if dense_interval_s is None else dense_interval_s
        self.every_steps = every_steps
        self.evict_interval_s = evict_interval_s
        self.push_fn = push_fn if push_fn is not None else functools.partial(_default_push, token=token)
        self.version = 0  # the version of the last successful push
        self.pushes = 0
        self.full_pushes = 0
        self._base: int | None = None  # what the next delta builds on
        self._full = False  # whether the next push must be a full snapshot
        self._hold_until = -1  # no push before this global step (serving holds a newer version)
        self._estimator = None
        self._markers: dict[str, int] = {}
        self._evicted: dict[str, list[np.ndarray]] = {}
        self._dense_marker = -1
        self._dense_pushed_at = time.monotonic()
        self._trained_stream: dict[str, Any] | None = None  # the stream's position after the last step
        self._pushed_stream: dict[str, Any] | None = None
        self._last_evict = time.monotonic()
        self._stop = threading.Event()
        self._pushing = threading.RLock()  # one push at a time: the clock's or a step's
        self._thread: threading.Thread | None = None

    def begin(self, estimator: Any) -> None:
        # Serving starts from an export of the checkpoint training resumed from: only later
        # changes need to travel.
        self._estimator = estimator
        self._markers = {name: module.table.change_marker for name, module in estimator.model.ctx.tables.items()}
        self._dense_marker = estimator.global_step
        self._dense_pushed_at = time.monotonic()
        # The stream has handed out its first batch already, untrained yet: no offsets until a step.
        self._trained_stream = None
        self._pushed_stream = None
        self._base = estimator.global_step
        self._full = False
        self._hold_until = -1
        self._last_evict = time.monotonic()
        self._swept_after: str | None = None  # the checkpoint after which expired rows were last swept
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="parameter-sync", daemon=True)
        self._thread.start()

    @property
    def progress(self) -> dict[str, Any]:
        """How far training had gone at the last successful push, as serving reports it: the global
        step (``version``), the step the dense weights are from, and the stream offsets."""
        return {"version": self.version, "dense_version": self._dense_marker, "stream": self._pushed_stream}

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.push()
            except Exception:  # a dead sync thread would leave serving stale with no sign
                logger.exception("parameter sync to %s: push failed (retried with the next push)", self.serving_url)

    def after_step(self, step: int, batch: Any, output: Any) -> None:
        # The stream's offsets now cover exactly the batches trained (the next is not taken yet).
        self._trained_stream = self._estimator.stream_position
        if self.every_steps is not None and step % self.every_steps == 0:
            self.push()
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
            self.push(dense=True)

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

    def _snapshot(self, full: bool, dense_due: bool) -> tuple[dict[str, Any], dict[str, int], dict[str, np.ndarray]]:
        """The update to send, taken between two training steps: what changed since the last
        successful push, with the dense weights if they changed and are ``dense_due``, or
        (``full``) every row and the dense weights. Also the tables' change markers then, and the
        evicted FIDs it took (given back if the push fails)."""
        estimator = self._estimator
        with estimator.step_lock:
            if estimator.checkpoint_path != self._swept_after:
                self._evict_locked()
                self._swept_after = estimator.checkpoint_path
            tables, markers, taken = {}, {}, {}
            for name, module in estimator.model.ctx.tables.items():
                table = module.table
                markers[name] = table.change_marker
                evicted = self._evicted.pop(name, [])
                if evicted:
                    taken[name] = np.concatenate(evicted)
                if full:
                    # Serving replaces this rank's rows with these: evicted FIDs go with the rest.
                    ids, rows = table.items()
                    tables[name] = {"ids": torch.from_numpy(ids), "rows": torch.from_numpy(rows)}
                    continue
                ids, rows = table.changed_since(self._markers.get(name, 0))
                deleted = taken.get(name, np.zeros(0, np.int64))
                # A FID evicted and then inserted again since the last push is present, not deleted.
                deleted = np.unique(deleted[~table.contains(deleted)])
                if ids.size or deleted.size:
                    tables[name] = {"ids": torch.from_numpy(ids), "rows": torch.from_numpy(rows),
                                    "deleted": torch.from_numpy(deleted)}
            step = estimator.global_step
            dense = None
            if estimator.dist.rank == 0 and (full or (dense_due and step != self._dense_marker)):
                dense = {k: v.detach().cpu().clone() for k, v in estimator.model.dense_state_dict().items()}
            # Recorded after a step, so at most one step behind: serving never hears of offsets
            # whose batches the pushed parameters have not trained.
            stream = self._trained_stream
        update = {"version": step, "base_version": self._base, "tables": tables, "dense": dense}
        if stream is not None:
            update["stream"] = stream
        if full:
            update["full"] = True
        update["rank"], update["world_size"] = estimator.dist.rank, estimator.dist.world_size
        return update, markers, taken

    def _restore_evicted(self, taken: dict[str, np.ndarray]) -> None:
        """Puts the evicted FIDs a push took back, after it failed, ahead of any newer ones."""
        with self._estimator.step_lock:
            for name, fids in taken.items():
                self._evicted.setdefault(name, []).insert(0, fids)

    def push(self, dense: bool = False) -> bool:
        """Sends everything changed since the last successful push (the dense weights only once
        ``dense_interval_s`` has passed since they last went, or with ``dense``), or a full snapshot
        where serving needs one; returns whether it went out.

        A delta that serving refuses for its base version is followed at once by a full snapshot.
        A failed push (serving down, refusing, or not speaking HTTP) is logged and retried with the
        next one: training goes on, and nothing changed in between is lost.
        """
        with self._pushing:
            return self._push(dense)

    def _push(self, dense: bool) -> bool:
        """:meth:`push`, one at a time."""
        if self._estimator.global_step < self._hold_until:
            return False
        full = self._full
        dense_due = dense or time.monotonic() - self._dense_pushed_at >= self.dense_interval_s
        update, markers, taken = self._snapshot(full, dense_due)
        step = update["version"]
        if (not full and not update["tables"] and update["dense"] is None
                and update.get("stream") == self._pushed_stream):
            return False  # any evicted FIDs taken were inserted again since: nothing to delete
        try:
            self.push_fn(self.serving_url, update)
        except Exception as error:  # whatever the peer did, the next push retries
            self._restore_evicted(taken)
            refusal = _refusal(error)
            if refusal == "base_version" and not full:
                logger.warning("parameter sync to %s: serving does not hold version %d, which this trainer's "
                               "pushes build on (%s); sending a full snapshot", self.serving_url, self._base, error)
                self._full = True
                return self._push(dense)
            if refusal == "stale":
                newer = getattr(error, "min_version", None)
                if isinstance(newer, int):
                    self._hold_until = newer
            logger.warning("parameter sync to %s failed at step %d (retried with the next push): %s: %s",
                           self.serving_url, step, type(error).__name__, error)
            return False
        self._markers.update(markers)
        if update["dense"] is not None:
            self._dense_marker = step
            self._dense_pushed_at = time.monotonic()
        self._pushed_stream = update.get("stream")
        self._base = step
        self._full = False
        self.version = step
        self.pushes += 1
        self.full_pushes += full
        logger.info("parameter sync to %s: pushed version %d (%d tables%s%s), stream %s", self.serving_url, step,
                    len(update["tables"]), ", dense weights" if update["dense"] is not None else "",
                    ", full" if full else "", self._pushed_stream)
        return True


def _refusal(error: Exception) -> str | None:
    """Why serving refused a push for its version: ``"base_version"``, ``"stale"``, or None (another
    failure). Knows the in-process errors of :class:`~monolith.serving.model.ServingModel` and the
    HTTP client's."""
    from monolith.serving.client import BaseVersionRejected, UpdateRejected
    from monolith.serving.model import BaseVersionError, StaleUpdateError

    if isinstance(error, (BaseVersionError, BaseVersionRejected)):
        return "base_version"
    if isinstance(error, StaleUpdateError) or (isinstance(error, UpdateRejected) and error.reason == "stale"):
        return "stale"
    return None
