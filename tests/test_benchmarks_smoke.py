"""Smoke tests of the side-by-side, growth and quality benchmarks at toy sizes (their code paths, not figures)."""

from pathlib import Path

from benchmarks import growth_benchmark, peers_benchmark, quality_benchmark

_TOY = {"batch": 64, "vocab": 1000, "hidden": (8,)}


def test_peers_runs_ours_and_plain_pytorch_in_turns(monkeypatch):
    monkeypatch.setattr(peers_benchmark, "PEERS_PYTHON", Path("/nonexistent/python"))  # TorchRec: skipped
    result = peers_benchmark.run(steps=2, warmup=1, rows=1 << 10, **_TOY)
    reserved = peers_benchmark.MONOLITH_RESERVED.format(rows=1 << 10)
    assert set(result["systems"]) == {peers_benchmark.MONOLITH, reserved, peers_benchmark.TORCH}
    assert result["distinct"] > 0 and "TorchRec skipped" in result["skipped"]
    assert all(s["examples_per_s"] > 0 and s["peak_rss"] > 0 for s in result["systems"].values())
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
