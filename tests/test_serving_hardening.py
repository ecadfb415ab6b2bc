"""Serving exposed to anyone who reaches its port: updates need the shared token, refuse non-finite
parameters, and cannot lock the trainer out with a huge version; request heads and stalled bodies
are bounded; and no request gets a 5xx, checked for the requests that got one and by a seeded fuzz
of prediction and update bodies. Every server is uvicorn on 127.0.0.1, stopped after its test.
"""

from __future__ import annotations

import io
import json
import logging
import pickle
import socket
import threading
import time

import httpx
import numpy as np
import pytest
import torch
import uvicorn

import monolith.serving.__main__ as serving_main
from monolith.serving import RequestError, ServingModel, StaleUpdateError, UpdateRejected, encode_update, push_update
from monolith.serving.auth import TOKEN_ENV, is_loopback, read_token
from monolith.serving.server import create_app
from monolith.streaming.parameter_sync import ParameterSync
from test_export import DIM
from test_serving import PROBE, U, dense_state, export_path, model, read_answer, serve  # noqa: F401 - fixtures

TOKEN = "s3cret-token-0123456789"
OCTET = {"Content-Type": "application/octet-stream"}
BEARER = {**OCTET, "Authorization": f"Bearer {TOKEN}"}


def predict_request() -> dict:
    return {"sparse": PROBE[0], "dense": PROBE[1]}


def address(base: str) -> tuple[str, int]:
    return "127.0.0.1", int(base.rsplit(":", 1)[1])


# ----------------------------------------------------------------------------- 1. credentials
def test_updates_need_the_token_and_change_nothing_without_it(model, serve, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    base = serve(create_app(model, token=TOKEN))
    before = model.predict(*PROBE)
    row = torch.full((1, DIM + 1), 0.25)  # the bias on FixedR8's grid: served exactly
    update = encode_update({"version": 9, "tables": {"uid": {"ids": torch.tensor([U]), "rows": row}}})
    with httpx.Client(base_url=base) as client:
        for headers in (OCTET, {**OCTET, "Authorization": f"Bearer {TOKEN}x"}, {**OCTET, "Authorization": TOKEN},
                        {**OCTET, "Authorization": f"Basic {TOKEN}"}, {**OCTET, "Authorization": "Bearer \xe9".encode("latin-1")}):
            answer = client.post("/v1/update", content=update, headers=headers)
            assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Bearer"
            assert "Authorization: Bearer <token>" in answer.json()["detail"]
        assert model.version == 8 and model.predict(*PROBE) == before
        assert client.post("/v1/predict", json=predict_request()).status_code == 200  # predictions need no token
        assert client.post("/v1/update", content=update, headers=BEARER).json() == {"model_version": 9}
    np.testing.assert_array_equal(model.lookup("uid", [U]), row.numpy())
    # The trainer's side: the token given, or $MONOLITH_SERVING_TOKEN.
    with pytest.raises(UpdateRejected) as refused:
        push_update(base, {"version": 10})
    assert refused.value.status == 401
    assert push_update(base, {"version": 10}, token=TOKEN) == {"model_version": 10}
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    assert push_update(base, {"version": 11}) == {"model_version": 11}
    sync = ParameterSync(base, token=TOKEN)
    assert sync.push_fn(base, {"version": 12}) == {"model_version": 12}


def test_the_token_comes_from_a_file_or_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert read_token() is None
    monkeypatch.setenv(TOKEN_ENV, f" {TOKEN}\n")
    assert read_token() == TOKEN
    path = tmp_path / "token"
    path.write_text("another-token-abcdefgh\n")
    assert read_token(path) == "another-token-abcdefgh"  # the file wins over the environment
    for text, message in (("short", "at least 16 visible ASCII characters"),
                          ("has a space in it, long", "at least 16 visible ASCII characters")):
        path.write_text(text)
        with pytest.raises(ValueError, match=f"token file {path} must hold a token of {message}"):
            read_token(path)
    with pytest.raises(ValueError, match="cannot be read"):
        read_token(tmp_path / "missing")
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.5.0.1")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("10.0.0.1")
    assert not is_loopback("example.com")


def test_serve_beyond_loopback_needs_a_token(export_path, tmp_path, monkeypatch, capsys, serve):  # noqa: F811
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    started = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: started.append((app, kwargs)))
    for host in ("0.0.0.0", "::", "192.168.1.7", "example.com"):
        with pytest.raises(SystemExit) as exit_info:
            serving_main.main(["--export-dir", str(export_path), "--host", host])
        assert exit_info.value.code == 2 and not started
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"--host {host} is reachable from other machines" in err
        assert f"set ${TOKEN_ENV} or --token-file" in err
    serving_main.main(["--export-dir", str(export_path)])  # loopback, no token: updates from this machine
    assert started.pop()[1]["host"] == "127.0.0.1"
    path = tmp_path / "token"
    path.write_text(TOKEN)
    serving_main.main(["--export-dir", str(export_path), "--host", "0.0.0.0", "--token-file", str(path)])
    app, kwargs = started.pop()
    assert kwargs["host"] == "0.0.0.0"
    base = serve(app)
    with pytest.raises(UpdateRejected) as refused:
        push_update(base, {"version": 9})
    assert refused.value.status == 401
    assert push_update(base, {"version": 9}, token=TOKEN) == {"model_version": 9}
    monkeypatch.setenv(TOKEN_ENV, "too-short")
    with pytest.raises(SystemExit):
        serving_main.main(["--export-dir", str(export_path)])
    assert f"${TOKEN_ENV} must hold a token" in capsys.readouterr().err


