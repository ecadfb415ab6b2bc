"""Serving's request paths: dynamic batching of concurrent predictions (answers against unbatched
ones), ``ExampleBatch`` / ``Example`` protobuf bodies (answers against the same examples sent as
JSON), the JSON array reader (against Python's ``json``), the client's request builder (against
known FIDs and the MovieLens reader's), and lookups and program calls in bounded parts (against one
call). Servers are uvicorn on 127.0.0.1, stopped after their test.
"""

from __future__ import annotations

import json
import re
import threading

import httpx
import numpy as np
import pytest
import uvicorn

import monolith.serving.__main__ as serving_main
import monolith.serving.model as model_module
from monolith.data import MOVIELENS_SLOTS, load_movielens100k
from monolith.data.movielens import GENRES
from monolith.data.proto.example_pb2 import Example, ExampleBatch
from monolith.export.receiver import ServingInputReceiver
from monolith.fid import make_fid, make_fid_v1
from monolith.serving import RequestError
from monolith.serving.client import predict_request
from monolith.serving.model import parse_features
from monolith.serving.request import BLOCK_BYTES, JSON_BYTES, parse_json, parse_protobuf
from monolith.serving.server import create_app
from test_export import CTX, SLOTS, make_batches, request_of
from test_serving import PROBE, export_path, model, serve  # noqa: F401 - fixtures

PROTOBUF = {"Content-Type": "application/x-protobuf"}


def distinct_requests(count: int) -> list[dict]:
    """``count`` requests of 1 to 3 examples, no two alike."""
    batches = make_batches(count, 3, seed=5)
    requests = []
    for i, batch in enumerate(batches):
        sparse, dense = request_of(batch)
        n = i % 3 + 1
        requests.append({"sparse": {k: v[:n] for k, v in sparse.items()}, "dense": {"ctx": dense["ctx"][:n]}})
    return requests


def post_together(base: str, bodies: list) -> list[httpx.Response]:
    """Posts every body at once, each from its own thread and connection."""
    answers: list = [None] * len(bodies)
    start = threading.Barrier(len(bodies))

    def post(i: int) -> None:
        with httpx.Client(base_url=base, timeout=60) as client:
            start.wait()
            answers[i] = client.post("/v1/predict", json=bodies[i])

    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


# ----------------------------------------------------------------------------- batching
def test_concurrent_requests_share_model_calls_and_each_gets_its_own_answers(model, serve):
    requests = distinct_requests(24)
    bad = {"sparse": {**PROBE[0], "age": [[1], [2]]}, "dense": PROBE[1]}  # refused alone
    big = {"sparse": {k: v * 40 for k, v in PROBE[0].items()}, "dense": {"ctx": PROBE[1]["ctx"] * 40}}  # 80 > 64
    base = serve(create_app(model, batching_max_examples=64, batching_max_wait_s=0.2))
    answers = post_together(base, [*requests, bad, big])
    assert answers[-2].status_code == 400 and "unknown sparse feature(s) ['age']" in answers[-2].json()["detail"]
    for request, answer in zip([*requests, big], [*answers[:-2], answers[-1]]):
        assert answer.status_code == 200 and answer.json()["model_version"] == 8
        alone = model.predict(request["sparse"], request["dense"])
        assert answer.json()["outputs"].keys() == alone.keys()
        for name, values in alone.items():
            # Bit-identical pooling; the dense program's matrix products may round the last bit
            # differently in a larger batch (batching's module docstring). A request answered
            # with another's examples would be off by far more.
            np.testing.assert_allclose(answer.json()["outputs"][name], values, rtol=1e-5, atol=1e-6)
    metrics = httpx.get(f"{base}/v1/metrics").json()["batching"]
    assert metrics["requests"] == len(requests) + 1
    assert metrics["model_calls"] < len(requests) // 2, metrics  # they did share calls
    # A request alone in its call is answered exactly as without batching.
    alone = httpx.post(f"{base}/v1/predict", json=requests[0]).json()
    assert alone["outputs"] == model.predict(requests[0]["sparse"], requests[0]["dense"])


