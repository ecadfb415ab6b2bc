"""Serving an export: lookups, request validation, hot updates (rows, evictions, dense weights) with
their validation, and the HTTP endpoint run for real by uvicorn on 127.0.0.1: predict, health,
metrics, 4xx answers naming the field, body and batch limits answered before the body is read,
outputs JSON cannot carry, and updates pushed while a client keeps predicting, whose answers must
match values computed here by hand for the version each one reports.
"""

from __future__ import annotations

import datetime
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
import torch
import uvicorn

import monolith.serving.__main__ as serving_main
from monolith.distributed import shard_of
from monolith.estimator import Estimator, RunConfig
from monolith.fid import make_fid, make_fid_v1
from monolith.model import TrainingHook
from monolith.optim.compressors import FixedR8Compressor, Fp32Compressor
from monolith.serving import (BaseVersionError, BaseVersionRejected, RequestError, ServingModel, StaleUpdateError,
                              UpdateRejected, decode_update, encode_update, push_update)
from monolith.serving.server import create_app
from monolith.sparse import Batch, KeyedJaggedTensor
from monolith.streaming.parameter_sync import ParameterSync
from test_export import BIAS_RANGE, DIM, ServeModel, make_batches, predict_batches, request_of, trained

U, M, ABSENT = make_fid(1, 3), make_fid(2, 5), make_fid(1, 999)
PROBE = ({"uid": [[U], [ABSENT]], "mov": [[M], []], "hist": [[], [M, M]]}, {"ctx": [[0.5, -1.0, 2.0], [0.0, 0.0, 0.0]]})


@pytest.fixture(scope="module")
def export_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    est = trained(root / "run", vec_compressor=Fp32Compressor(), bias_compressor=FixedR8Compressor(BIAS_RANGE))
    return est.export_saved_model(root / "export")


@pytest.fixture
def model(export_path):
    return ServingModel.load(export_path)


