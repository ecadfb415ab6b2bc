"""Smoke tests of the side-by-side, growth, quality, FID map and command start-up benchmarks at toy sizes
(their code paths and figures, not their numbers)."""

import importlib.util
import math
from pathlib import Path

from benchmarks import (cli_benchmark, deepfm_benchmark, fid_map_benchmark, growth_benchmark, peers_benchmark,
                        plots, quality_benchmark)
from benchmarks.__main__ import _cli_goals

_TOY = {"batch": 64, "vocab": 1000, "hidden": (8,)}


def check_figures(figures, directory: Path) -> None:
    """Each figure has one finite value per label (bars) or per x (curves), and is drawn as a PNG
    where matplotlib is installed (a dev dependency); without it, one line says so."""
    assert figures
    for figure in figures:
        if isinstance(figure, plots.Bars):
            values = [v for series in figure.series.values() for v in series]
            assert all(len(series) == len(figure.labels) for series in figure.series.values())
        else:
            values = [v for xs, ys in figure.series.values() for v in ys]
            assert all(len(xs) == len(ys) for xs, ys in figure.series.values())
            assert all(len(lo) == len(hi) == len(figure.series[name][0]) for name, (lo, hi) in figure.bands.items())
        assert values and all(math.isfinite(v) for v in values)
    markdown = plots.draw_all(figures, directory)
    if importlib.util.find_spec("matplotlib") is None:
        assert markdown.startswith("Plots not drawn: matplotlib")
        return
    for figure in figures:
        assert (directory / f"{figure.name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({figure.name}.png)" in markdown


def test_peers_runs_ours_and_plain_pytorch_in_turns(monkeypatch, tmp_path):
    monkeypatch.setattr(peers_benchmark, "PEERS_PYTHON", Path("/nonexistent/python"))  # TorchRec: skipped
    result = peers_benchmark.run(steps=2, warmup=1, rows=1 << 10, **_TOY)
    reserved = peers_benchmark.MONOLITH_RESERVED.format(rows=1 << 10)
    assert set(result["systems"]) == {peers_benchmark.MONOLITH, reserved, peers_benchmark.TORCH}
    assert result["distinct"] > 0 and "TorchRec skipped" in result["skipped"]
    assert all(s["examples_per_s"] > 0 and s["peak_rss"] > 0 for s in result["systems"].values())
    assert all(0 < s["embedding_ms"] < s["step_ms"] for s in result["systems"].values())
    assert "| plain PyTorch (hashed EmbeddingBag) |" in peers_benchmark.report([result])
    check_figures(peers_benchmark.figures([result]), tmp_path)


def test_growth_fills_tables_to_each_size(tmp_path):
    result = growth_benchmark.run(sizes=(2_000, 5_000), steps=1, windows=1, warmup=1, **_TOY)
    assert [p["ids"] for p in result["points"]][1] >= 5_000
    assert "| distinct ids held |" in growth_benchmark.report([result])
    check_figures(growth_benchmark.figures([result]), tmp_path)


def test_quality_trains_both_systems_and_the_study(tmp_path):
    result = quality_benchmark.run("movielens", seeds=(0,), epochs=1, evals=1, thresholds=(1,), expire_times=(30,),
                                   limit=2)
    assert set(result["systems"]) == {quality_benchmark.MONOLITH, quality_benchmark.EQUAL, quality_benchmark.WIDE}
    assert set(result["study"]) == {"threshold 0, no expiry", "occurrence threshold 1", "expire time 30 days"}
    assert all(0.0 <= s["auc"][0] <= 1.0 for s in result["systems"].values())
    assert "### MovieLens-100K" in quality_benchmark.report([result])
    [figure] = quality_benchmark.figures([result])
    assert figure.name == "quality_movielens" and set(figure.series) == set(result["systems"])
    check_figures([figure], tmp_path)


def test_fid_map_against_a_dict(tmp_path):
    result = fid_map_benchmark.run(10_000, stream=100_000, dict_sample=10_000)
    assert "| 10,000 |" in fid_map_benchmark.report([result])
    check_figures(fid_map_benchmark.figures([result]), tmp_path)


def test_command_start_up_is_timed_against_import_torch(tmp_path):
    result = cli_benchmark.run(repeats=1)
    assert set(result["median_s"]) == set(cli_benchmark.COMMANDS)
    # A fresh `monolith --help` imports no torch: faster than `import torch` alone.
    assert result["median_s"][cli_benchmark.HELP] < result["median_s"][cli_benchmark.TORCH]
    [goal] = _cli_goals([result])
    assert goal.measured.startswith(f"{result['median_s'][cli_benchmark.HELP]:.2f} s")
    check_figures(cli_benchmark.figures([result]), tmp_path)


def test_deepfm_trains_monolith_and_plain_pytorch_in_turns_on_parquet():
    result = deepfm_benchmark.run("frappe", rounds=1, frappe_examples=2_000)
    assert result["steps"] == 8 and len(result["ratios"]) == 1
    assert result["monolith"][0] > 0 and result["baseline"][0] > 0
    assert "| Frappe-sized Parquet (2,000 examples, 10 features," in deepfm_benchmark.report([result])


def test_input_pipeline_times_reading_training_and_prefetch():
    from benchmarks import input_pipeline_benchmark

    result = input_pipeline_benchmark.run(examples=600, batch_size=200, width=8, repeats=1, device_step_ms=1)
    assert result["batches"] == 3 and result["step"] == "device wait 1 ms"
    assert all(result[k] > 0 for k in ("read_s", "train_s", "serial_s", "prefetch_s", "worker_s"))
    assert result["ideal"] == (result["read_s"] + result["train_s"]) / max(result["read_s"], result["train_s"])
    assert result["ideal_here"] == result["ideal"]  # a waiting step leaves the reading its core
    cpu = input_pipeline_benchmark.run(examples=600, batch_size=200, width=8, repeats=1)
    assert cpu["ideal_here"] == (cpu["read_s"] + cpu["train_s"]) / max(cpu["read_busy_s"], cpu["train_busy_s"])
    report = input_pipeline_benchmark.report([result, cpu])
    assert "| device wait 1 ms | 600 x 200 |" in report and "| CPU MLP | 600 x 200 |" in report


def test_online_experiment_timeline_cuts_movielens_by_time():
    from benchmarks import online_benchmark
    from monolith.data import load_movielens100k
    from monolith.demo import FEATURES

    timeline = online_benchmark.Timeline(batch_size=256)
    whole = next(iter(load_movielens100k(train_fraction=1.0, batch_size=10**6).train))
    times = whole.dense["req_time"].numpy()
    # The batch period is every rating in the first 5/7 of the time span, the rest is online.
    boundary = times[0] + 5 / 7 * (times[-1] - times[0])
    assert timeline.cut == int((times <= boundary).sum()) and times[timeline.cut] > boundary
    assert sum(b.batch_size for b in timeline.batches) == timeline.cut == 100_000 - len(timeline.examples)
    last = list(timeline.batches)[-1]
    assert last.dense["req_time"][-1].item() == times[timeline.cut - 1]
    # Each online example carries its rating's FIDs and label.
    for i in (0, 1234, len(timeline.examples) - 1):
        row = timeline.cut + i
        for name in FEATURES:
            offsets = whole.sparse[name].offsets()
            assert timeline.examples[i][name] == whole.sparse[name].values()[offsets[row]:offsets[row + 1]].tolist()
        assert timeline.labels[i] == whole.dense["label"][row].item()
    # N shards of equal time: in order, covering every online example once, each within its interval.
    for count in (10, 100):
        shards = timeline.shards(count)
        assert len(shards) == count and shards[0][0] == 0 and shards[-1][1] == len(timeline.examples)
        assert all(a[1] == b[0] for a, b in zip(shards, shards[1:]))
        width = (timeline.times[-1] - timeline.times[0]) / count
        for k, (lo, hi) in enumerate(shards):
            start = timeline.times[0] + k * width
            assert all(start - 1e-6 <= t <= start + width + 1e-6 for t in timeline.times[lo:hi])