def test_batching_options_reach_the_app(export_path, monkeypatch, serve):  # noqa: F811
    apps = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: apps.append(app))
    serving_main.main(["--export-dir", str(export_path), "--batching-max-examples", "4",
                       "--batching-max-wait-ms", "300"])
    base = serve(apps[0])
    answers = post_together(base, distinct_requests(4)[:2])  # 1 + 2 examples: one call
    assert [a.status_code for a in answers] == [200, 200]
    assert httpx.get(f"{base}/v1/metrics").json()["batching"] == {"model_calls": 1, "requests": 2}
    for option in ("--batching-max-examples", "--batching-max-wait-ms"):
        with pytest.raises(SystemExit):
            serving_main.main(["--export-dir", str(export_path), option, "-1"])


# ----------------------------------------------------------------------------- protobuf
def example_batch(request: dict) -> ExampleBatch:
    """``request``'s examples as a Monolith ExampleBatch (column-major: one feature list per feature)."""
    n = len(request["dense"]["ctx"])
    batch = ExampleBatch(batch_size=n)
    for name, rows in request["sparse"].items():
        column = batch.named_feature_list.add(name=name)
        for fids in rows:
            column.feature.add().fid_v2_list.value.extend(np.array(fids, dtype=np.int64).view(np.uint64).tolist())
    column = batch.named_feature_list.add(name="ctx")
    for row in request["dense"]["ctx"]:
        column.feature.add().float_list.value.extend(row)
    return batch


def test_protobuf_bodies_are_answered_like_the_same_examples_in_json(model, serve):
    request = {"sparse": PROBE[0], "dense": PROBE[1]}
    base = serve(create_app(model))
    with httpx.Client(base_url=base) as client:
        expected = client.post("/v1/predict", json=request).json()
        batch = example_batch(request).SerializeToString()
        assert client.post("/v1/predict", content=batch, headers=PROTOBUF).json() == expected
        explicit = {"Content-Type": "application/x-protobuf; message=ExampleBatch"}
        assert client.post("/v1/predict", content=batch, headers=explicit).json() == expected
        # One Example per request, its uid as a v1 FID (converted to v2, as training reads it).
        example = Example()
        example.named_feature.add(name="uid").feature.fid_v1_list.value.append(make_fid_v1(1, 3))
        example.named_feature.add(name="mov").feature.fid_v2_list.value.extend(PROBE[0]["mov"][0])
        example.named_feature.add(name="ctx").feature.float_list.value.extend(PROBE[1]["ctx"][0])
        answer = client.post("/v1/predict", content=example.SerializeToString(),
                             headers={"Content-Type": "application/x-protobuf; message=Example"})
        first = {"sparse": {"uid": [[make_fid(1, 3)]], "mov": PROBE[0]["mov"][:1], "hist": [[]]},
                 "dense": {"ctx": PROBE[1]["ctx"][:1]}}
        assert answer.json() == client.post("/v1/predict", json=first).json()
        for body, headers, message in ((b"\xff\x00garbage", PROTOBUF, "not a serialized ExampleBatch"),
                                       (batch, {"Content-Type": "application/x-protobuf; message=Instance"},
                                        "unknown protobuf message 'Instance'")):
            answer = client.post("/v1/predict", content=body, headers=headers)
            assert answer.status_code == 400 and message in answer.json()["detail"], answer.text