@pytest.fixture
def serve():
    """Starts uvicorn serving an app in a thread on a free port of 127.0.0.1 and returns its base
    URL; every server started is stopped after the test."""
    running = []

    def start(app) -> str:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        app_server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        thread = threading.Thread(target=app_server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        running.append((app_server, thread, sock))
        deadline = time.monotonic() + 20
        while not app_server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
            time.sleep(0.01)
        return f"http://127.0.0.1:{sock.getsockname()[1]}"

    yield start
    for app_server, thread, sock in running:
        app_server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture
def server(model, serve):
    """uvicorn serving ``model`` with the default limits; its base URL."""
    return serve(create_app(model))


# ----------------------------------------------------------------------------- the model by hand
def reference(rows: dict[int, np.ndarray], dense: dict[str, torch.Tensor]) -> dict[str, list[float]]:
    """ctr and bid of :data:`PROBE` computed with numpy from the rows of its FIDs and the dense weights."""
    w = {k: v.numpy().astype(np.float64) for k, v in dense.items()}
    zero = np.zeros(DIM + 1)
    out = {"ctr": [], "bid": []}
    for i in range(2):
        uid = rows.get(PROBE[0]["uid"][i][0], zero)
        movs = [rows.get(f, zero) for f in PROBE[0]["mov"][i]]
        mov = np.mean(movs, 0) if movs else zero
        hist = [rows.get(f, zero)[:DIM] for f in PROBE[0]["hist"][i][:3]]
        hist = np.sum(hist, 0) / 3 if hist else np.zeros(DIM)  # first_n(3) pads with zeros, then mean(1)
        x = np.concatenate([uid[:DIM], mov[:DIM], hist, PROBE[1]["ctx"][i]])
        h = np.maximum(w["tower.0.weight"] @ x + w["tower.0.bias"], 0)
        o = w["tower.2.weight"] @ h + w["tower.2.bias"]
        out["ctr"].append(float(1 / (1 + np.exp(-(o[0] + uid[DIM] + mov[DIM])))))
        out["bid"].append(float(o[1]))
    return out


def random_update(version: int, seed: int, dense_like: dict[str, torch.Tensor]) -> tuple[dict, dict[int, np.ndarray]]:
    """An update giving U and M new rows (biases on FixedR8's grid, so exact) and new dense weights."""
    rng = np.random.default_rng(seed)
    rows = {f: np.append(rng.normal(size=DIM), rng.integers(-100, 100) / 256).astype(np.float32) for f in (U, M)}
    dense = {k: torch.from_numpy(rng.normal(size=tuple(v.shape)).astype(np.float32)) for k, v in dense_like.items()}
    update = {"version": version, "dense": dense, "tables": {
        "uid": {"ids": torch.tensor([U]), "rows": torch.from_numpy(rows[U][None]),
                "deleted": torch.tensor([], dtype=torch.int64)},
        "mov": {"ids": torch.tensor([M]), "rows": torch.from_numpy(rows[M][None])}}}
    return update, rows


def dense_state(model: ServingModel) -> dict[str, torch.Tensor]:
    return {k.removeprefix("model."): v for k, v in model._program.state_dict().items()}


# ----------------------------------------------------------------------------- in process
def test_update_rows_evictions_and_dense_weights(model):
    update, rows = random_update(100, 0, dense_state(model))
    sizes = model.table_sizes()
    assert model.apply_update(update) == 100 and model.version == 100 and model.last_update_time is not None
    np.testing.assert_array_equal(model.lookup("uid", [U])[0], rows[U])
    got = model.predict(*PROBE)
    want = reference(rows, update["dense"])
    np.testing.assert_allclose(got["ctr"], want["ctr"], atol=1e-6)
    np.testing.assert_allclose(got["bid"], want["bid"], atol=1e-6)
    assert model.table_sizes() == sizes  # U and M existed: overwritten, not added

    new = make_fid(1, 500)
    model.apply_update({"version": 101, "tables": {"uid": {"ids": np.array([new, new]), "rows": np.ones((2, DIM + 1)),
                                                           "deleted": np.array([U, ABSENT])}}})
    assert model.table_sizes()["uid"] == sizes["uid"]  # one in, one out
    np.testing.assert_array_equal(model.lookup("uid", [U, new]), [[0] * (DIM + 1), [1] * DIM + [127 / 256]])
    # An evicted FID reads zeros, like one never seen; the dense weights of version 100 stay.
    assert model.predict({**PROBE[0], "uid": [[U], [U]]}, PROBE[1]) == model.predict(
        {**PROBE[0], "uid": [[ABSENT], [ABSENT]]}, PROBE[1])
    np.testing.assert_allclose(model.predict(*PROBE)["bid"], reference({M: rows[M]}, update["dense"])["bid"],
                               atol=1e-6)


def test_bad_updates_change_nothing(model):
    dense = dense_state(model)
    before, rows = model.predict(*PROBE), model.lookup("uid", [U])
    ok_rows = {"ids": torch.tensor([U]), "rows": torch.zeros(1, DIM + 1)}
    cases = [
        ({"version": 3}, StaleUpdateError, "older than the served version 8"),
        ({"version": "9"}, RequestError, "'version' must be an int"),
        ({"version": 9, "extra": 1}, RequestError, "unknown field(s) ['extra']"),
        ({"version": 9, "tables": {"nope": ok_rows}}, RequestError, "tables['nope']: no such table"),
        ({"version": 9, "tables": {"uid": {"ids": torch.tensor([1.5]), "rows": torch.zeros(1, DIM + 1)}}},
         RequestError, "tables['uid']['ids'] must be a 1-D integer tensor"),
        ({"version": 9, "tables": {"uid": {"ids": torch.tensor([U]), "rows": torch.zeros(1, DIM)}}},
         RequestError, "tables['uid']['rows'] must be a float tensor of shape [1, 5]"),
        ({"version": 9, "tables": {"uid": {"ids": torch.tensor([U])}}}, RequestError, "['rows'] is missing"),
        ({"version": 9, "tables": {"uid": {**ok_rows, "rowz": 1}}}, RequestError, "unknown field(s) ['rowz']"),
        ({"version": 9, "tables": {"uid": ok_rows}, "dense": {k: v for k, v in dense.items() if k != "tower.0.bias"}},
         RequestError, "missing ['tower.0.bias']"),
        ({"version": 9, "tables": {"uid": ok_rows}, "dense": {**dense, "tower.0.bias": torch.zeros(3)}},
         RequestError, "dense['tower.0.bias'] must be a torch.float32 tensor of shape [8]"),
        # Only a missing 'tables' means no table changes.
        ({"version": 9, "tables": []}, RequestError, "'tables' must be a dict"),
        ({"version": 9, "tables": 0}, RequestError, "'tables' must be a dict"),
        # Tensors numpy cannot hold.
        ({"version": 9, "tables": {"uid": {**ok_rows, "ids": torch.tensor([1.0], dtype=torch.bfloat16)}}},
         RequestError, "tables['uid']['ids'] must be a 1-D integer tensor of FIDs, got torch.bfloat16 [1]"),
        ({"version": 9, "tables": {"uid": {**ok_rows, "ids": torch.tensor([U]).to_sparse()}}},
         RequestError, "tables['uid']['ids'] must be a dense (strided) tensor, got layout torch.sparse_coo"),
        ({"version": 9, "tables": {"uid": {**ok_rows, "rows": torch.zeros(1, DIM + 1).to_sparse()}}},
         RequestError, "tables['uid']['rows'] must be a dense (strided) tensor"),
        ({"version": 9, "tables": {"uid": {**ok_rows, "deleted": torch.zeros(1, dtype=torch.int64, device="meta")}}},
         RequestError, "tables['uid']['deleted']: a torch.int64 tensor cannot be read"),
        # A sparse weight of the right shape and dtype would load, then fail every prediction.
        ({"version": 9, "dense": {**dense, "tower.0.bias": torch.zeros(8).to_sparse()}},
         RequestError, "dense['tower.0.bias'] must be a dense (strided) tensor"),
        ({"version": 9, "dense": {**dense, "tower.0.bias": torch.zeros(8, device="meta")}},
         RequestError, "dense['tower.0.bias'] cannot be read"),
    ]
    for update, error, message in cases:
        with pytest.raises(error) as raised:
            model.apply_update(update)
        assert message in str(raised.value)
    assert model.version == 8 and model.last_update_time is None
    assert model.predict(*PROBE) == before
    np.testing.assert_array_equal(model.lookup("uid", [U]), rows)


def test_bfloat16_rows_are_widened(model):
    rows = torch.tensor([[0.5, -1.25, 3.0, 0.125, 0.25]], dtype=torch.bfloat16)
    model.apply_update(decode_update(encode_update({"version": 9, "tables": {"uid": {"ids": torch.tensor([U]),
                                                                                     "rows": rows}}})))
    np.testing.assert_array_equal(model.lookup("uid", [U]), rows.float().numpy())


def test_booleans_are_never_fids_or_dense_values(model):
    sparse, dense = PROBE
    # JSON true/false are ints to Python and numpy; alone, mixed with ints and mixed with floats.
    cases = [
        ({**sparse, "uid": [[True], [2]]}, dense, "sparse['uid'][0][0] must be an integer FID"),
        ({**sparse, "uid": [[True], [False]]}, dense, "sparse['uid'][0][0] must be an integer FID"),
        ({**sparse, "hist": [[], [M, True]]}, dense, "sparse['hist'][1][1] must be an integer FID"),
        ({**sparse, "uid": [[2**64 - 1], [True]]}, dense, "sparse['uid'][1][0] must be an integer FID"),
        (sparse, {"ctx": [[0, 1, 2], [3, False, 4]]}, "dense['ctx'][1][1] must be a number, got False"),
        (sparse, {"ctx": [[True, True, True], [True, True, True]]}, "dense['ctx'][0][0] must be a number, got True"),
        (sparse, {"ctx": [[0.5, 1.5, True], [0.5, 1.5, 2.5]]}, "dense['ctx'][0][2] must be a number, got True"),
    ]
    for sparse_case, dense_case, message in cases:
        with pytest.raises(RequestError) as raised:
            model.predict(sparse_case, dense_case)
        assert message in str(raised.value), (sparse_case, dense_case)


def test_update_bytes_load_with_weights_only():
    update = {"version": np.int64(4), "tables": {"t": {"ids": np.array([1, 2]), "rows": np.zeros((2, 3), np.float32)}},
              "dense": {"w": torch.ones(4)[:2]}}
    decoded = decode_update(encode_update(update))
    assert decoded["version"] == 4 and type(decoded["version"]) is int
    assert torch.equal(decoded["tables"]["t"]["ids"], torch.tensor([1, 2]))
    assert decoded["dense"]["w"].untyped_storage().nbytes() == 8  # the view alone, not its storage
    buffer = io.BytesIO()
    torch.save({"version": 1, "when": datetime.date(2024, 1, 1)}, buffer)
    with pytest.raises(RequestError, match="weights_only=True"):
        decode_update(buffer.getvalue())


def test_uint64_fids_and_absent_fids(model):
    big = make_fid_v1(1023, 5)  # bit 63 set: a negative int64
    model.apply_update({"version": 8, "tables": {"uid": {"ids": np.array([big]), "rows": np.ones((1, DIM + 1))}}})
    as_int64 = model.predict({**PROBE[0], "uid": [[big], [ABSENT]]}, PROBE[1])
    assert model.predict({**PROBE[0], "uid": [[big + 2**64], [ABSENT]]}, PROBE[1]) == as_int64
    # uint64 and negative int64 spellings in one request
    mixed = model.predict({**PROBE[0], "uid": [[big + 2**64], [-1]]}, PROBE[1])
    assert mixed == model.predict({**PROBE[0], "uid": [[big], [-1]]}, PROBE[1])
    assert mixed["ctr"][0] == as_int64["ctr"][0]
    assert model.predict({k: [] for k in PROBE[0]}, {"ctx": []}) == {"ctr": [], "bid": [], "logits": []}


# ----------------------------------------------------------------------------- HTTP
def test_http_predict_health_metrics(model, server):
    with httpx.Client(base_url=server) as client:
        assert client.get("/v1/health").json() == {"status": "ok", "model_version": 8}
        for batch in predict_batches():
            sparse, dense = request_of(batch)
            answer = client.post("/v1/predict", json={"sparse": sparse, "dense": dense})
            assert answer.status_code == 200
            assert answer.json() == {"outputs": model.predict(sparse, dense), "model_version": 8}
        metrics = client.get("/v1/metrics").json()
    assert metrics["requests"] == 2 and metrics["errors"] == 0 and metrics["model_version"] == 8
    assert metrics["last_update_time"] is None and metrics["table_sizes"] == model.table_sizes()
    assert 0 < metrics["latency_ms"]["p50"] <= metrics["latency_ms"]["p90"] <= metrics["latency_ms"]["p99"]


def test_http_malformed_requests_get_4xx_naming_the_field(model, server):
    sparse, dense = PROBE
    no_mov = {k: v for k, v in sparse.items() if k != "mov"}
    predict_cases = [
        (b"{not json", "request body is not JSON"),
        (b"[1, 2]", "must be a JSON object"),
        ({"sparse": sparse, "dense": dense, "extra": 1}, "unknown request field(s) ['extra']"),
        ({"sparse": {**sparse, "age": [[1], [2]]}, "dense": dense}, "unknown sparse feature(s) ['age']"),
        ({"sparse": no_mov, "dense": dense}, "sparse feature 'mov' is missing"),
        ({"sparse": sparse}, "dense feature 'ctx' is missing"),
        ({"sparse": sparse, "dense": {"ctx": [[1, 2, 3], [1, 2]]}}, "dense['ctx'][1] must be a list of 3 numbers"),
        ({"sparse": sparse, "dense": {"ctx": [[1, "x", 3], [1, 2, 3]]}}, "dense['ctx'][0][1] must be a number"),
        ({"sparse": {**sparse, "uid": [["12"], [1]]}, "dense": dense}, "sparse['uid'][0][0] must be an integer"),
        ({"sparse": {**sparse, "uid": [[1.5], [1]]}, "dense": dense}, "sparse['uid'][0][0] must be an integer FID"),
        ({"sparse": {**sparse, "uid": [[1], [2**64]]}, "dense": dense}, "sparse['uid'][1][0] must be an integer FID"),
        ({"sparse": {**sparse, "uid": [1, 2]}, "dense": dense}, "sparse['uid'][0] must be a list of FIDs"),
        ({"sparse": {**sparse, "uid": {"a": 1}}, "dense": dense}, "sparse['uid'] must be a list"),
        ({"sparse": {**sparse, "uid": [[1]]}, "dense": dense}, "different numbers of examples"),
        (b"[" * 100_000 + b"]" * 100_000, "nests too deeply"),
        (b'{"sparse": {"uid": ' + b"[" * 5_000 + b"]" * 5_000 + b"}}", "nests too deeply"),
        ({"sparse": {**sparse, "uid": [[True], [2]]}, "dense": dense}, "sparse['uid'][0][0] must be an integer FID"),
        ({"sparse": sparse, "dense": {"ctx": [[1, True, 3], [1, 2, 3]]}}, "dense['ctx'][0][1] must be a number"),
        # An int beyond float64 (JSON numbers have no size limit).
        (b'{"sparse": %s, "dense": {"ctx": [[0, 0, 0], [1%s, 0, 0]]}}' % (json.dumps(sparse).encode(), b"0" * 400),
         "dense['ctx'][1][0] must be a finite number within float32 range, got 1000"),
    ]
    stale = encode_update({"version": 1})
    update_cases = [
        (b"\x00garbage", "application/octet-stream", 400, "torch.save bytes"),
        (encode_update({"version": 9, "tables": {"nope": {}}}), "application/octet-stream", 400, "no such table"),
        (stale, "application/octet-stream", 409, "older than the served version"),
        (stale, "application/json", 415, "application/octet-stream"),
        (encode_update({"version": 9, "tables": {"uid": {"ids": torch.tensor([1.0], dtype=torch.bfloat16)}}}),
         "application/octet-stream", 400, "tables['uid']['ids'] must be a 1-D integer tensor"),
        (encode_update({"version": 9, "tables": {"uid": {"ids": torch.tensor([1, 2]).to_sparse()}}}),
         "application/octet-stream", 400, "tables['uid']['ids'] must be a dense (strided) tensor"),
        (encode_update({"version": 9, "tables": []}), "application/octet-stream", 400, "'tables' must be a dict"),
    ]
    with httpx.Client(base_url=server) as client:
        for body, message in predict_cases:
            answer = (client.post("/v1/predict", content=body) if isinstance(body, bytes)
                      else client.post("/v1/predict", json=body))
            assert answer.status_code == 400 and message in answer.json()["detail"], (body, answer.text)
        for body, content_type, status, message in update_cases:
            answer = client.post("/v1/update", content=body, headers={"Content-Type": content_type})
            assert answer.status_code == status and message in answer.json()["detail"], answer.text
        metrics = client.get("/v1/metrics").json()
    assert metrics["requests"] == metrics["errors"] == len(predict_cases)
    assert metrics["updates"] == 0 and metrics["update_errors"] == len(update_cases)
    assert metrics["model_version"] == 8  # no update got through
    with pytest.raises(UpdateRejected) as rejected:
        push_update(server, {"version": 2})
    assert rejected.value.status == 409 and "older than" in rejected.value.detail


def test_http_non_finite_values_get_4xx_counted_as_errors(model, server):
    sparse = json.dumps(PROBE[0])
    # Python's json reads NaN, Infinity and 1e39 (inf as float32): all would give outputs JSON cannot carry.
    for value in (b"NaN", b"Infinity", b"-Infinity", b"1e39", b"-1e39"):
        body = b'{"sparse": %s, "dense": {"ctx": [[%s, 0, 0], [0, 0, 0]]}}' % (sparse.encode(), value)
        answer = httpx.post(f"{server}/v1/predict", content=body)
        assert answer.status_code == 400, (value, answer.text)
        assert "dense['ctx'][0][0] must be a finite number within float32 range" in answer.json()["detail"]
    # Finite inputs that overflow the model: weights of ones sum three 3e38s to inf.
    ones = {name: torch.ones_like(t) for name, t in dense_state(model).items()}
    model.apply_update({"version": 9, "dense": ones})
    overflow = {"sparse": PROBE[0], "dense": {"ctx": [[3e38, 3e38, 3e38], [0.0, 0.0, 0.0]]}}
    answer = httpx.post(f"{server}/v1/predict", json=overflow)
    assert answer.status_code == 422 and "output 'bid'[0] is not finite" in answer.json()["detail"], answer.text
    assert httpx.post(f"{server}/v1/predict", json={"sparse": PROBE[0], "dense": PROBE[1]}).status_code == 200
    metrics = httpx.get(f"{server}/v1/metrics").json()
    assert metrics["requests"] == 7 and metrics["errors"] == 6


def read_answer(sock: socket.socket) -> tuple[bytes, bytes]:
    """The status line and the body of one HTTP answer read from ``sock``."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, body = data.split(b"\r\n\r\n", 1)
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += sock.recv(65536)
    return head.split(b"\r\n")[0], body


def test_http_body_and_batch_limits_get_413_before_the_body_is_read(model, serve):
    with pytest.raises(ValueError, match="max_batch_size must be > 0"):
        create_app(model, max_batch_size=0)
    limit = 2_000
    base = serve(create_app(model, max_body_bytes=limit, max_batch_size=2, max_update_bytes=limit))
    request = json.dumps({"sparse": PROBE[0], "dense": PROBE[1]}).encode()
    with httpx.Client(base_url=base) as client:
        # A body of exactly the limit is read; one byte more is refused, whether it is sent whole or chunked.
        exact = client.post("/v1/predict", content=request + b" " * (limit - len(request)))
        assert exact.status_code == 200 and exact.json()["outputs"] == model.predict(*PROBE)
        answer = client.post("/v1/predict", content=request + b" " * (limit + 1 - len(request)))
        assert answer.status_code == 413 and f"request body of {limit + 1} bytes" in answer.json()["detail"]
        answer = client.post("/v1/predict", content=iter([request, b" " * limit]))
        assert answer.status_code == 413
        assert "over the limit of 2000 bytes (--max-body-bytes)" in answer.json()["detail"]
        # Three examples where two are allowed: 413 naming the first feature that has them.
        three = {"sparse": {name: rows + rows[:1] for name, rows in PROBE[0].items()},
                 "dense": {"ctx": [[0, 0, 0]] * 3}}
        answer = client.post("/v1/predict", json=three)
        assert answer.status_code == 413
        assert "sparse['uid'] has 3 examples; a request may have at most 2" in answer.json()["detail"]
        answer = client.post("/v1/update", content=b"\0" * (limit + 1),
                             headers={"Content-Type": "application/octet-stream"})
        assert answer.status_code == 413 and "(--max-update-bytes)" in answer.json()["detail"]
        metrics = client.get("/v1/metrics").json()
    assert metrics["requests"] == 4 and metrics["errors"] == 3 and metrics["update_errors"] == 1

    # The answer comes while the client has sent almost none of the body.
    address = ("127.0.0.1", int(base.rsplit(":", 1)[1]))
    head = b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(head + b"Content-Length: 1000000000\r\n\r\n{")
        status, body = read_answer(sock)
        assert status.startswith(b"HTTP/1.1 413 ") and b"request body of 1000000000 bytes" in body
        assert sock.recv(1) == b""  # closed rather than read on
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(head + b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n%s\r\n" % (1500, b" " * 1500) * 2)
        status, body = read_answer(sock)  # 3,000 bytes sent, and no closing chunk
        assert status.startswith(b"HTTP/1.1 413 ") and b"over the limit of 2000 bytes" in body
        # The rest of a chunked body, of unknown length, is read and discarded: the connection serves on.
        sock.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (1500, b" " * 1500) + b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_answer(sock) == (b"HTTP/1.1 200 OK", b'{"status":"ok","model_version":8}')


def test_hot_updates_while_a_client_keeps_predicting(model, server):
    dense = dense_state(model)
    expected = {8: model.predict(*PROBE)}
    updates = []
    for k in range(5):
        update, rows = random_update(100 + k, k, dense)
        updates.append(update)
        expected[100 + k] = reference(rows, update["dense"])
    answers: list[tuple[int, int, dict]] = []
    stop = threading.Event()

    def keep_predicting():
        with httpx.Client(base_url=server, timeout=30) as client:
            while not stop.is_set():
                answer = client.post("/v1/predict", json={"sparse": PROBE[0], "dense": PROBE[1]})
                body = answer.json()
                answers.append((answer.status_code, body.get("model_version"), body.get("outputs")))

    clients = [threading.Thread(target=keep_predicting) for _ in range(2)]
    for thread in clients:
        thread.start()
    try:
        time.sleep(0.3)
        for update in updates:
            assert push_update(server, update) == {"model_version": update["version"]}
            time.sleep(0.15)
    finally:
        stop.set()
        for thread in clients:
            thread.join(30)

    assert len(answers) > 20 and all(status == 200 for status, _, _ in answers)
    versions = [version for _, version, _ in answers]
    assert len(set(versions)) >= 4  # requests were served across the updates
    for _, version, outputs in answers:  # each answer is wholly of the version it reports
        np.testing.assert_allclose(outputs["ctr"], expected[version]["ctr"], atol=1e-6)
        np.testing.assert_allclose(outputs["bid"], expected[version]["bid"], atol=1e-6)
    with httpx.Client(base_url=server) as client:
        final = client.post("/v1/predict", json={"sparse": PROBE[0], "dense": PROBE[1]}).json()
        metrics = client.get("/v1/metrics").json()
    assert final["model_version"] == 104
    np.testing.assert_allclose(final["outputs"]["ctr"], expected[104]["ctr"], atol=1e-6)
    assert metrics["errors"] == 0 and metrics["updates"] == len(updates) and metrics["model_version"] == 104
    assert metrics["last_update_time"] is not None


def test_main_serves_the_newest_export(export_path, monkeypatch):
    started = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: started.update(app=app, **kwargs))
    monkeypatch.setattr(torch, "set_num_threads", lambda n: started.update(threads=n))
    serving_main.main(["--export-dir", str(export_path).rsplit("/", 1)[0], "--port", "9123"])
    assert started["host"] == "127.0.0.1" and started["port"] == 9123 and started["threads"] == 1
    assert {route.path for route in started["app"].routes} >= {"/v1/predict", "/v1/health", "/v1/metrics", "/v1/update"}


def test_main_names_a_model_path_that_is_no_export(tmp_path, capsys):
    for path in (tmp_path / "missing", tmp_path):
        with pytest.raises(SystemExit) as exit_info:
            serving_main.main(["--export-dir", str(path)])
        assert exit_info.value.code == 2
        assert f"monolith serve: error: --export-dir {path}:" in capsys.readouterr().err


def test_main_limits_reach_the_app(export_path, monkeypatch, serve):
    apps = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: apps.append(app))
    serving_main.main(["--export-dir", str(export_path), "--max-batch-size", "1", "--max-body-bytes", "5000",
                       "--max-update-bytes", "10"])
    base = serve(apps[0])
    answer = httpx.post(f"{base}/v1/predict", json={"sparse": PROBE[0], "dense": PROBE[1]})
    assert answer.status_code == 413 and "at most 1 (--max-batch-size)" in answer.json()["detail"]
    answer = httpx.post(f"{base}/v1/predict", content=b" " * 5001)
    assert answer.status_code == 413 and "limit of 5000 bytes" in answer.json()["detail"]
    with pytest.raises(UpdateRejected) as rejected:
        push_update(base, {"version": 9})
    assert rejected.value.status == 413 and "limit of 10 bytes" in rejected.value.detail
    with pytest.raises(SystemExit):
        serving_main.main(["--export-dir", str(export_path), "--max-batch-size", "0"])


# ----------------------------------------------------------------------------- versions, restarts, full updates


DAY = 86400
NEW_UID = make_fid(1, 777)  # a user first trained after the export


class RestartableServer:
    """uvicorn in a thread on 127.0.0.1, stopped and started again on the same port (a restart)."""

    def __init__(self) -> None:
        self.port = 0
        self._running = None

    def start(self, app) -> str:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        app_server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        thread = threading.Thread(target=app_server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        self._running = (app_server, thread, sock)
        deadline = time.monotonic() + 20
        while not app_server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
            time.sleep(0.01)
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self._running is not None:
            app_server, thread, sock = self._running
            app_server.should_exit = True
            thread.join(10)
            sock.close()
            self._running = None


@pytest.fixture
def restartable():
    server = RestartableServer()
    yield server
    server.stop()


class ExpiringServeModel(ServeModel):
    """:class:`ServeModel` whose rows expire after 100 days without an update."""

    def create_embedding_feature_column(self, feature_name, **kwargs):
        return super().create_embedding_feature_column(feature_name, expire_time=100, **kwargs)


def at_day(batches: list[Batch], day: int, new_uid_every: int = 0) -> list[Batch]:
    """``batches`` with request time ``day``; every ``new_uid_every``-th example's user :data:`NEW_UID`."""
    out = []
    for batch in batches:
        rows = {name: batch.sparse[name].to_lists() for name in batch.sparse.keys()}
        if new_uid_every:
            rows["uid"] = [[NEW_UID] if i % new_uid_every == 0 else r for i, r in enumerate(rows["uid"])]
        n = len(rows["uid"])
        out.append(Batch(KeyedJaggedTensor.from_lists(rows),
                         {**batch.dense, "req_time": torch.full((n,), day * DAY, dtype=torch.int64)}))
    return out


class PushEveryStep(TrainingHook):
    """Drives a ParameterSync by step instead of by clock, so the test knows what each push holds."""

    def __init__(self, sync: ParameterSync):
        self.sync = sync

    def after_step(self, step, batch, output) -> None:
        self.sync.push()


class AtStep(TrainingHook):
    def __init__(self, step: int, action):
        self.step, self.action = step, action

    def after_step(self, step, batch, output) -> None:
        if step == self.step:
            self.action()


def assert_serving_equals_trainer(served: ServingModel, est: Estimator) -> None:
    """Serving holds exactly the trainer's FIDs, their rows at served precision, and its dense weights."""
    tables = est.model.ctx.tables
    assert served.table_sizes() == {name: len(module.table) for name, module in tables.items()}
    for name, module in tables.items():
        keys, rows = module.table.items()
        np.testing.assert_array_equal(served.lookup(name, keys), served._tables[name].as_served(rows))
    trained_dense = est.model.dense_state_dict()
    served_dense = dense_state(served)
    assert served_dense.keys() == trained_dense.keys()
    for name, value in trained_dense.items():
        torch.testing.assert_close(served_dense[name], value, atol=0, rtol=0)


def test_serving_restarted_from_the_export_mid_training_gets_a_full_snapshot(tmp_path, restartable):
    torch.manual_seed(0)
    est = Estimator(ExpiringServeModel(vec_compressor=Fp32Compressor(), bias_compressor=FixedR8Compressor(BIAS_RANGE)),
                    RunConfig(model_dir=str(tmp_path / "run"), log_step_count_steps=1000, enable_summaries=False,
                              progress_bar=False))
    # The stream: steps 1-2 before the export (day 0); steps 3-4 (day 0) train NEW_UID, which the
    # export lacks; steps 5-6 (day 400) train a few FIDs, so the day-0 rows not trained again expire
    # and go from the trainer (exported ones among them).
    stream = (at_day(make_batches(2, 16, 0), 0) + at_day(make_batches(2, 16, 3), 0, new_uid_every=3)
              + at_day(make_batches(2, 16, 4, pool=4), 400, new_uid_every=5))
    est.train(max_steps=2, input_fn=lambda mode: stream)
    export = est.export_saved_model(tmp_path / "export")
    exported = ServingModel.load(export)
    assert exported.version == 2
    exported_uids = set(est.model.ctx.tables["uid"].table.items()[0].tolist())
    served = {"model": exported}
    url = restartable.start(create_app(served["model"]))

    # Every step pushes a delta building on the one before (the first on the export's step 2);
    # after step 4's push serving restarts from the export.
    def restart():
        assert_serving_equals_trainer(served["model"], est)  # the deltas so far got through
        assert served["model"].version == 4
        restartable.stop()
        served["model"] = ServingModel.load(export)
        assert restartable.start(create_app(served["model"])) == url

    sync = ParameterSync(url, interval_s=3600, evict_interval_s=1e-9)  # pushes by step; a sweep after each step
    est.train(max_steps=6, input_fn=lambda mode: stream, hooks=[sync, PushEveryStep(sync), AtStep(4, restart)])
    assert est.global_step == 6

    model = served["model"]
    trainer_uids = set(est.model.ctx.tables["uid"].table.items()[0].tolist())
    assert NEW_UID in trainer_uids and NEW_UID not in exported_uids
    gone = exported_uids - trainer_uids
    assert gone  # exported rows the trainer evicted after the restart's export...
    np.testing.assert_array_equal(model.lookup("uid", sorted(gone)), 0)  # ...are gone from serving too
    assert_serving_equals_trainer(model, est)
    # Steps 3 and 4: deltas; step 5: a delta refused for its base, then a full snapshot; step 6: a delta.
    assert sync.pushes == 4 and sync.full_pushes == 1 and sync.version == 6
    with httpx.Client(base_url=url) as client:
        assert client.get("/v1/health").json()["model_version"] == 6
        metrics = client.get("/v1/metrics").json()
        request = request_of(predict_batches()[0])
        answer = client.post("/v1/predict", json={"sparse": request[0], "dense": request[1]}).json()
    assert metrics["updates"] == 2 and metrics["update_errors"] == 1
    assert metrics["table_sizes"] == {name: len(m.table) for name, m in est.model.ctx.tables.items()}
    # Serving answers as a fresh export of the trainer at step 6 does.
    fresh = ServingModel.load(est.export_saved_model(tmp_path / "export"))
    assert answer["model_version"] == fresh.version == 6
    want = fresh.predict(*request)
    for name in want:
        np.testing.assert_allclose(answer["outputs"][name], want[name], atol=1e-6, rtol=0)


def test_a_delta_on_another_base_is_refused_with_409_and_a_full_update_replaces(model, server):
    dense = dense_state(model)
    uid_keys = model._tables["uid"]._keys[: model.table_sizes()["uid"]].copy()
    row = torch.ones(1, DIM + 1)

    def delta(version, base, fid=U):
        return {"version": version, "base_version": base, "tables": {"uid": {"ids": torch.tensor([fid]), "rows": row}}}

    with pytest.raises(BaseVersionRejected) as refused:
        push_update(server, delta(9, 7))
    assert refused.value.status == 409 and refused.value.reason == "base_version"
    assert refused.value.base_version == 8 and refused.value.model_version == 8  # the export's step
    assert "builds on version 7, but serving holds version 8" in refused.value.detail
    answer = httpx.post(f"{server}/v1/update", content=encode_update(delta(9, 7)),
                        headers={"Content-Type": "application/octet-stream"})
    assert answer.status_code == 409 and answer.json()["reason"] == "base_version"
    assert answer.json()["model_version"] == 8 and answer.json()["base_version"] == 8
    assert model.version == 8 and not np.array_equal(model.lookup("uid", [U]), row.numpy())

    assert push_update(server, delta(9, 8)) == {"model_version": 9}  # builds on the export: applied
    with pytest.raises(BaseVersionRejected) as refused:
        push_update(server, delta(10, 8))  # the same base again: serving is at 9 now
    assert refused.value.base_version == 9
    assert push_update(server, delta(10, 9)) == {"model_version": 10}
    # An update older than serving holds is still stale, with its own reason.
    with pytest.raises(UpdateRejected) as stale:
        push_update(server, delta(5, 10))
    assert stale.value.status == 409 and stale.value.reason == "stale" and stale.value.min_version == 10
    assert not isinstance(stale.value, BaseVersionRejected) and "older than" in stale.value.detail

    # A full update replaces every table's rows, whatever its base; FIDs it lacks read zeros.
    # (Biases on FixedR8's grid, so that rows are served exactly.)
    full_rows = {U: np.full((1, DIM + 1), 0.25, np.float32), M: np.full((1, DIM + 1), -0.25, np.float32)}
    full = {"version": 11, "base_version": 3, "full": True, "dense": dense,
            "tables": {"uid": {"ids": torch.tensor([U]), "rows": torch.from_numpy(full_rows[U])},
                       "mov": {"ids": torch.tensor([M]), "rows": torch.from_numpy(full_rows[M])}}}
    bad_full = [({**full, "dense": None}, "must hold the dense weights"),
                ({**full, "tables": {"uid": full["tables"]["uid"]}}, "must hold every table"),
                ({**full, "tables": {**full["tables"], "mov": {**full["tables"]["mov"], "deleted": torch.tensor([M])}}},
                 "must be empty in a full update")]
    for update, message in bad_full:
        with pytest.raises(UpdateRejected) as rejected:
            push_update(server, update)
        assert rejected.value.status == 400 and message in rejected.value.detail
    assert push_update(server, full) == {"model_version": 11}
    assert model.table_sizes() == {"uid": 1, "mov": 1}
    np.testing.assert_array_equal(model.lookup("uid", uid_keys[uid_keys != U]), 0)
    np.testing.assert_array_equal(model.lookup("uid", [U]), full_rows[U])
    np.testing.assert_array_equal(model.lookup("mov", [M]), full_rows[M])
    got, want = model.predict(*PROBE), reference({U: full_rows[U][0], M: full_rows[M][0]}, dense)
    np.testing.assert_allclose(got["ctr"], want["ctr"], atol=1e-6)
    np.testing.assert_allclose(got["bid"], want["bid"], atol=1e-6)
    with pytest.raises(BaseVersionRejected):
        push_update(server, delta(12, 10))
    assert push_update(server, delta(12, 11)) == {"model_version": 12}  # deltas build on the full update
    metrics = httpx.get(f"{server}/v1/metrics").json()
    assert metrics["updates"] == 4 and metrics["update_errors"] == 5 + len(bad_full)


def test_a_delta_without_a_base_leaves_every_shard_unknown(model):
    model.apply_update({"version": 9, "tables": {"uid": {"ids": np.array([U]), "rows": np.ones((1, DIM + 1))}}})
    assert model.shard_version() is None
    with pytest.raises(BaseVersionError, match="serving holds an unknown version") as refused:
        model.apply_update({"version": 10, "base_version": 9})
    assert refused.value.base_version is None and refused.value.served_version == 9
    model.apply_update({"version": 10, "full": True, "tables": {"uid": {"ids": np.array([U]),
                                                                        "rows": np.ones((1, DIM + 1))},
                                                                "mov": {}}, "dense": dense_state(model)})
    assert model.shard_version() == 10 and model.table_sizes() == {"uid": 1, "mov": 0}
    assert model.apply_update({"version": 10, "base_version": 10}) == 10  # a push at the same step


def owned_by(rank: int, world_size: int, count: int, slot: int = 1) -> list[int]:
    """``count`` FIDs of ``slot`` that rank ``rank`` of ``world_size`` owns."""
    fids = torch.tensor([make_fid(slot, i) for i in range(1000, 1100)])
    return fids[shard_of(fids, world_size) == rank][:count].tolist()


def test_ranks_keep_their_own_base_versions_and_replace_only_their_shard(model):
    sizes = model.table_sizes()
    exported = model._tables["uid"]._keys[: sizes["uid"]].copy()
    exported_of = {r: exported[shard_of(torch.from_numpy(exported), 2).numpy() == r] for r in (0, 1)}
    assert exported_of[0].size and exported_of[1].size
    a0, b0 = owned_by(0, 2, 2)
    a1, b1 = owned_by(1, 2, 2)
    one = np.ones((1, DIM + 1), np.float32)

    def update(rank, version, base, fid, **extra):
        return {"version": version, "base_version": base, "rank": rank, "world_size": 2,
                "tables": {"uid": {"ids": np.array([fid]), "rows": one * (rank + 1)}}, **extra}

    # Both ranks start from the export; rank 1 lags behind rank 0: its update is older than the
    # served version, but not stale for its own shard.
    assert model.apply_update(update(0, 10, 8, a0)) == 10
    assert model.apply_update(update(1, 9, 8, a1)) == 10
    assert (model.shard_version(0, 2), model.shard_version(1, 2), model.version) == (10, 9, 10)
    with pytest.raises(StaleUpdateError, match=r"older than the version 9 serving holds for the shard of rank 1 of 2 "
                                               r"\(served version 10\)"):
        model.apply_update(update(1, 8, 9, b1))
    assert model.apply_update(update(1, 10, 9, b1)) == 10  # several ranks push for the same version
    with pytest.raises(BaseVersionError, match="builds on version 8, but serving holds version 10 for the shard of "
                                               "rank 1 of 2"):
        model.apply_update(update(1, 11, 8, b1))
    with pytest.raises(StaleUpdateError, match="update version 9 is older than the served version 10"):
        model.apply_update(update(0, 9, 10, b0))
    with pytest.raises(RequestError, match=r"tables\['uid'\]\['ids'\] holds FIDs of other ranks' shards"):
        model.apply_update(update(0, 11, 10, a1))
    with pytest.raises(RequestError, match=r"'rank' and 'world_size' must satisfy"):
        model.apply_update(update(2, 11, 10, a1))

    # Rank 1's full update replaces rank 1's rows only; rank 0's (exported and pushed) stay.
    before0 = model.lookup("uid", np.concatenate([exported_of[0], [a0]]))
    full1 = {"version": 11, "full": True, "rank": 1, "world_size": 2,
             "tables": {"uid": {"ids": np.array([b1]), "rows": one * 0.375}, "mov": {}}}
    assert model.apply_update(full1) == 11
    np.testing.assert_array_equal(model.lookup("uid", np.concatenate([exported_of[0], [a0]])), before0)
    np.testing.assert_array_equal(model.lookup("uid", np.concatenate([exported_of[1], [a1]])), 0)
    np.testing.assert_array_equal(model.lookup("uid", [b1]), one * 0.375)
    assert model.table_sizes()["uid"] == exported_of[0].size + 2
    assert model.shard_version(1, 2) == 11 and model.shard_version(0, 2) == 10
    with pytest.raises(RequestError, match="a full update from rank 0 must hold the dense weights"):
        model.apply_update({**full1, "rank": 0, "tables": {"uid": {}, "mov": {}}})
    assert model.apply_update(update(0, 12, 10, b0)) == 12  # rank 0's chain is untouched

    # A serving restart: each rank's next delta is refused, with the export's step as serving's base.
    restarted = ServingModel.load(model.path)
    with pytest.raises(BaseVersionError) as refused:
        restarted.apply_update(update(1, 13, 11, b1))
    assert refused.value.base_version == 8 and refused.value.served_version == 8
    # A full update from another world size leaves the shards of the other ranks unknown.
    model.apply_update({"version": 13, "full": True, "rank": 0, "world_size": 1, "dense": dense_state(model),
                        "tables": {"uid": {"ids": np.array([a1]), "rows": one}, "mov": {}}})
    assert model.table_sizes()["uid"] == 1 and model.shard_version(0, 1) == 13
    assert model.shard_version(0, 2) is None and model.shard_version(1, 2) is None


def test_parameter_sync_retries_a_failed_full_snapshot_and_replaces_a_newer_version(tmp_path):
    torch.manual_seed(0)
    est = Estimator(ServeModel(), RunConfig(model_dir=str(tmp_path / "run"), log_step_count_steps=1000,
                                            enable_summaries=False, progress_bar=False))
    est.train(max_steps=2)
    served = ServingModel.load(est.export_saved_model(tmp_path / "export"))
    est.train(max_steps=4)  # trained on without pushes: serving does not hold step 4, which the sync assumes
    sent, outcomes, down = [], [], [True]

    def push(url, update):
        sent.append(update)
        try:
            if update.get("full") and down:  # the first full snapshot fails
                down.clear()
                raise OSError("serving is down")
            served.apply_update(update)
            outcomes.append("applied")
        except Exception as error:
            outcomes.append(type(error).__name__)
            raise

    sync = ParameterSync("http://unused", interval_s=3600, push_fn=push)
    est.train(max_steps=7, hooks=[sync, PushEveryStep(sync)])
    assert [(u["version"], u["base_version"], u.get("full", False)) for u in sent] == [
        (5, 4, False), (5, 4, True),  # refused for its base, then a full snapshot that fails
        (6, 4, True),  # until a full snapshot gets through, every push is one
        (7, 6, False)]
    assert outcomes == ["BaseVersionError", "OSError", "applied", "applied"]
    assert sync.pushes == 2 and sync.full_pushes == 1 and served.version == 7
    assert_serving_equals_trainer(served, est)

    # Serving holds a newer version of the shard (a trainer restarted from an older checkpoint, or
    # a push with a huge version): the delta, not building on what serving holds, is refused for its
    # base, and the full snapshot that follows wins over the newer version (a full update is never
    # stale), so no push can lock the trainer out.
    served.apply_update({"version": 9, "full": True, "tables": {name: {} for name in served.table_sizes()},
                         "dense": dense_state(served)})
    sent.clear(), outcomes.clear()
    longer = make_batches(11, 16, 0)  # ServeModel's 8 training batches, and 3 more
    est.train(max_steps=11, input_fn=lambda mode: longer, hooks=[sync, PushEveryStep(sync)])
    assert [(u["version"], u["base_version"], u.get("full", False)) for u in sent] == [
        (8, 7, False), (8, 7, True), (9, 8, False), (10, 9, False), (11, 10, False)]
    assert outcomes == ["BaseVersionError", "applied", "applied", "applied", "applied"]
    assert served.version == 11 and sync.full_pushes == 2
    assert_serving_equals_trainer(served, est)


SYNC_WORKER = """
import os, sys, time
import torch
sys.path.insert(0, {tests!r})
from monolith.estimator import Estimator, RunConfig
from monolith.streaming.parameter_sync import ParameterSync
from test_serving import AtStep, PushEveryStep, distributed_stream
from test_export import ServeModel

out, url, pause, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
est = Estimator(ServeModel(), RunConfig(model_dir=os.path.join(out, "run"), log_step_count_steps=1000,
                                        enable_summaries=False, progress_bar=False))
rank = est.dist.rank


def dump(name):
    path = os.path.join(out, f"{{name}}-{{rank}}.pt")
    torch.save({{"tables": {{n: m.table.items() for n, m in est.model.ctx.tables.items()}},
                 "dense": est.model.dense_state_dict(), "step": est.global_step, "pushes": sync.pushes,
                 "full_pushes": sync.full_pushes}}, path + ".tmp")
    os.replace(path + ".tmp", path)


def wait_for_restart():
    dump("paused")
    while not os.path.exists(os.path.join(out, "go")):
        time.sleep(0.05)


sync = ParameterSync(url, interval_s=3600)
est.train(max_steps=steps, input_fn=lambda mode: distributed_stream(),
          hooks=[sync, PushEveryStep(sync), AtStep(pause, wait_for_restart)])
dump("final")
"""


def distributed_stream() -> list[Batch]:
    return make_batches(8, 16, 0)


def merged_state(states: list[dict]) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, torch.Tensor]]:
    """The tables of every rank's shard, together, and rank 0's dense weights."""
    tables = {name: tuple(np.concatenate([s["tables"][name][i] for s in states]) for i in (0, 1))
              for name in states[0]["tables"]}
    return tables, states[0]["dense"]


