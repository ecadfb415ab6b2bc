"""Smoke tests of the side-by-side, growth, quality, FID map and command start-up benchmarks at toy sizes
(their code paths and figures, not their numbers)."""

import importlib.util
import math
from pathlib import Path

from benchmarks import cli_benchmark, fid_map_benchmark, growth_benchmark, peers_benchmark, plots, quality_benchmark
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
