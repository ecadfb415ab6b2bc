"""Dynamic batching: concurrent prediction requests merged into one model call, as TF Serving's
batching and Triton's dynamic batcher do.

A :class:`Batcher` runs on the server's event loop. Requests queue up; the batcher's own thread
takes the requests queued, in arrival order, waiting at most ``max_wait_s`` after the first of them
for more (up to ``max_examples`` requests), reads each one's examples, runs the model on them in
calls of up to ``max_examples`` examples (a request with more is a call of its own) and writes each
request's answer from the outputs of its own examples. While it works, the next requests queue,
so under load it takes what arrived meanwhile and waits no further. Reading and writing in the
batcher's thread leave the event loop to HTTP alone. The requests of one call get the version of
the parameters of that call, one version for all of them.

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
from typing import Any, Callable

import numpy as np
import torch

from monolith.data.base import Rows

__all__ = ["Batcher", "Prediction"]

#: A model call: the outputs (one row per example) for some rows, and the parameters' version.
Prediction = tuple[dict[str, torch.Tensor], int]


@dataclasses.dataclass
class _Request:
    read: Callable[[], Rows]
    answer: Callable[[Prediction], Any]
    future: asyncio.Future


class Batcher:
    """Merges the predictions of concurrent requests into model calls (module docstring).

    Args:
        predict: the model call, e.g. :meth:`ServingModel.predict_rows`.
        max_examples: the most examples merged into one call.
        max_wait_s: the longest a request waits for others to join it.

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
        self._queue: asyncio.Queue[_Request] | None = None
        self._worker: asyncio.Task | None = None
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="monolith-batcher")
        #: Model calls made and requests they answered (for the server's metrics).
        self.calls = 0
        self.requests = 0

    async def submit(self, read: Callable[[], Rows], answer: Callable[[Prediction], Any]) -> Any:
        """``answer(prediction)`` for the examples ``read()`` returns, both called in the batcher's
        thread; what either raises is raised here."""
        if self._worker is None:  # the queue and worker belong to the loop of the first request
            self._queue = asyncio.Queue()
            self._worker = asyncio.get_running_loop().create_task(self._work())
        request = _Request(read, answer, asyncio.get_running_loop().create_future())
        self._queue.put_nowait(request)
        return await request.future

    def close(self) -> None:
        """Stops the worker; requests still queued are cancelled."""
        if self._worker is not None:
            self._worker.cancel()
        self._thread.shutdown(wait=False, cancel_futures=True)

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            results = await loop.run_in_executor(self._thread, self._serve, batch)
            for request, (result, failed) in zip(batch, results):
                if request.future.done():  # its client went away
                    continue
                if failed:
                    request.future.set_exception(result)
                else:
                    request.future.set_result(result)

    async def _next_batch(self) -> list[_Request]:
        """The next requests: the first to come, then those queued or arriving within
        ``max_wait_s`` of it, up to ``max_examples`` of them."""
        batch = [await self._queue.get()]
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_examples:
            if self._queue.empty():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), left))
                except asyncio.TimeoutError:
                    break
            else:
                batch.append(self._queue.get_nowait())
        return batch

    def _serve(self, batch: list[_Request]) -> list[tuple[Any, bool]]:
        """Each request's answer, or what it raised (and True), in the batcher's thread."""
        results: list[tuple[Any, bool]] = [(None, False)] * len(batch)
        read: list[tuple[int, Rows]] = []
        for i, request in enumerate(batch):
            try:
                read.append((i, request.read()))
            except Exception as error:  # noqa: BLE001 - the request's own error, raised to it alone
                results[i] = error, True
        calls: list[list[tuple[int, Rows]]] = []
        for i, rows in read:  # in order, up to max_examples examples a call
            if calls and sum(r.num for _, r in calls[-1]) + rows.num <= self.max_examples:
                calls[-1].append((i, rows))
            else:
                calls.append([(i, rows)])
        for call in calls:
            try:
                predictions = self._call([rows for _, rows in call])
            except Exception as error:  # noqa: BLE001 - every request of the call gets the error
                predictions = [error] * len(call)
            for (i, _), prediction in zip(call, predictions):
                if isinstance(prediction, Exception):
                    results[i] = prediction, True
                    continue
                try:
                    results[i] = batch[i].answer(prediction), False
                except Exception as error:  # noqa: BLE001
                    results[i] = error, True
        return results

    def _call(self, parts: list[Rows]) -> list[Prediction]:
        """One model call on the rows of several requests, split back."""
        self.calls += 1
        self.requests += len(parts)
        outputs, version = self._predict(Rows.concat(parts))
        bounds = np.cumsum([0] + [p.num for p in parts])
        return [({name: t[start:stop] for name, t in outputs.items()}, version)
                for start, stop in zip(bounds[:-1], bounds[1:])]
