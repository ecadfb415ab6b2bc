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
import socket
import threading
import time

import httpx
import numpy as np
import pytest
import torch
import uvicorn

import monolith.serving.__main__ as serving_main
from monolith.fid import make_fid, make_fid_v1
from monolith.optim.compressors import FixedR8Compressor, Fp32Compressor
from monolith.serving import (RequestError, ServingModel, StaleUpdateError, UpdateRejected, decode_update,
                              encode_update, push_update)
from monolith.serving.server import create_app
from test_export import BIAS_RANGE, DIM, predict_batches, request_of, trained

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
    monkeypatch.setattr(serving_main.uvicorn, "run", lambda app, **kwargs: started.update(app=app, **kwargs))
    monkeypatch.setattr(torch, "set_num_threads", lambda n: started.update(threads=n))
    serving_main.main(["--model", str(export_path).rsplit("/", 1)[0], "--port", "9123"])
    assert started["host"] == "127.0.0.1" and started["port"] == 9123 and started["threads"] == 1
    assert {route.path for route in started["app"].routes} >= {"/v1/predict", "/v1/health", "/v1/metrics", "/v1/update"}


def test_main_names_a_model_path_that_is_no_export(tmp_path, capsys):
    for path in (tmp_path / "missing", tmp_path):
        with pytest.raises(SystemExit) as exit_info:
            serving_main.main(["--model", str(path)])
        assert exit_info.value.code == 2
        assert f"monolith serve: error: --model {path}:" in capsys.readouterr().err


def test_main_limits_reach_the_app(export_path, monkeypatch, serve):
    apps = []
    monkeypatch.setattr(serving_main.uvicorn, "run", lambda app, **kwargs: apps.append(app))
    serving_main.main(["--model", str(export_path), "--max-batch-size", "1", "--max-body-bytes", "5000",
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
        serving_main.main(["--model", str(export_path), "--max-batch-size", "0"])
