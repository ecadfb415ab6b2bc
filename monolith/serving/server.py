"""The HTTP serving endpoint: a FastAPI app around a :class:`~monolith.serving.model.ServingModel`.

Endpoints::

    POST /v1/predict   {"sparse": {feature: [[fid, ...] per example]}, "dense": {name: [[x, ...] per example]}}
                       -> {"outputs": {name: [value per example]}, "model_version": int}
    GET  /v1/health    -> {"status": "ok", "model_version": int}
    GET  /v1/metrics   -> predictions (requests, errors, latency percentiles in ms), model version, last
                       update time, updates applied and refused, table sizes
    POST /v1/update    application/octet-stream: an update serialised by
                       :func:`~monolith.serving.model.encode_update` -> {"model_version": int}

A malformed request gets a 4xx whose ``detail`` names the offending field; no request gets a 5xx.
An update refused for
its version (protocol in :mod:`monolith.serving.model`) gets 409 with ``"reason"`` telling why and
serving's ``"model_version"``: ``"stale"`` (older than serving holds, ``"min_version"`` the oldest it
could have had) or ``"base_version"`` (a delta that does not build on the version serving holds for
its sender's shard, that version being ``"base_version"``, null when unknown: the trainer must send
a full update). A body or batch over the app's limits gets 413, answered before more of the body
than the limit is read; a prediction with an output JSON cannot carry (NaN, infinity) gets 422.
Headers over ``max_header_bytes`` get 431, a URL over ``MAX_URL_BYTES`` 414, and a body the client
stops sending for ``body_timeout_s`` 408; those connections are then closed.

**Credentials.** An app given a ``token`` (:mod:`monolith.serving.auth`) answers ``/v1/update``
without ``Authorization: Bearer <token>`` with 401 before reading its body; one without a token
accepts updates from anyone who reaches it, so ``monolith serve`` refuses to listen beyond
loopback without one.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from monolith.serving.auth import is_authorized
from monolith.serving.limits import (BODY_TIMEOUT_S, MAX_BATCH_SIZE, MAX_BODY_BYTES, MAX_HEADER_BYTES, MAX_UPDATE_BYTES,
                                     MAX_URL_BYTES)
from monolith.serving.model import BaseVersionError, RequestError, ServingModel, StaleUpdateError, decode_update

__all__ = ["BODY_TIMEOUT_S", "MAX_BATCH_SIZE", "MAX_BODY_BYTES", "MAX_HEADER_BYTES", "MAX_UPDATE_BYTES", "MAX_URL_BYTES",
           "create_app"]

logger = logging.getLogger("monolith.serving")

#: Latency percentiles are taken over this many of the latest predictions.
LATENCY_WINDOW = 10_000
#: A body declared longer than its limit by more than this is answered 413 on a connection then
#: closed, rather than read to its end and discarded.
_DISCARD_BYTES = 1 << 20


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


class _AsciiJSONResponse(JSONResponse):
    """JSON with every non-ASCII character escaped: a detail quoting a request's lone surrogate
    cannot be encoded as UTF-8, and would turn the answer into a 500."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, allow_nan=False, separators=(",", ":")).encode("ascii")


