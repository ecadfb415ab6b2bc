"""Smoke tests of the side-by-side, growth and quality benchmarks at toy sizes (their code paths, not figures)."""

from pathlib import Path

from benchmarks import deepfm_benchmark, growth_benchmark, peers_benchmark, quality_benchmark

_TOY = {"batch": 64, "vocab": 1000, "hidden": (8,)}


def test_peers_runs_ours_and_plain_pytorch_in_turns(monkeypatch):
    monkeypatch.setattr(peers_benchmark, "PEERS_PYTHON", Path("/nonexistent/python"))  # TorchRec: skipped
    result = peers_benchmark.run(steps=2, warmup=1, rows=1 << 10, **_TOY)
    reserved = peers_benchmark.MONOLITH_RESERVED.format(rows=1 << 10)
    assert set(result["systems"]) == {peers_benchmark.MONOLITH, reserved, peers_benchmark.TORCH}
    assert result["distinct"] > 0 and "TorchRec skipped" in result["skipped"]
    assert all(s["examples_per_s"] > 0 and s["peak_rss"] > 0 for s in result["systems"].values())
    assert all(0 < s["embedding_ms"] < s["step_ms"] for s in result["systems"].values())
    assert "| plain PyTorch (hashed EmbeddingBag) |" in peers_benchmark.report([result])


def test_growth_fills_tables_to_each_size():
    result = growth_benchmark.run(sizes=(2_000, 5_000), steps=1, windows=1, warmup=1, **_TOY)
    assert [p["ids"] for p in result["points"]][1] >= 5_000
    assert "| distinct ids held |" in growth_benchmark.report([result])


def test_quality_trains_both_systems_and_the_study():
    result = quality_benchmark.run("movielens", seeds=(0,), epochs=1, evals=1, thresholds=(1,), expire_times=(30,),
                                   limit=2)
    assert set(result["systems"]) == {quality_benchmark.MONOLITH, quality_benchmark.EQUAL, quality_benchmark.WIDE}
    assert set(result["study"]) == {"threshold 0, no expiry", "occurrence threshold 1", "expire time 30 days"}
    assert all(0.0 <= s["auc"][0] <= 1.0 for s in result["systems"].values())
    assert "### MovieLens-100K" in quality_benchmark.report([result])


def test_deepfm_trains_monolith_and_plain_pytorch_in_turns_on_parquet():
    result = deepfm_benchmark.run("frappe", rounds=1, frappe_examples=2_000)
    assert result["steps"] == 8 and len(result["ratios"]) == 1
    assert result["monolith"][0] > 0 and result["baseline"][0] > 0
    assert "| Frappe-sized Parquet (2,000 examples, 10 features," in deepfm_benchmark.report([result])