def test_features_named_label_and_instance_weight_are_read_from_protobuf_as_sent():
    """Training reads those names as the label (missing: INVALID_LABEL) and the weight (<= 0: 1); a
    serving request's features are read as sent, as from JSON (zeros where missing)."""
    receiver = ServingInputReceiver(["uid"], {"label": 2, "instance_weight": 1})
    example = Example(label=[0.25])  # the Example's own label field is no feature
    example.named_feature.add(name="uid").feature.fid_v2_list.value.append(7)
    example.named_feature.add(name="instance_weight").feature.float_list.value.append(0.0)
    unlabelled = Example()
    unlabelled.named_feature.add(name="label").feature.float_list.value.extend([0.5, -2.0])
    batch = ExampleBatch(batch_size=2)
    for name, rows in {"uid": [[7], []], "label": [[], [0.5, -2.0]], "instance_weight": [[0.0], []]}.items():
        named = batch.named_feature_list.add(name=name)
        for row in rows:
            feature = named.feature.add()  # an empty row: a feature of no type
            if row:
                (feature.fid_v2_list if name == "uid" else feature.float_list).value.extend(row)
    expected = parse_json(json.dumps({"sparse": {"uid": [[7], []]}, "dense": {"label": [[0, 0], [0.5, -2.0]],
                                                                           "instance_weight": [[0.0], [0]]}}).encode(),
                          receiver, 10)
    assert_same_rows(parse_protobuf(batch.SerializeToString(), receiver, "ExampleBatch", 10), expected)
    for k, one in enumerate((example, unlabelled)):
        rows = parse_protobuf(one.SerializeToString(), receiver, "Example", 10)
        np.testing.assert_array_equal(rows.dense["label"], expected.dense["label"][k : k + 1])
        np.testing.assert_array_equal(rows.dense["instance_weight"], expected.dense["instance_weight"][k : k + 1])


# ----------------------------------------------------------------------------- the JSON array reader
RECEIVER = ServingInputReceiver(list(SLOTS), {"ctx": CTX})
EDGE_FIDS = [0, 1, -1, 2**63 - 1, -(2**63), 2**63, 2**64 - 1, make_fid(3, 12345)]


def random_request(rng: np.random.Generator, examples: int) -> dict:
    def fid() -> int:
        return EDGE_FIDS[rng.integers(len(EDGE_FIDS))] if rng.random() < 0.3 else int(rng.integers(-(2**63), 2**63))

    sparse = {name: [[fid() for _ in range(rng.integers(0, 4))] for _ in range(examples)] for name in SLOTS}
    dense = np.where(rng.random((examples, CTX)) < 0.2, rng.integers(-5, 5, (examples, CTX)),
                     rng.normal(scale=10.0 ** rng.integers(-40, 38, (examples, CTX))))
    ctx = [[int(x) if float(x).is_integer() and abs(x) < 10 else float(x) for x in row] for row in dense]
    return {"sparse": sparse, "dense": {"ctx": ctx}}


def assert_same_rows(got, expected) -> None:
    assert got.num == expected.num
    for name, (ids, offsets) in expected.sparse.items():
        np.testing.assert_array_equal(got.sparse[name][0], ids)
        np.testing.assert_array_equal(got.sparse[name][1], offsets)
    for name, values in expected.dense.items():
        assert got.dense[name].dtype == np.float32
        np.testing.assert_array_equal(got.dense[name], values)


def test_the_json_array_reader_reads_what_python_json_reads():
    rng = np.random.default_rng(0)
    for examples in (0, 1, 3, 20):
        request = random_request(rng, examples)
        for body in (json.dumps(request).encode(), json.dumps(request, indent=2).encode()):
            # Trailing spaces make the body larger than JSON_BYTES: read by the array reader.
            body += b" " * JSON_BYTES
            assert_same_rows(parse_json(body, RECEIVER, 10**6), parse_features(RECEIVER, **request))
    # Read in several blocks.
    request = random_request(rng, 30_000)
    body = json.dumps(request).encode()
    assert len(body) > 2 * BLOCK_BYTES
    assert_same_rows(parse_json(body, RECEIVER, 10**6), parse_features(RECEIVER, **request))
    for broken, message in ((body.replace(b"]], ", b", 2**64]], ", 1), "is not a list of lists of integer FIDs"),
                            (body.replace(b'"uid"', b'"\\u0075id"'), "expected a key without escapes"),
                            (body.replace(b']], "', b'], [1, 2]], "', 1),
                             "features have different numbers of examples"),
                            (body.replace(b'"uid": [', b'"uid": [[18446744073709551616], ', 1),
                             "outside [-2**63, 2**64)"),
                            (body[: body.rfind(b"[") + 1] + b"1e39" + body[body.find(b",", body.rfind(b"[")) :],
                             f"dense['ctx'][{30_000 - 1}][0] must be a finite number within float32 range")):
        with pytest.raises(RequestError, match=re.escape(message)):
            parse_json(broken, RECEIVER, 10**6)


