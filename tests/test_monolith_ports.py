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
from absl import flags

from monolith.checkpoint import CheckpointManager
from monolith.estimator import Estimator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, "examples", "monolith_demo")
NATIVE = os.path.join(REPO, "examples", "native_training")


def example(directory: str, name: str):
    """Imports an example module by file name, as Monolith's scripts import each other."""
    if directory not in sys.path:
        sys.path.insert(0, directory)
    return importlib.import_module(name)


@pytest.fixture
def parsed_flags():
    def parse(*args: str) -> None:
        flags.FLAGS(["prog", *args])

    yield parse
    flags.FLAGS.unparse_flags()


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
