"""Dynamic batching: concurrent prediction requests merged into one model call, as TF Serving's
batching and Triton's dynamic batcher do.

A :class:`Batcher` runs on the server's event loop. Requests (their examples already read into
:class:`~monolith.data.base.Rows`) queue up; one model call at a time runs in the batcher's own
thread on the requests queued, in arrival order, up to ``max_examples`` examples (a request with
more runs alone), waiting at most ``max_wait_s`` after the first of them for more to come. While a
call runs, the next requests queue, so under load a call takes what arrived during the previous
one and waits no further. Each request gets the rows of the outputs for its own examples and the
version of the parameters of the call, one version for all of them.

What batching changes: the dense program multiplies the examples of several requests in one
matrix product, and matrix kernels (MKL here) may round an example's dot products differently with
the batch's size or the example's place in it, so an output can differ from an unbatched one in its
last bits (lookups and pooling are exact and independent of the batch).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import time
from typing import Callable

import numpy as np
import torch

from monolith.data.base import Rows

__all__ = ["Batcher", "Prediction"]

#: A model call: the outputs (one row per example) for some rows, and the parameters' version.
Prediction = tuple[dict[str, torch.Tensor], int]


@dataclasses.dataclass
class _Waiting:
    rows: Rows
    answer: asyncio.Future


class Batcher:
    """Merges the predictions of concurrent requests into model calls (module docstring).

    Args:
        predict: the model call, e.g. :meth:`ServingModel.predict_rows`.
        max_examples: the most examples merged into one call.
        max_wait_s: the longest a request waits for others to join its call.

    Raises:
        ValueError: ``max_examples < 1`` or ``max_wait_s < 0``.
    """

    def __init__(self, predict: Callable[[Rows], Prediction], max_examples: int, max_wait_s: float) -> None:
        if max_examples < 1 or not max_wait_s >= 0:
            raise ValueError(f"batching needs max_examples >= 1 and max_wait_s >= 0, got {max_examples} and "
                             f"{max_wait_s}")
        self._predict = predict
        self.max_examples = max_examples
        self.max_wait_s = max_wait_s
        self._queue: asyncio.Queue[_Waiting] | None = None
        self._held: _Waiting | None = None  # taken from the queue but left for the next call (too many examples)
        self._worker: asyncio.Task | None = None
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="monolith-batcher")
        #: Model calls made and requests they answered (for the server's metrics).
        self.calls = 0
        self.requests = 0

    async def predict(self, rows: Rows) -> Prediction:
        """The outputs for ``rows`` (one row per example of theirs) and the version that made them."""
        if self._worker is None:  # the queue and worker belong to the loop of the first request
            self._queue = asyncio.Queue()
            self._worker = asyncio.get_running_loop().create_task(self._work())
        waiting = _Waiting(rows, asyncio.get_running_loop().create_future())
        self._queue.put_nowait(waiting)
        return await waiting.answer

    def close(self) -> None:
        """Stops the worker; requests still queued are cancelled."""
        if self._worker is not None:
            self._worker.cancel()
        self._thread.shutdown(wait=False, cancel_futures=True)

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            try:
                results = await loop.run_in_executor(self._thread, self._call, [w.rows for w in batch])
            except Exception as error:  # noqa: BLE001 - every request of the call gets the error
                results = [error] * len(batch)
            for waiting, result in zip(batch, results):
                if waiting.answer.done():  # its client went away
                    continue
                if isinstance(result, Exception):
                    waiting.answer.set_exception(result)
                else:
                    waiting.answer.set_result(result)

    async def _next_batch(self) -> list[_Waiting]:
        """The requests of the next call: the first to come, then those queued or arriving within
        ``max_wait_s`` of it, up to ``max_examples`` examples."""
        first = self._held or await self._queue.get()
        self._held = None
        batch, examples = [first], first.rows.num
        deadline = time.monotonic() + self.max_wait_s
        while examples < self.max_examples:
            if self._queue.empty():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    waiting = await asyncio.wait_for(self._queue.get(), left)
                except asyncio.TimeoutError:
                    break
            else:
                waiting = self._queue.get_nowait()
            if examples + waiting.rows.num > self.max_examples:
                self._held = waiting
                break
            batch.append(waiting)
            examples += waiting.rows.num
        return batch

    def _call(self, parts: list[Rows]) -> list[Prediction]:
        """One model call on the rows of every request (in the batcher's thread), split back."""
        self.calls += 1
        self.requests += len(parts)
        outputs, version = self._predict(Rows.concat(parts))
        bounds = np.cumsum([0] + [p.num for p in parts])
        return [({name: t[start:stop] for name, t in outputs.items()}, version)
                for start, stop in zip(bounds[:-1], bounds[1:])]
