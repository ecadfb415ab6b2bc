"""Serving throughput and latency over HTTP on 127.0.0.1, under a bounded local load.

A CTR model (user and item FIDs sum-pooled, a history of items cut to its first 10, 8 dense
floats, a 64-32-1 tower) is built, its tables are seeded with ``fids_per_table`` rows each, and it
is exported. ``python -m monolith.serving`` serves the export in a subprocess while this process
sends predictions from ``clients`` concurrent keep-alive connections for ``duration_s`` seconds,
each request carrying ``batch_size`` examples whose FIDs are drawn from the seeded ones (a tenth
of them absent). Latency is taken client-side, from sending a request to having parsed its answer;
request bodies are encoded before timing. The same requests are also timed in process
(:meth:`ServingModel.predict`, no HTTP) for the share of the endpoint's own cost.

Server and clients share the machine's cores, as on one serving host; numbers from a loaded
machine are lower bounds.
"""

from __future__ import annotations

import functools
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import torch

from benchmarks.plots import Bars
from monolith.estimator import Estimator, EstimatorSpec, RunConfig
from monolith.export import ServingInputReceiver
from monolith.fid import make_fid
from monolith.losses import get_sigmoid_loss_and_pred
from monolith.mode_keys import ModeKeys
from monolith.model import MonolithModel
from monolith.serving import ServingModel
from monolith.sparse import Batch, KeyedJaggedTensor

SLOTS = {"user": 1, "item": 2, "history": 3}
DIM, HISTORY, DENSE = 16, 10, 8
#: Distinct request bodies cycled through by the clients.
_BODIES = 64


