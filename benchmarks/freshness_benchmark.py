"""End-to-end freshness: time from an event being produced until serving's prediction reflects it.

Three real processes on 127.0.0.1, as in production: a Kafka broker (tansu), the trainer
(``monolith train --stream ... --serving-url ... --sync-interval S``) and the server
(``monolith serve``). Each measurement produces an event with a never-seen user id, then polls the
server until that user's prediction moves (an absent FID looks up as zeros, so it moves once the
trainer has trained the event and pushed the new row).

    python -m benchmarks.freshness_benchmark
"""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np
import torch

from monolith.estimator import Estimator, EstimatorSpec, RunConfig
from monolith.export import ServingInputReceiver
from monolith.fid import make_fid
from monolith.losses import get_sigmoid_loss_and_pred
from monolith.model import MonolithModel
from monolith.streaming import KafkaSource, LocalKafkaBroker, encode_example

TOPIC = "clicks"


class ClickModel(MonolithModel):
    """Users and items, an MLP over their embeddings; trained from the stream, served by export."""

    def __init__(self, params=None):
        super().__init__(params)
        self.batch_size = 64
        torch.manual_seed(0)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))

    def input_fn(self, mode):
        raise NotImplementedError("ClickModel trains from a Kafka stream (monolith train --stream)")

    def model_fn(self, features, mode):
        for name in ("uid", "item"):
            self.create_embedding_feature_column(name)
        emb = self.lookup_embedding_slice(["uid", "item"], "vec", 8, out_type="concat")
        logits = self.mlp(emb).reshape(-1)
        label = features["label"] if mode != "infer" else None
        loss, pred = get_sigmoid_loss_and_pred("ctr", logits, label, self.batch_size, mode=mode)
        return EstimatorSpec(label=label, pred=pred, head_name="ctr", loss=loss,
                             optimizer=functools.partial(torch.optim.Adam, lr=1e-2))

    def serving_input_receiver_fn(self):
        return ServingInputReceiver(sparse_features=["uid", "item"])


def click(uid: int, item: int, label: float) -> bytes:
    return encode_example({"uid": [int(make_fid(1, uid))], "item": [int(make_fid(2, item))]}, label,
                          req_time=int(time.time()))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _predict(server: str, uid: int, item: int) -> float:
    answer = _post(f"{server}/v1/predict", {"sparse": {"uid": [[int(make_fid(1, uid))]],
                                                         "item": [[int(make_fid(2, item))]]}})
    return float(answer["outputs"]["ctr"][0])


def _wait(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)


def _metrics(server: str) -> dict:
    with urllib.request.urlopen(f"{server}/v1/metrics", timeout=5) as response:
        return json.loads(response.read())


def run(sync_interval_s: float = 1.0, measurements: int = 5, timeout_s: float = 60.0) -> dict[str, float]:
    """Measures freshness ``measurements`` times; returns the median and the worst, in seconds."""
    from confluent_kafka import Producer

    with LocalKafkaBroker() as broker, tempfile.TemporaryDirectory() as work:
        broker.create_topic(TOPIC)
        producer = Producer({"bootstrap.servers": broker.bootstrap_servers, "linger.ms": 0})
        rng = np.random.default_rng(0)
        for uid, item in zip(rng.integers(0, 100, 640), rng.integers(0, 50, 640)):
            producer.produce(TOPIC, value=click(int(uid), int(item), float((uid + item) % 3 == 0)))
        producer.flush(10)
        # A first model, trained on the history and exported: what serving starts from.
        model_dir, model_spec = os.path.join(work, "model"), "benchmarks.freshness_benchmark:ClickModel"
        estimator = Estimator(ClickModel(), RunConfig(model_dir=model_dir, log_step_count_steps=10**9,
                                                      enable_summaries=False, progress_bar=False))
        history = KafkaSource(broker.bootstrap_servers, TOPIC, 64, idle_timeout_s=1.0, group_id="ClickModel")
        estimator.train(input_fn=lambda mode: history)
        export = estimator.export_saved_model(os.path.join(work, "export"))

        port = _free_port()
        server = f"http://127.0.0.1:{port}"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
        processes = [subprocess.Popen([sys.executable, "-m", "monolith", "serve", "--export-dir", export,
                                       "--port", str(port), "--log-level", "warning"], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
        try:
            _wait(lambda: _healthy(server), timeout_s, "the server")
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "monolith", "train", "--model", model_spec, "--model-dir", model_dir,
                 "--stream", f"kafka://{broker.bootstrap_servers}/{TOPIC}", "--serving-url", server,
                 "--sync-interval", str(sync_interval_s), "--threads", "1"],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            # Warm-up: the trainer is consuming and pushing once serving's version moves.
            version = _metrics(server)["model_version"]
            producer.produce(TOPIC, value=click(0, 0, 1.0))
            producer.flush(10)
            _wait(lambda: _metrics(server)["model_version"] != version, timeout_s, "the trainer's first push")
            delays = []
            for k in range(measurements):
                uid, item = 1_000_000 + k, 7
                before = _predict(server, uid, item)
                start = time.monotonic()
                producer.produce(TOPIC, value=click(uid, item, 1.0))
                producer.flush(10)
                _wait(lambda: _predict(server, uid, item) != before, timeout_s, f"event {k} to reach serving")
                delays.append(time.monotonic() - start)
        finally:
            for process in reversed(processes):
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
    return {"sync_interval_s": sync_interval_s, "measurements": measurements,
            "freshness_p50_s": statistics.median(delays), "freshness_max_s": max(delays)}


def _healthy(server: str) -> bool:
    try:
        with urllib.request.urlopen(f"{server}/v1/health", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def report(results: list[dict[str, float]]) -> str:
    """Markdown table of :func:`run` results."""
    lines = ["| sync interval | events | freshness p50 | freshness max |", "| --- | --- | --- | --- |"]
    for r in results:
        lines.append(f"| {r['sync_interval_s']:g} s | {r['measurements']} | {r['freshness_p50_s']:.2f} s | "
                     f"{r['freshness_max_s']:.2f} s |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report([run(1.0, 10)]))
