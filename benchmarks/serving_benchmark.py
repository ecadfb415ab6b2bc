"""Serving over HTTP on 127.0.0.1: throughput and latency under load, dynamic batching, large requests.

A CTR model (user and item FIDs sum-pooled, a history of items cut to its first 10, 8 dense
floats, a 64-32-1 tower) is built, its tables are seeded with ``fids_per_table`` rows each, and it
is exported. ``python -m monolith.serving`` serves the export in a subprocess while this process
sends predictions from concurrent keep-alive connections, each request carrying examples whose
FIDs are drawn from the seeded ones (a tenth of them absent). Latency is taken client-side, from
sending a request to having parsed its answer; request bodies are encoded before timing.

* Load: ``clients`` connections for ``duration_s`` seconds per request size, batching off; the
  same requests are also timed in process (:meth:`ServingModel.predict`, no HTTP).
* Batching: ``batching_clients`` connections sending single-example requests, to a server without
  batching and to one with it, both running, loaded in turns for ``batching_rounds`` rounds.
* Large requests: one example with a list of about ``large_fid_bytes`` of FIDs, and one request of
  ``large_examples`` examples; the server's peak RSS (reset through ``/proc/<pid>/clear_refs``)
  over its RSS before, against the body's size.

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
from typing import Any, Callable

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
#: The servers' --max-body-bytes: room for the large requests.
LARGE_BODY_LIMIT = 256 << 20


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


def _wait_healthy(port: int, server: subprocess.Popen, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with {server.returncode}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/v1/health")
            if connection.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"the server did not answer /v1/health within {timeout:.0f} s")


class _Server:
    """``python -m monolith.serving`` serving ``path`` in a subprocess, with ``options``."""

    def __init__(self, path: str, torch_threads: int, *options: str) -> None:
        self.port = _free_port()
        # A fixed mmap threshold: large blocks are mapped when allocated and unmapped when freed,
        # so that the peak RSS counts them all (glibc would otherwise reuse some of its heap).
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "monolith.serving", "--export-dir", path, "--port", str(self.port), "--threads",
             str(torch_threads), "--log-level", "warning", "--max-body-bytes", str(LARGE_BODY_LIMIT), *options],
            stdout=subprocess.DEVNULL, env=env)

    def __enter__(self) -> "_Server":
        _wait_healthy(self.port, self.process)
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.wait(30)

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)

    def metrics(self) -> dict:
        connection = self.connection()
        connection.request("GET", "/v1/metrics")
        return json.loads(connection.getresponse().read())


def peak_rss_cost(pid: int, action: Callable[[], Any]) -> tuple[int, Any]:
    """Bytes by which process ``pid``'s peak RSS during ``action()`` exceeds its RSS before (Linux:
    the peak is reset through ``/proc/<pid>/clear_refs``), and what ``action`` returned."""

    def vm(field: str) -> int:
        with open(f"/proc/{pid}/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith(field + ":"))

    before = vm("VmRSS")
    with open(f"/proc/{pid}/clear_refs", "w") as clear:
        clear.write("5")
    result = action()
    return vm("VmHWM") - before, result


def _predict(connection: http.client.HTTPConnection, body: bytes | None) -> bool:
    """One prediction over ``connection`` (``body`` None: a ``GET /v1/health`` instead, the HTTP
    stack's own cost); whether it succeeded."""
    if body is None:
        connection.request("GET", "/v1/health")
        response = connection.getresponse()
        return response.status == 200 and "status" in json.loads(response.read())
    connection.request("POST", "/v1/predict", body=body, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    return response.status == 200 and "outputs" in json.loads(response.read())


def _client(port: int, bodies: list[bytes | None], offset: int, stop: threading.Event, latencies: list[float],
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


def _load(server: _Server, bodies: list[bytes | None], clients: int, duration_s: float) -> dict:
    """``clients`` keep-alive connections predicting for ``duration_s``: throughput and latencies."""
    warm_up = server.connection()
    if not all(_predict(warm_up, body) for body in bodies[:8]):
        raise RuntimeError("the server failed the warm-up requests")
    warm_up.close()
    before = server.metrics()
    stop, latencies, errors = threading.Event(), [[] for _ in range(clients)], []
    threads = [threading.Thread(target=_client, args=(server.port, bodies, 7 * c, stop, latencies[c], errors))
               for c in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    time.sleep(duration_s)
    stop.set()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    after = server.metrics()
    all_ms = np.concatenate([np.asarray(l) for l in latencies]) * 1e3
    p50, p90, p99 = np.percentile(all_ms, [50, 90, 99])
    batching = after["batching"]
    if batching:
        calls = batching["model_calls"] - before["batching"]["model_calls"]
    else:
        calls = after["requests"] - before["requests"]
    return {"clients": clients, "duration_s": elapsed, "requests": int(all_ms.size), "errors": len(errors),
            "requests_per_s": all_ms.size / elapsed, "p50_ms": float(p50), "p90_ms": float(p90),
            "p99_ms": float(p99), "server_p50_ms": after["latency_ms"]["p50"],
            "server_p99_ms": after["latency_ms"]["p99"], "requests_per_call": all_ms.size / max(calls, 1)}


def _large_bodies(rng: np.random.Generator, fid_bytes: int, examples: int) -> dict[str, bytes]:
    """A list of FIDs of about ``fid_bytes`` in one example, and a request of ``examples`` examples."""
    count = fid_bytes // 16  # FIDs of slot 1 take 15 or 16 digits and a comma
    fids = [int(f) for f in make_fid(1, rng.integers(0, 2**40, count))]
    one = {"sparse": {"user": [fids], "item": [[]], "history": [[]]}, "dense": {"dense": [[0.0] * DENSE]}}
    many = _request(rng, examples, 200_000)
    return {f"one example, {count:,} FIDs": json.dumps(one).encode(),
            f"{examples:,} examples": json.dumps(many).encode()}


def _large(server: _Server, bodies: dict[str, bytes]) -> list[dict]:
    """Each large body's cost to the server: its peak RSS over the body's size, and seconds."""
    rows = []
    for name, body in bodies.items():
        connection = server.connection()
        _predict(connection, json.dumps(_request(np.random.default_rng(3), 1, 100)).encode())  # warm-up

        def predict() -> float:
            started = time.perf_counter()
            if not _predict(connection, body):
                raise RuntimeError(f"the server failed the large request ({name})")
            return time.perf_counter() - started

        cost, seconds = peak_rss_cost(server.process.pid, predict)
        connection.close()
        rows.append({"request": name, "body_bytes": len(body), "peak_rss_bytes": cost,
                     "memory_ratio": cost / len(body), "seconds": seconds})
    return rows


def run(duration_s: float = 20.0, clients: int = 4, batch_sizes: tuple[int, ...] = (1, 64),
        batching_clients: int = 16, batching_rounds: int = 3, batching_max_examples: int = 256,
        batching_max_wait_ms: float = 2.0, fids_per_table: int = 200_000, large_fid_bytes: int = 32 << 20,
        large_examples: int = 100_000, torch_threads: int = 1) -> dict:
    """Serves an export and measures it (module docstring).

    ``torch_threads`` is the servers' (``--threads``) and the in-process timing's.
    """
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(torch_threads)
    rng = np.random.default_rng(2)
    try:
        with tempfile.TemporaryDirectory() as directory:
            path = export_model(directory, fids_per_table)
            load = []
            with _Server(path, torch_threads) as server:
                for batch_size in batch_sizes:
                    requests = [_request(rng, batch_size, fids_per_table) for _ in range(_BODIES)]
                    row = _load(server, [json.dumps(r).encode() for r in requests], clients, duration_s)
                    load.append({**row, "batch_size": batch_size, "in_process_p50_ms": _in_process(path, requests)})
                large = _large(server, _large_bodies(rng, large_fid_bytes, large_examples))
            bodies = [json.dumps(_request(rng, 1, fids_per_table)).encode() for _ in range(_BODIES)]
            batching = {"off": [], "on": [], "health": []}
            with _Server(path, torch_threads) as off, _Server(
                    path, torch_threads, "--batching-max-examples", str(batching_max_examples),
                    "--batching-max-wait-ms", str(batching_max_wait_ms)) as on:
                for _ in range(batching_rounds):  # in turns, so that both see the machine's load alike
                    for name, server, sent in (("off", off, bodies), ("on", on, bodies), ("health", off, [None])):
                        batching[name].append(_load(server, sent, batching_clients, duration_s / 2))
    finally:
        torch.set_num_threads(previous_threads)
    return {"fids_per_table": fids_per_table, "clients": clients, "load": load, "large": large,
            "batching": {name: _median_round(rounds) for name, rounds in batching.items()},
            "batching_rounds": batching, "batching_max_examples": batching_max_examples,
            "batching_max_wait_ms": batching_max_wait_ms, "batching_clients": batching_clients}


def _median_round(rounds: list[dict]) -> dict:
    """The round of median requests/s."""
    return sorted(rounds, key=lambda r: r["requests_per_s"])[len(rounds) // 2]


def _in_process(path: str, requests: list[dict]) -> float:
    """Median milliseconds of :meth:`ServingModel.predict` on ``requests``, without HTTP."""
    model = ServingModel.load(path)
    for r in requests[:8]:  # warm-up
        model.predict(r["sparse"], r["dense"])
    times = []
    for r in requests * 4:
        started = time.perf_counter()
        model.predict(r["sparse"], r["dense"])
        times.append(time.perf_counter() - started)
    return float(np.percentile(times, 50) * 1e3)


def batching_speedup(result: dict) -> float:
    """Requests/s with batching over without, median rounds."""
    return result["batching"]["on"]["requests_per_s"] / result["batching"]["off"]["requests_per_s"]


def report(results: list[dict]) -> str:
    """Markdown tables of :func:`run` results."""
    lines = []
    for r in results:
        lines += [
            f"Load: {r['clients']} clients, batching off, tables of {r['fids_per_table']:,} FIDs.",
            "",
            "| examples/request | requests/s | examples/s | p50 ms | p90 ms | p99 ms | server p50 / p99 ms "
            "| in-process p50 ms | errors |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for row in r["load"]:
            lines.append(
                f"| {row['batch_size']} | {row['requests_per_s']:.0f} "
                f"| {row['requests_per_s'] * row['batch_size']:,.0f} "
                f"| {row['p50_ms']:.2f} | {row['p90_ms']:.2f} | {row['p99_ms']:.2f} | "
                f"{row['server_p50_ms']:.2f} / {row['server_p99_ms']:.2f} | {row['in_process_p50_ms']:.2f} | "
                f"{row['errors']} |")
        lines += [
            "",
            f"Dynamic batching: {r['batching_clients']} clients sending single-example JSON requests to a server "
            f"without batching and to one with `--batching-max-examples {r['batching_max_examples']} "
            f"--batching-max-wait-ms {r['batching_max_wait_ms']:g}`, in turns ({len(r['batching_rounds']['on'])} "
            f"rounds each; the median round is shown, requests/s of every round at the end). The last row "
            f"loads the same HTTP stack with `GET /v1/health`: what it answers without reading a body or "
            f"calling the model, a ceiling for any prediction.",
            "",
            "| batching | requests/s | p50 ms | p90 ms | p99 ms | server p50 / p99 ms | requests per model call "
            "| errors | rounds |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name in ("off", "on", "health"):
            row = r["batching"][name]
            rounds = ", ".join(f"{x['requests_per_s']:.0f}" for x in r["batching_rounds"][name])
            # The server's latencies and model calls count predictions only.
            label, server, per_call = (("GET /v1/health instead (no body, no model)", "-", "-") if name == "health"
                                       else (name, f"{row['server_p50_ms']:.2f} / {row['server_p99_ms']:.2f}",
                                             f"{row['requests_per_call']:.1f}"))
            lines.append(f"| {label} | {row['requests_per_s']:.0f} | {row['p50_ms']:.2f} | {row['p90_ms']:.2f} | "
                         f"{row['p99_ms']:.2f} | {server} | {per_call} | {row['errors']} | {rounds} |")
        lines += [
            "",
            "Large requests: the server's peak RSS while it answers one request, over its RSS before, and "
            "the seconds from sending it to having the answer.",
            "",
            "| request | body | peak RSS - RSS before | / body | seconds |",
            "| --- | --- | --- | --- | --- |",
        ]
        for row in r["large"]:
            lines.append(f"| {row['request']} | {row['body_bytes'] / 2**20:.1f} MiB | "
                         f"{row['peak_rss_bytes'] / 2**20:.0f} MiB | {row['memory_ratio']:.2f}x | "
                         f"{row['seconds']:.2f} |")
    return "\n".join(lines)


def figures(results: list[dict]) -> list[Bars]:
    """Client-side latency percentiles of each load, batching off and on."""
    bars = []
    for r in results:
        loads = {f"{r['clients']} clients, {row['batch_size']} examples/request": row for row in r["load"]}
        loads.update({f"{r['batching_clients']} clients, 1 example/request, batching {name}": r["batching"][name]
                      for name in ("off", "on")})
        bars.append(Bars("serving", "Serving over HTTP: latency of a prediction request", "ms", list(loads),
                         {f"p{q}": [row[f"p{q}_ms"] for row in loads.values()] for q in (50, 90, 99)}))
    return bars


if __name__ == "__main__":
    print(report([run(float(sys.argv[1]) if len(sys.argv) > 1 else 20.0)]))
