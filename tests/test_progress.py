"""Progress of evaluation, prediction and export: a tqdm bar on a terminal, a periodic line elsewhere."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

import monolith.progress
from monolith.estimator import Estimator, RunConfig
from monolith.progress import Progress
from test_estimator import EstModel, make_estimator
from test_export import ServeModel


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_lines_every_interval_where_stderr_is_no_terminal():
    clock, out = Clock(), io.StringIO()
    progress = Progress("evaluate", total=1000, file=out, interval_s=10, clock=clock)
    clock.now += 4
    progress.update(200)  # 4 s: no line before 10 s
    assert out.getvalue() == ""
    clock.now += 6
    progress.update(300)  # 10 s: 500 examples, 50 a second, 500 left
    clock.now += 5
    progress.update(100)  # 5 s since the last line
    clock.now += 5
    progress.update(100)
    progress.total = 900  # a better estimate
    clock.now += 10
    progress.update(200)
    clock.now += 1
    progress.close()
    assert out.getvalue().splitlines() == [
        "evaluate: 500 examples, 50 examples/s, 50% of 1,000, about 10 s left",
        "evaluate: 700 examples, 35 examples/s, 70% of 1,000, about 9 s left",
        "evaluate: 900 examples, 30 examples/s, 100% of 900, about 0 s left",
        "evaluate: 900 examples in 31 s",
    ]


def test_no_total_no_eta_and_a_short_run_writes_nothing():
    clock, out = Clock(), io.StringIO()
    with Progress("export", unit="rows", file=out, interval_s=1, clock=clock) as progress:
        clock.now += 2
        progress.update(4_000)
    assert out.getvalue().splitlines() == ["export: 4,000 rows, 2,000 rows/s", "export: 4,000 rows in 2 s"]
    out = io.StringIO()
    with Progress("predict", total=10, file=out, clock=clock) as progress:  # done within the interval
        progress.update(10)
    assert out.getvalue() == ""
    with Progress("predict", file=out, interval_s=0, enabled=False, clock=clock) as progress:
        clock.now += 1
        progress.update(10)
    assert out.getvalue() == ""


def test_a_bar_on_a_terminal_ends_at_the_count_done():
    out = Terminal()
    with Progress("predict", total=64, file=out) as progress:  # 4 batches of 16 estimated, 3 came
        for _ in range(3):
            progress.update(16)
    final = out.getvalue().replace("\r", "\n").strip().splitlines()[-1]
    assert final.startswith("predict: 100%") and "48/48" in final and "examples/s" in final


def test_evaluate_and_predict_report_progress(tmp_path, capsys, monkeypatch):
    """The Estimator's lines count the examples evaluated and predicted, against the batches expected."""
    make_estimator(tmp_path / "run").train(max_steps=3)
    def model():  # make_estimator's: eval input_fn is 2 batches of 24, in a list (the total is known)
        m = EstModel()
        m.p.train.per_replica_batch_size, m.p.eval.per_replica_batch_size = 16, 24
        return m

    est = Estimator(model(), RunConfig(model_dir=str(tmp_path / "run"), enable_summaries=False))
    monkeypatch.setattr(monolith.progress, "LOG_INTERVAL_S", 0.0)  # a line at every batch
    capsys.readouterr()
    est.evaluate()
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("evaluate: ")]
    assert [line.split(",")[0] for line in lines] == ["evaluate: 24 examples", "evaluate: 48 examples",
                                                      "evaluate: 48 examples in 0 s"]
    assert "50% of 48" in lines[0] and "100% of 48" in lines[1]
    assert len(list(est.predict(steps=1))) == 16  # prediction batches take the training batch size
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("predict: ")]
    assert [line.split(",")[0] for line in lines] == ["predict: 16 examples", "predict: 16 examples in 0 s"]
    assert "100% of 16" in lines[0]  # steps=1: one batch expected
    est = Estimator(model(), RunConfig(model_dir=str(tmp_path / "run"), enable_summaries=False, progress_bar=False))
    est.evaluate()
    assert "evaluate: 24" not in capsys.readouterr().err


def test_export_reports_the_rows_written(tmp_path, capsys, monkeypatch):
    est = Estimator(ServeModel(), RunConfig(model_dir=str(tmp_path / "run"), enable_summaries=False))
    est.train(max_steps=2)
    monkeypatch.setattr(monolith.progress, "LOG_INTERVAL_S", 0.0)
    capsys.readouterr()
    path = est.export_saved_model(str(tmp_path / "exports"))
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("export: ")]
    rows = 0
    for table in Path(path, "tables").glob("*.npz"):
        with np.load(table) as npz:
            rows += len(npz["keys"])
    assert rows > 0 and lines[-1] == f"export: {rows:,} rows in 0 s"
    assert lines[0].startswith("export: ") and f"of {rows:,}" in lines[-2]