def assert_serving_equals(served: ServingModel, tables, dense) -> None:
    assert served.table_sizes() == {name: keys.size for name, (keys, _) in tables.items()}
    for name, (keys, rows) in tables.items():
        np.testing.assert_array_equal(served.lookup(name, keys), served._tables[name].as_served(rows))
    served_dense = dense_state(served)
    assert served_dense.keys() == dense.keys()
    for name, value in dense.items():
        torch.testing.assert_close(served_dense[name], value, atol=0, rtol=0)


def test_two_ranks_push_their_shards_and_recover_from_a_serving_restart(tmp_path, restartable):
    from monolith.distributed.routing import plan_route

    # One process trains steps 1-2 (compiling the kernels both ranks then load from numba's cache)
    # and exports; two ranks restore its checkpoint and train on, each pushing its shards.
    plan_route(np.array([1, 2, 1]), np.array([0, 1, 0]), 2, np.zeros(1, np.int64), 2)
    torch.manual_seed(0)
    est = Estimator(ServeModel(), RunConfig(model_dir=str(tmp_path / "run"), log_step_count_steps=1000,
                                            enable_summaries=False, progress_bar=False, dedup="sum"))
    est.train(max_steps=2, input_fn=lambda mode: distributed_stream())
    export = est.export_saved_model(tmp_path / "export")
    served = ServingModel.load(export)
    url = restartable.start(create_app(served))
    script = tmp_path / "sync_worker.py"
    script.write_text(SYNC_WORKER.format(tests=os.path.dirname(os.path.abspath(__file__))))
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    master_port = port.getsockname()[1]
    port.close()
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={master_port}", str(script), str(tmp_path), url, "4", "7"]
    trainers = subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while not all((tmp_path / f"paused-{rank}.pt").exists() for rank in (0, 1)):
            assert trainers.poll() is None, trainers.stdout.read()[-6000:]
            assert time.monotonic() < deadline, "the ranks did not reach step 4"
            time.sleep(0.1)
        paused = [torch.load(tmp_path / f"paused-{rank}.pt", weights_only=False) for rank in (0, 1)]
        # Steps 3 and 4: each rank's deltas, building on the export's step, then on its own last push.
        assert [p["step"] for p in paused] == [4, 4] and [p["full_pushes"] for p in paused] == [0, 0]
        for rank, state in enumerate(paused):  # each rank holds a shard of its own
            for keys, _ in state["tables"].values():
                assert keys.size and (shard_of(torch.from_numpy(keys), 2) == rank).all()
        assert served.version == 4 and served.shard_version(0, 2) == served.shard_version(1, 2) == 4
        assert_serving_equals(served, *merged_state(paused))

        restartable.stop()  # serving restarts from the export, while the ranks wait
        served = ServingModel.load(export)
        restartable.start(create_app(served))
        (tmp_path / "go").write_text("")
        output, _ = trainers.communicate(timeout=300)
        assert trainers.returncode == 0, output[-6000:]
    finally:
        if trainers.poll() is None:
            trainers.kill()
            trainers.wait()
    final = [torch.load(tmp_path / f"final-{rank}.pt", weights_only=False) for rank in (0, 1)]
    # Step 5: each rank's delta is refused for its base, and its full snapshot replaces its shard.
    assert [f["step"] for f in final] == [7, 7] and [f["full_pushes"] for f in final] == [1, 1]
    assert [f["pushes"] for f in final] == [5, 5]
    assert served.version == 7 and served.shard_version(0, 2) == served.shard_version(1, 2) == 7
    assert_serving_equals(served, *merged_state(final))
    metrics = httpx.get(f"{url}/v1/metrics").json()
    assert metrics["model_version"] == 7 and metrics["updates"] == 6 and metrics["update_errors"] == 2