# ----------------------------------------------------------------------------- the client's request builder
def test_predict_request_turns_raw_values_into_each_slots_fids(model, serve):
    examples = [{"uid": 185, "mov": ["abc", 185], "hist": None, "ctx": [0.5, 1, 2]}, {"ctx": [0, 0, 0]}]
    body = predict_request(examples, {"uid": 4, "mov": 2, "hist": 2}, dense_features=["ctx"])
    # extract_fid(185, 4) and hash_string_fid("abc", 2): the known values of their docstrings.
    abc = make_fid(2, 2640714258260161385 & (2**48 - 1))
    assert body == {"sparse": {"uid": [[1153447759131936], []],
                               "mov": [[abc, 1153447759131936 - (4 << 48) + (2 << 48)], []], "hist": [[], []]},
                    "dense": {"ctx": [[0.5, 1.0, 2.0], [0.0, 0.0, 0.0]]}}
    assert httpx.post(f"{serve(create_app(model))}/v1/predict", json=body).status_code == 200
    for bad, message in (({"age": 3}, "unknown feature(s) ['age']"),
                         ({"uid": 1.5, "ctx": [0, 0, 0]}, "int or a string"),
                         ({"uid": 1}, "dense feature 'ctx' is missing")):
        with pytest.raises(ValueError, match=re.escape(message)):
            predict_request([bad], {"uid": 4, "mov": 2, "hist": 2}, dense_features=["ctx"])


def example_fids(feature, i: int) -> list[int]:
    """Example ``i``'s FIDs of a jagged feature."""
    offsets = feature.offsets()
    return feature.values()[offsets[i] : offsets[i + 1]].tolist()


def test_predict_request_makes_the_fids_the_movielens_reader_makes():
    # The first two ratings of MovieLens-100K's u.data, from u.user and u.item's raw values.
    raw = [{"uid": 196, "mov": 242, "genre": [GENRES.index("Comedy")], "age": 49, "gender": "M",
            "occupation": "writer"},
           {"uid": 186, "mov": 302, "genre": [GENRES.index(g) for g in ("Crime", "Film-Noir", "Mystery", "Thriller")],
            "age": 39, "gender": "F", "occupation": "executive"}]
    request = predict_request(raw, MOVIELENS_SLOTS)
    data = load_movielens100k(batch_size=200_000)
    found = {}
    for batch in (*data.train, *data.test):  # every rating, in two batches
        uid, mov = batch.sparse["uid"].values().numpy(), batch.sparse["mov"].values().numpy()  # one FID each
        for k in range(len(raw)):
            for i in np.flatnonzero((uid == request["sparse"]["uid"][k][0]) & (mov == request["sparse"]["mov"][k][0])):
                found[k] = {name: sorted(example_fids(batch.sparse[name], int(i))) for name in MOVIELENS_SLOTS}
    assert found == {k: {name: sorted(request["sparse"][name][k]) for name in MOVIELENS_SLOTS} for k in range(len(raw))}


# ----------------------------------------------------------------------------- bounded lookups and program calls
def test_lookups_and_program_calls_in_parts_predict_what_one_call_does(model, monkeypatch):
    rng = np.random.default_rng(3)
    request = random_request(rng, 40)
    for name, rows in request["sparse"].items():  # long examples among short ones; known and absent FIDs
        rows[5] = [make_fid(1 if name == "uid" else 2, int(s)) for s in rng.integers(0, 40, 30)]
    request["dense"]["ctx"] = rng.normal(size=(40, CTX)).tolist()
    whole = model.predict(**request)
    monkeypatch.setattr(model_module, "LOOKUP_IDS", 4)  # parts of 4 FIDs, example 5 summed over 8 of them
    monkeypatch.setattr(model_module, "PROGRAM_EXAMPLES", 7)
    parts = model.predict(**request)
    for name, values in whole.items():
        np.testing.assert_allclose(parts[name], values, rtol=1e-5, atol=1e-6)
