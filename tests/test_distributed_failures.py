"""Failures under torch.distributed stop every rank at once with a message naming the rank and the
cause, never a hang until the collective timeout; uneven inputs and parameters that only some
ranks use still train (2 processes on gloo, launched with torchrun)."""

import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import distributed_failure_worker as worker

WORKER = os.path.join(os.path.dirname(__file__), "distributed_failure_worker.py")


def run(scenario: str, out_dir) -> tuple[subprocess.CompletedProcess, float]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={port}", "--monitor-interval=0.5", WORKER, scenario, str(out_dir)]
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, timeout=240,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    return result, time.monotonic() - started


@pytest.mark.parametrize("scenario, message", [
    ("raise", "rank 0: training stopped at global step 1: rank 1 failed: ValueError: deliberate failure in model_fn"),
    ("nan", "rank 0: the loss is not finite on rank(s) [1] at global step 1"),
    ("no_data", "rank 0: input_fn(TRAIN) produced no batch on rank(s) [1]"),
    ("clip", "rank 0: rank 1 built a different model (params: clip_norm 1000.0 here vs 0.5)"),
])
def test_a_failing_rank_stops_the_others_at_once_with_its_name(tmp_path, scenario, message):
    result, seconds = run(scenario, tmp_path)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr[-4000:]
    # Far below the 300 s collective timeout that a rank left waiting would run into.
    assert seconds < 120


def test_uneven_batches_and_a_parameter_some_ranks_skip(tmp_path):
    result, _ = run("eval_uneven", tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"eval_uneven-{rank}.pt", weights_only=False) for rank in (0, 1)]
    # Only rank 0's batches use big_batch_head: its gradient still reaches rank 1, replicas stay equal.
    for name, value in ranks[0]["dense"].items():
        torch.testing.assert_close(ranks[1]["dense"][name], value, atol=0, rtol=0)
    # Rank 1 has nothing to evaluate or predict: it joins with empty batches, and the metrics are
    # those of rank 0's examples, on both ranks.
    assert ranks[1]["predictions"] == [] and len(ranks[0]["predictions"]) == 3 * 8
    labels = np.concatenate([worker.make_batch(8, step).dense["label"].numpy() for step in range(3)])
    preds = np.array(ranks[0]["predictions"])
    pos, neg = preds[labels == 1], preds[labels == 0]
    auc = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (pos.size * neg.size)
    assert ranks[0]["metrics"]["ctr/auc"] == ranks[1]["metrics"]["ctr/auc"] == pytest.approx(auc, abs=1e-12)