def test_full_updates_while_a_client_keeps_predicting_are_atomic(model, server):
    dense = dense_state(model)
    expected, updates = {8: model.predict(*PROBE)}, []
    for k in range(5):
        update, rows = random_update(100 + k, k, dense)
        update = {**update, "full": True, "tables": {name: {k2: v for k2, v in part.items() if k2 != "deleted"}
                                                     for name, part in update["tables"].items()}}
        updates.append(update)
        expected[100 + k] = reference(rows, update["dense"])
    answers, stop = [], threading.Event()

    def keep_predicting():
        with httpx.Client(base_url=server, timeout=30) as client:
            while not stop.is_set():
                body = client.post("/v1/predict", json={"sparse": PROBE[0], "dense": PROBE[1]}).json()
                answers.append((body["model_version"], body["outputs"]))

    thread = threading.Thread(target=keep_predicting)
    thread.start()
    try:
        time.sleep(0.2)
        for update in updates:
            assert push_update(server, update) == {"model_version": update["version"]}
            time.sleep(0.15)
    finally:
        stop.set()
        thread.join(30)
    assert len({version for version, _ in answers}) >= 4
    for version, outputs in answers:  # tables, dense weights and version swapped together
        np.testing.assert_allclose(outputs["ctr"], expected[version]["ctr"], atol=1e-6)
        np.testing.assert_allclose(outputs["bid"], expected[version]["bid"], atol=1e-6)
    assert model.table_sizes() == {"uid": 1, "mov": 1}