def test_non_finite_updates_are_refused_and_nothing_is_applied(model, serve):
    base = serve(create_app(model))
    dense = dense_state(model)
    before = model.predict(*PROBE)
    rows = torch.ones(2, DIM + 1)
    rows[1, 2] = float("inf")
    cases = [
        ({"version": 9, "dense": {**dense, "tower.0.weight": torch.full_like(dense["tower.0.weight"], float("nan"))}},
         "dense['tower.0.weight'] is not finite"),
        ({"version": 9, "tables": {"uid": {"ids": torch.tensor([U, U + 1]), "rows": rows}}},
         "tables['uid']['rows'][1] (FID %d) is not finite" % (U + 1)),
        ({"version": 9, "full": True, "dense": dense,
          "tables": {"uid": {"ids": torch.tensor([U]), "rows": torch.full((1, DIM + 1), float("nan"))}, "mov": {}}},
         "tables['uid']['rows'][0]"),
        # Finite float64 beyond float32: infinite once served.
        ({"version": 9, "tables": {"uid": {"ids": torch.tensor([U]), "rows": torch.full((1, DIM + 1), 1e300,
                                                                                     dtype=torch.float64)}}},
         "is not finite"),
    ]
    for update, message in cases:
        with pytest.raises(UpdateRejected) as refused:
            push_update(base, update)
        assert refused.value.status == 400 and message in refused.value.detail
    assert model.version == 8 and model.last_update_time is None
    answer = httpx.post(f"{base}/v1/predict", json=predict_request())
    assert answer.status_code == 200 and answer.json()["outputs"] == before


def test_a_huge_version_cannot_lock_the_trainer_out(model):
    dense = dense_state(model)
    one = {"uid": {"ids": torch.tensor([U]), "rows": torch.ones(1, DIM + 1)}}

    def full(version):
        return {"version": version, "full": True, "dense": dense, "tables": {**one, "mov": {}}}

    assert model.apply_update(full(20)) == 20  # the trainer's chain
    for hostile in ({"version": 2**62, "base_version": 20, "tables": one},  # a delta on what serving holds
                    {"version": 2**62, "tables": one},  # a hand-made delta
                    full(2**62)):
        model.apply_update(hostile)
        assert model.version == 2**62
        # The trainer's next delta is refused for its base (not as stale), and its full snapshot wins.
        with pytest.raises(RequestError) as refused:
            model.apply_update({"version": 21, "base_version": 20, "tables": one})
        assert not isinstance(refused.value, StaleUpdateError), hostile
        assert model.apply_update(full(21)) == 21 and model.version == 21
        assert model.apply_update({"version": 22, "base_version": 21, "tables": one}) == 22
        assert model.apply_update(full(20)) == 20  # the trainer's chain again, for the next hostile push
    for version in (-1, 2**63, 2**64):
        with pytest.raises(RequestError, match=r"'version' must be in \[0, 2\*\*63\)"):
            model.apply_update({"version": version})