class _CtrModel(MonolithModel):
    def __init__(self) -> None:
        super().__init__()
        self.register_slots(SLOTS)
        self.tower = torch.nn.Sequential(torch.nn.Linear(3 * DIM + DENSE, 64), torch.nn.ReLU(),
                                         torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
        self.batch_size = 8

    def input_fn(self, mode):
        return [_batch(np.random.default_rng(0), self.batch_size, 100)]

    def model_fn(self, features, mode):
        self.create_embedding_feature_column("user")
        self.create_embedding_feature_column("item")
        self.create_embedding_feature_column("history", max_seq_length=HISTORY, shared_name="item")
        ids = self.lookup_embedding_slice(["user", "item"], "vec", DIM, out_type="concat")
        history = self.lookup_embedding_slice(["history"], "vec", DIM)[0].mean(1)
        logits = self.tower(torch.cat([ids, history, features["dense"]], 1)).reshape(-1)
        label = features.dense.get("label") if mode != ModeKeys.PREDICT else None
        loss, pred = get_sigmoid_loss_and_pred("ctr", logits, label, self.batch_size, mode=mode)
        return EstimatorSpec(label=label, pred=pred, head_name="ctr", loss=loss,
                             optimizer=functools.partial(torch.optim.Adam, lr=1e-3))

    def serving_input_receiver_fn(self):
        return ServingInputReceiver(list(SLOTS), {"dense": DENSE})


def _rows(rng: np.random.Generator, batch: int, slot: int, pool: int, low: int, high: int) -> list[list[int]]:
    # Signatures up to 1.1 * pool: about a tenth of the FIDs were never seeded and read zeros.
    return [[int(make_fid(slot, int(s))) for s in rng.integers(0, pool * 11 // 10, rng.integers(low, high + 1))]
            for _ in range(batch)]


def _request(rng: np.random.Generator, batch: int, pool: int) -> dict:
    sparse = {"user": _rows(rng, batch, 1, pool, 1, 1), "item": _rows(rng, batch, 2, pool, 1, 3),
              "history": _rows(rng, batch, 2, pool, 0, 2 * HISTORY)}
    return {"sparse": sparse, "dense": {"dense": rng.normal(size=(batch, DENSE)).round(4).tolist()}}


def _batch(rng: np.random.Generator, batch: int, pool: int) -> Batch:
    request = _request(rng, batch, pool)
    return Batch(KeyedJaggedTensor.from_lists(request["sparse"]),
                 {"dense": torch.tensor(request["dense"]["dense"]), "label": torch.zeros(batch)})


def export_model(directory: str, fids_per_table: int) -> str:
    """Builds the model, seeds every table with ``fids_per_table`` random rows and exports it."""
    est = Estimator(_CtrModel(), RunConfig(model_dir=os.path.join(directory, "run"), enable_summaries=False,
                                           progress_bar=False))
    est.build()
    rng = np.random.default_rng(1)
    for name, slot in (("user", 1), ("item", 2)):
        table = est.model.ctx.tables[name].table
        table.assign(make_fid(slot, np.arange(fids_per_table)),
                     rng.uniform(-0.05, 0.05, (fids_per_table, table.dim)).astype(np.float32))
    return est.export_saved_model(os.path.join(directory, "export"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(port: int, server: subprocess.Popen, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with {server.returncode}: {server.stderr.read()}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/v1/health")
            if connection.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"the server did not answer /v1/health within {timeout:.0f} s")


def _predict(connection: http.client.HTTPConnection, body: bytes) -> bool:
    """One prediction over ``connection``; whether it succeeded."""
    connection.request("POST", "/v1/predict", body=body, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    return response.status == 200 and "outputs" in json.loads(response.read())


def _client(port: int, bodies: list[bytes], offset: int, stop: threading.Event, latencies: list[float],
            errors: list[int]) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    i = offset
    while not stop.is_set():
        started = time.perf_counter()
        if not _predict(connection, bodies[i % len(bodies)]):
            errors.append(i)
        latencies.append(time.perf_counter() - started)
        i += 1
    connection.close()


def run(duration_s: float = 30.0, clients: int = 4, batch_size: int = 32, fids_per_table: int = 200_000,
        torch_threads: int = 1) -> dict:
    """Serves an export and loads it for ``duration_s`` seconds; returns throughput and latencies.

    ``torch_threads`` is the server's (``--threads``) and the in-process timing's.
    """
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(torch_threads)
    try:
        return _run(duration_s, clients, batch_size, fids_per_table, torch_threads)
    finally:
        torch.set_num_threads(previous_threads)


def _run(duration_s: float, clients: int, batch_size: int, fids_per_table: int, torch_threads: int) -> dict:
    rng = np.random.default_rng(2)
    requests = [_request(rng, batch_size, fids_per_table) for _ in range(_BODIES)]
    bodies = [json.dumps(r).encode() for r in requests]
    with tempfile.TemporaryDirectory() as directory:
        path = export_model(directory, fids_per_table)
        model = ServingModel.load(path)
        for r in requests[:8]:  # warm-up
            model.predict(r["sparse"], r["dense"])
        in_process = []
        for r in requests * 4:
            started = time.perf_counter()
            model.predict(r["sparse"], r["dense"])
            in_process.append(time.perf_counter() - started)

        port = _free_port()
        server = subprocess.Popen([sys.executable, "-m", "monolith.serving", "--export-dir", path, "--port", str(port),
                                   "--threads", str(torch_threads), "--log-level", "warning"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            _wait_healthy(port, server)
            warm_up = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            if not all(_predict(warm_up, body) for body in bodies[:8]):
                raise RuntimeError("the server failed the warm-up requests")
            warm_up.close()
            stop, latencies, errors = threading.Event(), [[] for _ in range(clients)], []
            threads = [threading.Thread(target=_client, args=(port, bodies, 7 * c, stop, latencies[c], errors))
                       for c in range(clients)]
            started = time.perf_counter()
            for thread in threads:
                thread.start()
            time.sleep(duration_s)
            stop.set()
            for thread in threads:
                thread.join()
            elapsed = time.perf_counter() - started
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            connection.request("GET", "/v1/metrics")
            server_metrics = json.loads(connection.getresponse().read())
        finally:
            server.terminate()
            server.wait(30)
    all_ms = np.concatenate([np.asarray(l) for l in latencies]) * 1e3
    p50, p90, p99 = np.percentile(all_ms, [50, 90, 99])
    return {
        "clients": clients,
        "batch_size": batch_size,
        "fids_per_table": fids_per_table,
        "duration_s": elapsed,
        "requests": int(all_ms.size),
        "errors": len(errors),
        "requests_per_s": all_ms.size / elapsed,
        "examples_per_s": all_ms.size * batch_size / elapsed,
        "p50_ms": float(p50),
        "p90_ms": float(p90),
        "p99_ms": float(p99),
        "server_p50_ms": server_metrics["latency_ms"]["p50"],
        "server_p99_ms": server_metrics["latency_ms"]["p99"],
        "in_process_p50_ms": float(np.percentile(in_process, 50) * 1e3),
    }


def report(results: list[dict]) -> str:
    """Markdown table of :func:`run` results."""
    lines = [
        "| clients | examples/request | requests/s | examples/s | p50 ms | p90 ms | p99 ms | server p50 / p99 ms "
        "| in-process p50 ms | errors |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        lines.append(
            f"| {r['clients']} | {r['batch_size']} | {r['requests_per_s']:.0f} | {r['examples_per_s']:,.0f} | "
            f"{r['p50_ms']:.2f} | {r['p90_ms']:.2f} | {r['p99_ms']:.2f} | "
            f"{r['server_p50_ms']:.2f} / {r['server_p99_ms']:.2f} | {r['in_process_p50_ms']:.2f} | {r['errors']} |"
        )
    return "\n".join(lines)


def figures(results: list[dict]) -> list[Bars]:
    """Client-side latency percentiles of each load."""
    return [Bars("serving", "Serving over HTTP: latency of a prediction request", "ms",
                 [f"{r['clients']} clients, {r['batch_size']} examples/request" for r in results],
                 {f"p{q}": [r[f"p{q}_ms"] for r in results] for q in (50, 90, 99)})]


if __name__ == "__main__":
    duration = float(sys.argv[1]) if len(sys.argv) > 1 else 20.0
    print(report([run(duration, batch_size=1), run(duration, batch_size=64)]))
