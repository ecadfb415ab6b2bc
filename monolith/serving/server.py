"""The HTTP serving endpoint: a FastAPI app around a :class:`~monolith.serving.model.ServingModel`.

Endpoints::

    POST /v1/predict   {"sparse": {feature: [[fid, ...] per example]}, "dense": {name: [[x, ...] per example]}}
                       -> {"outputs": {name: [value per example]}, "model_version": int}
    GET  /v1/health    -> {"status": "ok", "model_version": int}
    GET  /v1/metrics   -> predictions (requests, errors, latency percentiles in ms), model version, last
                       update time, updates applied and refused, table sizes
    POST /v1/update    application/octet-stream: an update serialised by
                       :func:`~monolith.serving.model.encode_update` -> {"model_version": int}

A malformed request gets a 4xx whose ``detail`` names the offending field; a stale update gets
409. Updates are unauthenticated: serve on a loopback or otherwise trusted interface.
"""

from __future__ import annotations

import collections
import json
import time
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from monolith.serving.model import RequestError, ServingModel, StaleUpdateError, decode_update

__all__ = ["create_app"]

#: Latency percentiles are taken over this many of the latest predictions.
LATENCY_WINDOW = 10_000


class _Metrics:
    """Counters of the endpoints; touched only on the event loop, so no lock is needed."""

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.updates = 0
        self.update_errors = 0
        self.latencies_ms: collections.deque[float] = collections.deque(maxlen=LATENCY_WINDOW)

    def record(self, started: float, failed: bool) -> None:
        self.requests += 1
        self.errors += failed
        self.latencies_ms.append((time.perf_counter() - started) * 1e3)

    def latency(self) -> dict[str, float | None]:
        if not self.latencies_ms:
            return {"p50": None, "p90": None, "p99": None}
        p50, p90, p99 = np.percentile(np.fromiter(self.latencies_ms, dtype=np.float64), [50, 90, 99])
        return {"p50": float(p50), "p90": float(p90), "p99": float(p99)}


def create_app(model: ServingModel) -> FastAPI:
    """The FastAPI app serving ``model`` (run it with uvicorn)."""
    app = FastAPI(title="Monolith serving", description="Predictions and hot parameter updates of a Monolith export")
    metrics = _Metrics()

    @app.post("/v1/predict")
    async def predict(request: Request) -> JSONResponse:
        started, failed = time.perf_counter(), True
        try:
            body = _json_object(await request.body())
            unknown = sorted(set(body) - {"sparse", "dense"})
            if unknown:
                raise RequestError(f"unknown request field(s) {unknown}; a request has 'sparse' and 'dense'")
            # Lookups and the dense program run off the event loop, so requests overlap.
            outputs, version = await run_in_threadpool(model.predict_versioned, body.get("sparse", {}),
                                                       body.get("dense"))
            failed = False
        except RequestError as error:
            raise HTTPException(status_code=400, detail=str(error)) from None
        finally:
            metrics.record(started, failed)
        return JSONResponse({"outputs": outputs, "model_version": version})

    @app.get("/v1/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model_version": model.version}

    @app.get("/v1/metrics")
    async def get_metrics() -> dict[str, Any]:
        return {"requests": metrics.requests, "errors": metrics.errors, "latency_ms": metrics.latency(),
                "model_version": model.version, "last_update_time": model.last_update_time,
                "updates": metrics.updates, "update_errors": metrics.update_errors,
                "table_sizes": model.table_sizes()}

    @app.post("/v1/update")
    async def update(request: Request) -> dict[str, Any]:
        content_type = request.headers.get("content-type", "")
        if content_type.split(";")[0].strip() != "application/octet-stream":
            metrics.update_errors += 1
            raise HTTPException(status_code=415, detail=f"an update's Content-Type must be application/octet-stream "
                                                        f"(torch.save bytes), got {content_type!r}")
        body = await request.body()
        applied = False
        try:
            version = await run_in_threadpool(lambda: model.apply_update(decode_update(body)))
            applied = True
        except RequestError as error:
            status = 409 if isinstance(error, StaleUpdateError) else 400
            raise HTTPException(status_code=status, detail=str(error)) from None
        finally:
            metrics.updates += applied
            metrics.update_errors += not applied
        return {"model_version": version}

    return app


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except ValueError as error:  # JSON and UTF-8 decoding errors
        raise RequestError(f"request body is not JSON: {error}") from None
    if not isinstance(data, dict):
        raise RequestError(f"request body must be a JSON object with 'sparse' and 'dense', got {type(data).__name__}")
    return data
