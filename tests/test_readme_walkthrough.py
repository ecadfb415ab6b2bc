"""The README's walkthrough of the demo model, run line by line as the README gives it: train,
evaluate, predict, dump, export, serve (uvicorn on 127.0.0.1), a local broker, the test ratings
produced to it, a stream trainer pushing to serving, and serving's health.

Only the directory and the two ports change (a temporary directory, free ports). ``monolith`` lines
run the command's entry point in this process (``monolith.cli.main``, what the console script runs),
except the ``&`` lines, which run as processes of their own; ``python -m monolith.demo`` runs its
``main``; ``curl`` is an HTTP GET.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from monolith import cli, demo
from monolith.data import load_movielens100k

README = Path(__file__).resolve().parents[1] / "README.md"
HEADING = "### The demo model end to end"


def walkthrough() -> list[str]:
    """The command lines of the README's walkthrough block: continuations joined, comments dropped."""
    text = README.read_text()
    block = text[text.index(HEADING):].split("```\n", 2)[1]
    lines = block.replace("\\\n", " ").splitlines()
    return [re.sub(r"\s+#\s.*$", "", line).strip() for line in lines if line.strip()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            assert process.poll() is None, f"{process.args} ended with status {process.returncode}"
            assert time.monotonic() < deadline, f"{process.args} did not listen on {port}"
            time.sleep(0.2)


def test_the_readme_walkthrough_runs_as_written(tmp_path, capsys):
    lines = walkthrough()
    assert [line.split()[:3] for line in lines] == [
        ["monolith", "train", "--model"], ["monolith", "evaluate", "--model"], ["monolith", "predict", "--model"],
        ["monolith", "dump", "--model"], ["monolith", "export", "--model"], ["monolith", "serve", "--export-dir"],
        ["python", "-m", "monolith.streaming"], ["python", "-m", "monolith.demo"], ["monolith", "train", "--model"],
        ["curl", "-s", "http://127.0.0.1:8500/v1/health"]]
    model_dir, serve_port, broker_port = tmp_path / "deepfm", free_port(), free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MONOLITH_SERVING_TOKEN", None)  # the README's server on loopback takes updates without one
    background: list[subprocess.Popen] = []
    results = []
    try:
        for line in lines:
            line = (line.replace("8500", str(serve_port)).replace("9092", str(broker_port))
                    .replace("/tmp/deepfm", str(model_dir)))
            argv = shlex.split(line.removesuffix("&"))
            if line.endswith("&"):
                command = [sys.executable, "-m", "monolith", *argv[1:]] if argv[0] == "monolith" else \
                    [sys.executable, *argv[1:]]
                process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                background.append(process)
                wait_for_port(int(argv[argv.index("--port") + 1]), process)
                continue
            if argv[0] == "monolith":
                assert cli.main(argv[1:]) == 0
            elif argv[:3] == ["python", "-m", "monolith.demo"]:
                assert demo.main(argv[3:]) == 0
            else:
                assert argv[:2] == ["curl", "-s"]
                print(httpx.get(argv[2], timeout=30).text)
            results.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1])
                           if argv[0] != "python" else capsys.readouterr().out)
    finally:
        for process in reversed(background):
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    trained, evaluated, predicted, dumped, exported, produced, streamed, health = results

    # Training: one pass of 256-example batches over the earliest 80,000 ratings.
    first_step = trained["global_step"]
    assert first_step == 313 and trained["checkpoint"] == str(model_dir / f"ckpt-{first_step}")
    # Evaluation and prediction read the same 20,000 test ratings: evaluate's AUC is that of the
    # predictions, and its loss their log loss per example.
    preds = np.loadtxt(model_dir / "predictions" / "part-00000", dtype=np.float64, ndmin=1)
    assert predicted["predictions"] == len(preds) == 20_000
    labels = np.concatenate([b.dense["label"].numpy() for b in load_movielens100k(batch_size=256).test])
    metrics = evaluated["metrics"]
    assert metrics["ctr/auc"] == pytest.approx(demo.auc(labels, preds), abs=1e-6) and metrics["ctr/auc"] > 0.6
    assert metrics["loss"] == pytest.approx(demo.log_loss(labels, preds), rel=1e-4)
    assert metrics["batch_loss"] == pytest.approx(metrics["loss"] * 20_000 / 79, rel=1e-4)  # 79 batches
    assert dumped["features"] == list(demo.FEATURES)
    assert exported["export"] == str(model_dir / "exported_models" / str(first_step))
    assert exported["outputs"] == ["ctr"] and exported["tables"] == sorted(demo.FEATURES)

    # The stream: every test rating trained once more, the last step's parameters served.
    assert produced.strip() == f"sent 20000 ratings to kafka://127.0.0.1:{broker_port}/ratings"
    assert streamed["global_step"] > first_step
    assert health["status"] == "ok" and health["model_version"] == streamed["global_step"]