def create_app(model: ServingModel, max_body_bytes: int = MAX_BODY_BYTES, max_batch_size: int = MAX_BATCH_SIZE,
               max_update_bytes: int = MAX_UPDATE_BYTES, token: str | None = None,
               max_header_bytes: int = MAX_HEADER_BYTES, body_timeout_s: float = BODY_TIMEOUT_S) -> FastAPI:
    """The FastAPI app serving ``model`` (run it with uvicorn).

    Args:
        model: the model to serve.
        max_body_bytes: the largest ``/v1/predict`` body; a larger one gets 413.
        max_batch_size: the most examples in one prediction request; more get 413.
        max_update_bytes: the largest ``/v1/update`` body; a larger one gets 413.
        token: the token ``/v1/update`` requires (:mod:`monolith.serving.auth`); None: anyone may update.
        max_header_bytes: the most bytes of header lines in one request; more get 431.
        body_timeout_s: seconds a client may pause half-way through a body before it gets 408.

    Raises:
        ValueError: a limit is not positive.
    """
    limits = {"max_body_bytes": max_body_bytes, "max_batch_size": max_batch_size, "max_update_bytes": max_update_bytes,
              "max_header_bytes": max_header_bytes, "body_timeout_s": body_timeout_s}
    for name, limit in limits.items():
        if not limit > 0:
            raise ValueError(f"{name} must be > 0, got {limit}")
    app = FastAPI(title="Monolith serving", description="Predictions and hot parameter updates of a Monolith export",
                  default_response_class=_AsciiJSONResponse)
    app.add_middleware(_Guard, max_header_bytes=max_header_bytes)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> Response:
        return _AsciiJSONResponse({"detail": error.detail}, status_code=error.status_code, headers=error.headers)

    metrics = _Metrics()

    def answer(body: bytes) -> bytes:
        """The JSON answer to a prediction request's body."""
        request = _json_object(body)
        unknown = sorted(set(request) - {"sparse", "dense"})
        if unknown:
            raise RequestError(f"unknown request field(s) {unknown}; a request has 'sparse' and 'dense'")
        _check_batch_size(request, max_batch_size)
        outputs, version = model.predict_versioned(request.get("sparse", {}), request.get("dense"))
        return _render(outputs, version)

    @app.post("/v1/predict")
    async def predict(request: Request) -> Response:
        started, failed = time.perf_counter(), True
        try:
            body = await _read_body(request, max_body_bytes, "--max-body-bytes", body_timeout_s)
            # Parsing, lookups, the dense program and rendering run off the event loop, so requests overlap.
            content = await run_in_threadpool(answer, body)
            failed = False
        except RequestError as error:
            raise HTTPException(status_code=400, detail=str(error)) from None
        finally:
            metrics.record(started, failed)
        return Response(content, media_type="application/json")

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
        applied = False
        try:
            if token is not None and not is_authorized(request.headers.get("authorization"), token):
                # Answered before the body is read; the connection is closed rather than read on.
                raise HTTPException(status_code=401, detail="an update needs the serving token: "
                                                            "Authorization: Bearer <token>",
                                    headers={"WWW-Authenticate": "Bearer", "Connection": "close"})
            content_type = request.headers.get("content-type", "")
            if content_type.split(";")[0].strip() != "application/octet-stream":
                raise HTTPException(status_code=415, detail=f"an update's Content-Type must be "
                                                            f"application/octet-stream (torch.save bytes), "
                                                            f"got {content_type!r}")
            body = await _read_body(request, max_update_bytes, "--max-update-bytes", body_timeout_s)
            version = await run_in_threadpool(lambda: model.apply_update(decode_update(body)))
            applied = True
        except StaleUpdateError as error:
            return _AsciiJSONResponse(status_code=409, content={"detail": str(error), "reason": "stale",
                                                          "model_version": error.served_version,
                                                          "min_version": error.min_version})
        except BaseVersionError as error:
            return _AsciiJSONResponse(status_code=409, content={"detail": str(error), "reason": "base_version",
                                                          "model_version": error.served_version,
                                                          "base_version": error.base_version})
        except RequestError as error:
            raise HTTPException(status_code=400, detail=str(error)) from None
        finally:
            metrics.updates += applied
            metrics.update_errors += not applied
        return {"model_version": version}

    return app