# ----------------------------------------------------------------------------- 2. limits
def test_request_heads_are_bounded(model, serve):
    base = serve(create_app(model))
    with httpx.Client(base_url=base) as client:
        answer = client.get("/v1/health", headers={"X-Big": "a" * 100_000})
        assert answer.status_code == 431 and "at most 16384 are read" in answer.json()["detail"]
        assert client.get("/v1/health", headers={"X-Fine": "a" * 8_000}).status_code == 200
    with socket.create_connection(address(base), timeout=10) as sock:  # httpx refuses such URLs itself
        sock.sendall(b"GET /v1/health?" + b"q" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        status, body = read_answer(sock)
        assert status.startswith(b"HTTP/1.1 414 ") and b"at most 8192 are read" in body
        assert sock.recv(1) == b""  # closed


def test_a_half_sent_body_is_timed_out_and_closed(model, serve):
    base = serve(create_app(model, body_timeout_s=0.5))
    head = b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    sockets = [socket.create_connection(address(base), timeout=10) for _ in range(30)]
    try:
        started = time.monotonic()
        for sock in sockets:
            sock.sendall(head + b'{"sparse": {')
        for sock in sockets:
            status, body = read_answer(sock)
            assert status.startswith(b"HTTP/1.1 408 ") and b"(--body-timeout)" in body
            assert sock.recv(1) == b""  # closed
        assert time.monotonic() - started < 5
    finally:
        for sock in sockets:
            sock.close()
    assert httpx.get(f"{base}/v1/health").status_code == 200


def test_a_client_that_disconnects_mid_body_is_one_quiet_line(model, serve, caplog):
    caplog.set_level(logging.INFO)
    uvicorn_errors = logging.getLogger("uvicorn.error")
    uvicorn_errors.addHandler(caplog.handler)
    try:
        base = serve(create_app(model))
        head = b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
        with socket.create_connection(address(base), timeout=10) as sock:
            sock.sendall(head + b'{"sparse": {')
            time.sleep(0.2)
        deadline = time.monotonic() + 10
        while not any("went away" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, [r.getMessage() for r in caplog.records]
            time.sleep(0.05)
    finally:
        uvicorn_errors.removeHandler(caplog.handler)
    messages = [r for r in caplog.records if r.name in ("monolith.serving", "uvicorn.error")]
    assert all(r.levelno < logging.WARNING and r.exc_info is None for r in messages), messages
    assert sum("went away before sending all of its /v1/predict request" in r.getMessage() for r in messages) == 1


# ----------------------------------------------------------------------------- 4. no 5xx
def test_requests_that_got_500_get_4xx_and_the_connection_serves_on(model, serve):
    base = serve(create_app(model, max_batch_size=2))
    t = torch.zeros(2)
    cases = [
        ("/v1/predict", json.dumps({"sparse": {"\ud800": [[], [], []]}}).encode(), {"Content-Type": "application/json"},
         413),
        ("/v1/update", encode_update({"version": 10**6, "world_size": 2**64, "rank": 0, "tables": {"uid": {}}}), OCTET,
         400),
        ("/v1/update", encode_update({"version": 10**6, "dense": {1: t, "x": t}}), OCTET, 400),
    ]
    with httpx.Client(base_url=base) as client:
        for path, body, headers, status in cases:
            answer = client.post(path, content=body, headers=headers)
            assert answer.status_code == status, (path, answer.text)
            assert answer.json()["detail"]
            # The next request goes over the same connection.
            assert client.get("/v1/health").json() == {"status": "ok", "model_version": 8}
    assert "sparse['\\ud800'] has 3 examples" in httpx.post(f"{base}/v1/predict", content=cases[0][1]).text


def _random_json(rng: np.random.Generator, depth: int = 0):
    kind = rng.integers(0, 11 if depth < 4 else 6)
    if kind == 0:
        return int(rng.choice([0, 1, -1, 2**63 - 1, 2**63, 2**64, -2**63 - 1, 10**30, U]))
    if kind == 1:
        return float(rng.choice([0.5, -1e308, 1e308, float("nan"), float("inf"), -float("inf"), 3.4e38, 1e-320]))
    if kind == 2:
        return str(rng.choice(["uid", "mov", "hist", "ctx", "\ud800", "\udfff\ud800", "", "x" * 1000, "sparse"]))
    if kind == 3:
        return bool(rng.integers(0, 2))
    if kind == 4:
        return None
    if kind == 5:
        return []
    if kind in (6, 7):
        return [_random_json(rng, depth + 1) for _ in range(rng.integers(0, 5))]
    keys = ["sparse", "dense", "uid", "mov", "hist", "ctx", "\ud800", "1", "version"]
    return {str(rng.choice(keys)): _random_json(rng, depth + 1) for _ in range(rng.integers(0, 4))}


def _random_predict_body(rng: np.random.Generator) -> bytes:
    kind = rng.integers(0, 8)
    if kind == 0:  # a valid request with one field broken
        request = json.loads(json.dumps(predict_request()))
        group = request[str(rng.choice(["sparse", "dense"]))]
        group[str(rng.choice(list(group)))] = _random_json(rng, 2)
        return json.dumps(request).encode()
    if kind == 1:  # a valid request with one value broken
        request = json.loads(json.dumps(predict_request()))
        request["sparse"]["mov"][0] = [_random_json(rng, 3)]
        request["dense"]["ctx"][1][0] = _random_json(rng, 3)
        return json.dumps(request).encode()
    if kind == 2:  # deep nesting
        depth = int(rng.integers(100, 100_000))
        return b'{"sparse": {"uid": ' + b"[" * depth + b"]" * depth + b"}}"
    if kind == 3:  # random bytes
        return rng.bytes(int(rng.integers(0, 300)))
    if kind == 4:  # truncated
        body = json.dumps(predict_request()).encode()
        return body[: int(rng.integers(0, len(body)))]
    if kind == 5:  # more examples than allowed
        return json.dumps({"sparse": {"\ud800": [[]] * 5, "uid": [[1]] * 5}}).encode()
    if kind == 6:  # over the body limit
        return b" " * 70_000
    return json.dumps({"sparse": _random_json(rng, 1), "dense": _random_json(rng, 1)}).encode()


class _Evil:
    def __reduce__(self):
        return (eval, ("1",))


def _random_update_body(rng: np.random.Generator, dense: dict) -> bytes:
    kind = rng.integers(0, 7)
    if kind == 0:  # not torch.save bytes
        return rng.bytes(int(rng.integers(0, 300)))
    if kind == 1:  # a pickle weights_only refuses
        buffer = io.BytesIO()
        torch.save({"version": 9, "x": _Evil()}, buffer)
        return buffer.getvalue()
    if kind == 2:
        return pickle.dumps({"version": 9})
    values = [_random_json(rng, 2), torch.tensor([float("nan")]), torch.zeros(2, 3), torch.tensor([2**62]),
              torch.zeros(0), torch.tensor([True]), torch.zeros(1, dtype=torch.complex64), 2**64, -5, "9", None]

    def pick():
        return values[int(rng.integers(0, len(values)))]

    update = {"version": int(rng.choice([9, 10**6, 2**62, 2**63, 0]))}
    for field in ("base_version", "full", "rank", "world_size", "tables", "dense", "extra"):
        if rng.random() < 0.4:
            update[field] = pick()
    if kind == 3:
        update["tables"] = {str(rng.choice(["uid", "mov", "nope"])): {"ids": pick(), "rows": pick(), "deleted": pick()}}
    if kind == 4:
        update["dense"] = {name: (pick() if rng.random() < 0.5 else t) for name, t in dense.items()}
        if rng.random() < 0.5:
            update["dense"][int(rng.integers(0, 3))] = pick()
    if kind == 5:
        update = {**update, "full": True, "rank": 0, "world_size": int(rng.choice([1, 2, 2**16 + 1]))}
    return encode_update(update)


def test_fuzzed_bodies_get_only_2xx_or_4xx_and_the_server_stays_up(model, serve):
    base = serve(create_app(model, max_batch_size=4, max_body_bytes=64_000, token=TOKEN))
    rng = np.random.default_rng(21)
    dense = dense_state(model)
    statuses = {}
    with httpx.Client(base_url=base, timeout=30) as client:
        for i in range(400):
            if i % 2:
                path, body, headers = "/v1/predict", _random_predict_body(rng), {"Content-Type": "application/json"}
            else:
                path, body, headers = "/v1/update", _random_update_body(rng, dense), BEARER
            answer = client.post(path, content=body, headers=headers)
            assert 200 <= answer.status_code < 500, (i, path, body[:300], answer.text[:300])
            statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1
            if "detail" in answer.text:
                assert answer.json()["detail"]
        assert client.get("/v1/health").status_code == 200
        assert client.post("/v1/predict", json=predict_request()).status_code in (200, 422)
    assert statuses.get(400, 0) > 100 and len(statuses) >= 3, statuses  # the fuzz reached the checks


# ----------------------------------------------------------------------------- what held
def test_concurrent_pushes_all_get_200(model, serve, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    base = serve(create_app(model))
    dense = dense_state(model)
    answers = []

    def push(k):
        rows = torch.full((1, DIM + 1), k / 8)
        update = {"version": 100, "dense": dense, "tables": {"uid": {"ids": torch.tensor([U + k]), "rows": rows}}}
        for _ in range(3):
            try:
                answers.append(push_update(base, update))
            except UpdateRejected as error:
                answers.append(error.status)

    threads = [threading.Thread(target=push, args=(k,)) for k in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert answers == [{"model_version": 100}] * 18
    np.testing.assert_array_equal(model.lookup("uid", [U + k for k in range(6)])[:, 0], np.arange(6) / 8)