async def _read_body(request: Request, limit: int, option: str, timeout_s: float) -> bytes:
    """The body of ``request``; 413 (naming the ``monolith serve`` option) as soon as it is known to
    exceed ``limit`` bytes, from its Content-Length or while it streams, so that no more than
    ``limit`` bytes are read before the answer, and none kept beyond them; 408 (and the connection
    closed) when no part of it arrives for ``timeout_s`` seconds.

    Raises:
        ClientDisconnect: the client went away before sending all of it.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        # After the answer uvicorn reads and discards what the app left unread, so that a client
        # that has sent it all already gets the answer: closing a socket with unread data resets the
        # connection, and the reset can destroy the answer. Far over the limit, it closes instead.
        close = {"Connection": "close"} if int(declared) - limit > _DISCARD_BYTES else None
        raise HTTPException(status_code=413, detail=f"request body of {declared} bytes is over the limit of "
                                                    f"{limit} bytes ({option})", headers=close)
    chunks, size, more = [], 0, True
    while more:
        try:
            message = await asyncio.wait_for(request.receive(), timeout_s)
        except asyncio.TimeoutError:
            raise HTTPException(status_code=408, detail=f"no part of the request body arrived for {timeout_s:g} s "
                                                        f"(--body-timeout)", headers={"Connection": "close"}) from None
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk, more = message.get("body", b""), message.get("more_body", False)
        size += len(chunk)
        if size > limit:  # a chunked body: of unknown length, so its rest is discarded, not cut off
            raise HTTPException(status_code=413, detail=f"request body is over the limit of {limit} bytes ({option})")
        chunks.append(chunk)
    return b"".join(chunks)


class _Guard:
    """ASGI middleware: refuses oversized request lines and headers (414, 431) before the app
    runs; logs a client that went away mid-request as one line; and answers an error the app did
    not expect with 400 rather than letting it become a 500 that also resets the connection."""

    def __init__(self, app: ASGIApp, max_header_bytes: int) -> None:
        self.app = app
        self.max_header_bytes = max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        url_bytes = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
        header_bytes = sum(len(name) + len(value) + 4 for name, value in scope["headers"])
        refusal = None
        if url_bytes > MAX_URL_BYTES:
            refusal = 414, f"the request's URL has {url_bytes} bytes; at most {MAX_URL_BYTES} are read"
        elif header_bytes > self.max_header_bytes:
            refusal = 431, f"the request's headers have {header_bytes} bytes; at most {self.max_header_bytes} are read"
        if refusal is not None:
            await _AsciiJSONResponse({"detail": refusal[1]}, refusal[0], headers={"Connection": "close"})(
                scope, receive, send)
            return
        started = False

        async def tracked(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except ClientDisconnect:
            client = scope.get("client") or ("?", 0)
            logger.info("%s:%s went away before sending all of its %s request", *client[:2], scope["path"])
        except Exception as error:  # a bug: logged in full, and still answered with a 4xx
            logger.exception("unexpected error answering %s %s", scope["method"], scope["path"])
            if not started:
                detail = f"the request could not be processed: {type(error).__name__}"
                await _AsciiJSONResponse({"detail": detail}, 400, headers={"Connection": "close"})(scope, receive, send)


def _check_batch_size(request: dict[str, Any], limit: int) -> None:
    """413 naming the first feature of ``request`` with more than ``limit`` examples."""
    for kind in ("sparse", "dense"):
        features = request.get(kind)
        if isinstance(features, dict):
            for name, rows in features.items():
                if isinstance(rows, list) and len(rows) > limit:
                    raise HTTPException(status_code=413, detail=f"{kind}['{name}'] has {len(rows)} examples; a "
                                                                f"request may have at most {limit} (--max-batch-size)")


def _render(outputs: dict[str, list], version: int) -> bytes:
    """The JSON of a prediction, as FastAPI renders JSON; 422 naming the first output JSON cannot carry."""
    try:
        return json.dumps({"outputs": outputs, "model_version": version}, ensure_ascii=False, allow_nan=False,
                          separators=(",", ":")).encode("utf-8")
    except ValueError:
        # Inputs are finite, so either finite inputs overflow the model or its parameters are not finite.
        for name, values in outputs.items():
            bad = np.argwhere(~np.isfinite(np.asarray(values, dtype=np.float64)))
            if bad.size:
                where = "".join(f"[{i}]" for i in bad[0])
                raise HTTPException(status_code=422, detail=f"output '{name}'{where} is not finite, which JSON "
                                                            f"cannot carry: the request's values overflow the model, "
                                                            f"or the served parameters are not finite") from None
        raise


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except ValueError as error:  # JSON and UTF-8 decoding errors
        raise RequestError(f"request body is not JSON: {error}") from None
    except RecursionError:
        raise RequestError("request body nests too deeply to parse as JSON") from None
    if not isinstance(data, dict):
        raise RequestError(f"request body must be a JSON object with 'sparse' and 'dense', got {type(data).__name__}")
    return data
