"""Synchronous training across 2 processes on gloo, launched with torchrun as a user would."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

import distributed_worker as worker
from monolith.distributed import shard_of
from monolith.estimator import Estimator, RunConfig

WORKER = os.path.join(os.path.dirname(__file__), "distributed_worker.py")


@pytest.fixture(scope="module", autouse=True)
def compiled_kernels(tmp_path_factory):
    """Compiles (and caches) the table kernels once here, so the two ranks of each run load them
    instead of both compiling and writing numba's cache at the same moment."""
    Estimator(worker.SmallModel(), RunConfig(model_dir=str(tmp_path_factory.mktemp("warm")), dedup="sum",
                                             log_step_count_steps=1000, enable_summaries=False)).train(max_steps=2)
    worker.reference_vector_single_process()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str, timeout: float = 300, monitor_interval: float = 0.1) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={free_port()}", f"--monitor-interval={monitor_interval}", WORKER, *args]
    # faulthandler prints every thread's Python stack if a rank aborts (e.g. in a C++ teardown).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]


def test_reference_vector_two_shards(tmp_path):
    # REFERENCE: 2 shards, SGD lr 1, loss = 2 x embedding, ids [0, 3, 0, 1] -> [[-4], [-2], [-4], [-2]].
    ok(torchrun("vector", str(tmp_path)))
    import json

    results = [json.loads((tmp_path / f"vector-{rank}.json").read_text()) for rank in (0, 1)]
    for result in results:
        np.testing.assert_allclose(result["lookup"], [-4.0, -2.0, -4.0, -2.0])
    # Every id lives on exactly one rank: its owner.
    owned = [set(r["owned"]) for r in results]
    assert owned[0] | owned[1] == {0, 1, 3} and not owned[0] & owned[1]
    for rank, ids in enumerate(owned):
        assert all(int(shard_of(torch.tensor([i]), 2)) == rank for i in ids)


def merged_rows(tables_per_rank: list[dict], name: str) -> tuple[np.ndarray, np.ndarray]:
    keys = np.concatenate([t[name][0].numpy() for t in tables_per_rank])
    rows = np.concatenate([t[name][1].numpy() for t in tables_per_rank])
    order = np.argsort(keys)
    return keys[order], rows[order]


def assert_tables_match(ranks: list[dict], single, atol: float) -> None:
    """The ranks' table shards, merged, hold the single process's ids and rows."""
    assert set(ranks[0]["tables"]) == set(single.ctx.tables)
    for name, module in single.ctx.tables.items():
        keys, rows = module.table.items()
        order = np.argsort(keys)
        got_keys, got_rows = merged_rows([r["tables"] for r in ranks], name)
        np.testing.assert_array_equal(got_keys, keys[order])
        np.testing.assert_allclose(got_rows, rows[order], atol=atol, rtol=0)


@pytest.mark.parametrize("multi_hash_table", ["on", "off"])
def test_model_comp_two_processes_equal_reference_and_single_process(tmp_path, multi_hash_table):
    """Monolith's CpuSyncTrainTest: 17 features, batch 455 per rank, dim 15, 50 steps."""
    ok(torchrun("comp", str(tmp_path), multi_hash_table, timeout=600))
    ranks = [torch.load(tmp_path / f"comp-{rank}.pt", weights_only=False) for rank in (0, 1)]
    for rank in ranks:  # the framework's embeddings equalled the plain reference at every step
        assert rank["gap"] < 1e-5
    single = worker.run_comp(str(tmp_path / "single"), multi_hash_table == "on", world_size=1, rank=0)
    for name, value in single.dense_state_dict().items():
        torch.testing.assert_close(ranks[0]["dense"][name], value, atol=1e-5, rtol=0)
        torch.testing.assert_close(ranks[1]["dense"][name], value, atol=1e-5, rtol=0)
    assert_tables_match(ranks, single, atol=1e-5)


def test_rows_start_from_their_fid_so_two_ranks_train_as_one_process(tmp_path):
    """The comp model from the tables' own initial rows (no SeedTables): 1 process and 2 ranks
    (dedup "sum") agree to float rounding, and no two ranks' new rows start equal."""
    ok(torchrun("comp_initialised", str(tmp_path)))
    ranks = [torch.load(tmp_path / f"comp_initialised-{rank}.pt", weights_only=False) for rank in (0, 1)]
    single = worker.run_comp_initialised(str(tmp_path / "single"), world_size=1, rank=0)
    assert_tables_match(ranks, single, atol=1e-6)
    for name, value in single.dense_state_dict().items():
        torch.testing.assert_close(ranks[0]["dense"][name], value, atol=1e-6, rtol=0)


def test_clipping_by_the_global_norm_over_ranks_equals_a_single_process(tmp_path):
    """Each rank holds the gradients of its own lookups: the clipping norm must sum every rank's."""
    ok(torchrun("comp", str(tmp_path), "on", "0.001", timeout=600))
    ranks = [torch.load(tmp_path / f"comp-{rank}.pt", weights_only=False) for rank in (0, 1)]
    single = worker.run_comp(str(tmp_path / "single"), True, world_size=1, rank=0, clip_norm=0.001)
    unclipped = worker.run_comp(str(tmp_path / "unclipped"), True, world_size=1, rank=0)
    assert_tables_match(ranks, single, atol=1e-6)
    # Clipping moves the dense weights by ~0.1 here; a norm missing the other rank's share, by ~1e-7.
    dense = single.dense_state_dict()
    assert max((value - unclipped.dense_state_dict()[name]).abs().max() for name, value in dense.items()) > 1e-2
    for name, value in dense.items():
        torch.testing.assert_close(ranks[0]["dense"][name], value, atol=1e-8, rtol=0)


def test_occurrence_thresholds_count_every_ranks_occurrences_as_one_process(tmp_path):
    ok(torchrun("filtered", str(tmp_path)))
    ranks = [torch.load(tmp_path / f"filtered-{rank}.pt", weights_only=False) for rank in (0, 1)]
    single = worker.run_filtered(str(tmp_path / "single"), world_size=1, rank=0)
    assert 0 < len(single.ctx.tables["uid"].table) < 300  # the threshold held some ids back
    assert_tables_match(ranks, single, atol=1e-6)
    for name, value in single.dense_state_dict().items():
        torch.testing.assert_close(ranks[0]["dense"][name], value, atol=1e-6, rtol=0)


def small_model_state(model_dir: str) -> worker.SmallModel:
    model = worker.SmallModel()
    Estimator(model, RunConfig(model_dir=model_dir, log_step_count_steps=1000, enable_summaries=False)).build()
    return model


def test_checkpoint_of_two_ranks_restores_into_one_process(tmp_path):
    ok(torchrun("small", str(tmp_path), "6"))
    ranks = [torch.load(tmp_path / f"small-{rank}.pt", weights_only=False) for rank in (0, 1)]
    restored = small_model_state(str(tmp_path / "model"))
    for name, module in restored.ctx.tables.items():
        keys, rows = module.table.items()
        order = np.argsort(keys)
        want_keys, want_rows = merged_rows(
            [{n: (torch.from_numpy(k), torch.from_numpy(r)) for n, (k, r) in rk["tables"].items()} for rk in ranks],
            name)
        np.testing.assert_array_equal(keys[order], want_keys)
        np.testing.assert_array_equal(rows[order], want_rows)
    for name, value in restored.dense_state_dict().items():
        torch.testing.assert_close(value, ranks[0]["dense"][name])
    # Evaluation metrics are computed over both ranks' examples: the ranks agree on them.
    assert ranks[0]["metrics"] == ranks[1]["metrics"]


def test_checkpoint_of_one_process_restores_into_two_ranks(tmp_path):
    model = worker.SmallModel()
    Estimator(model, RunConfig(model_dir=str(tmp_path / "model"), log_step_count_steps=1000,
                               enable_summaries=False)).train(max_steps=4)
    ok(torchrun("small", str(tmp_path), "4"))  # already at step 4: restores and trains no further
    for rank in (0, 1):
        state = torch.load(tmp_path / f"small-{rank}.pt", weights_only=False)
        for name, module in model.ctx.tables.items():
            keys, rows = module.table.items()
            mine = shard_of(torch.from_numpy(keys), 2).numpy() == rank
            got_keys, got_rows = state["tables"][name]
            order, want = np.argsort(got_keys), np.argsort(keys[mine])
            np.testing.assert_array_equal(got_keys[order], keys[mine][want])
            np.testing.assert_array_equal(got_rows[order], rows[mine][want])


def test_a_dead_rank_stops_the_others_with_its_name_and_keeps_the_last_checkpoint(tmp_path):
    # The launcher stops the survivors once it sees a rank exit; on a loaded machine its default 0.1 s
    # could stop rank 0 before rank 0 has reported the dead rank, which is what this test reads.
    result = torchrun("small", str(tmp_path), "6", "die", monitor_interval=3)
    assert result.returncode != 0
    assert "rank 0: training stopped at global step" in result.stderr
    assert "rank(s) [1] stopped" in result.stderr
    index = (tmp_path / "model" / "checkpoint").read_text()
    assert '"latest": "ckpt-2"' in index  # nothing half-written became the latest checkpoint
    restored = small_model_state(str(tmp_path / "model"))
    assert len(next(iter(restored.ctx.tables.values())).table) > 0


def test_a_resumed_two_rank_run_is_bitwise_an_uninterrupted_one(tmp_path):
    """Every rank resumes its own random stream (dropout here) and its shard's rows."""
    ok(torchrun("resume", str(tmp_path)))
    for rank in (0, 1):
        runs = torch.load(tmp_path / f"resume-{rank}.pt", weights_only=False)
        for name, value in runs["uninterrupted"]["dense"].items():
            torch.testing.assert_close(runs["resumed"]["dense"][name], value, atol=0, rtol=0)
        for name, (keys, rows) in runs["uninterrupted"]["tables"].items():
            got_keys, got_rows = runs["resumed"]["tables"][name]
            order, want = np.argsort(got_keys.numpy()), np.argsort(keys.numpy())
            np.testing.assert_array_equal(got_keys.numpy()[order], keys.numpy()[want])
            np.testing.assert_array_equal(got_rows.numpy()[order], rows.numpy()[want])


def test_ranks_with_different_models_are_refused(tmp_path):
    result = torchrun("small", str(tmp_path), "4", "disagree")
    assert result.returncode != 0
    assert "rank 1 built a different model" in result.stderr


def partial_ranks(tmp_path) -> list[dict]:
    return [torch.load(tmp_path / f"partial-{rank}.pt", weights_only=False) for rank in (0, 1)]


def test_a_feature_only_some_ranks_batches_carry_trains_as_one_process_over_the_union(tmp_path):
    """'extra' is declared on every rank but, after the first step, carried by rank 0's batches only,
    rank 1's only, neither's, or both's in turn: each rank still routes it (without ids where its
    batch lacks it), so the exchanges stay in step, and training equals one process's."""
    ok(torchrun("partial", str(tmp_path), "missing"))
    ranks = partial_ranks(tmp_path)
    single = worker.run_partial(str(tmp_path / "single"), "missing", world_size=1, rank=0)
    assert len(single.ctx.tables["extra"].table) > 0
    as_items = [{"tables": {name: t["items"] for name, t in rank["tables"].items()}} for rank in ranks]
    assert_tables_match(as_items, single, atol=1e-6)
    for name, value in single.dense_state_dict().items():
        torch.testing.assert_close(ranks[0]["dense"][name], value, atol=1e-6, rtol=0)
        torch.testing.assert_close(ranks[1]["dense"][name], value, atol=1e-6, rtol=0)
    # Each table's expiry clock is its own lookups' newest request time over every rank (no batch of
    # the last step carries 'extra': its clock stays at the step before).
    clocks = {name: module.table.max_update_time for name, module in single.ctx.tables.items()}
    assert clocks["extra"] < clocks["uid"]
    for name, clock in clocks.items():
        assert [rank["tables"][name]["clock"] for rank in ranks] == [clock] * 2


def test_expiry_of_every_shard_follows_the_newest_request_of_every_rank(tmp_path):
    """Expire time 1 day: every id at day 0, then one id per table at day 2. The shard that owns no
    day-2 id must still expire its day-0 rows, as one table seeing the whole step does: every
    shard's clock is the step's newest request time over all ranks."""
    ok(torchrun("partial", str(tmp_path), "expiry"))
    ranks = partial_ranks(tmp_path)
    single = worker.run_partial(str(tmp_path / "single"), "expiry", world_size=1, rank=0)
    expected = worker.partial_tables(single)  # sweeps single's tables last
    for name, want in expected.items():
        assert 1 <= len(want["saved"]) < len(want["items"][0])  # rows kept and rows expired
        for field in ("saved", "after_evict"):
            got = np.sort(np.concatenate([rank["tables"][name][field] for rank in ranks]))
            np.testing.assert_array_equal(got, want[field], err_msg=f"{name}: {field}")
        assert [rank["tables"][name]["clock"] for rank in ranks] == [want["clock"]] * 2
        got_keys, _ = merged_rows([{name: rank["tables"][name]["items"]} for rank in ranks], name)
        np.testing.assert_array_equal(got_keys, np.sort(want["items"][0].numpy()))  # nothing swept during training
    # The checkpoints, restored into one process, hold the same rows and clocks.
    restored = {}
    for run in ("model", "single"):
        model = worker.PartialFeatureModel(kind="expiry")
        Estimator(model, worker.partial_config(str(tmp_path / run))).build()
        restored[run] = model
    for name, module in restored["single"].ctx.tables.items():
        keys, rows = module.table.items()
        got_keys, got_rows = restored["model"].ctx.tables[name].table.items()
        np.testing.assert_array_equal(np.sort(got_keys), np.sort(keys))
        np.testing.assert_allclose(got_rows[np.argsort(got_keys)], rows[np.argsort(keys)], atol=1e-6, rtol=0)
        assert restored["model"].ctx.tables[name].table.max_update_time == module.table.max_update_time


def test_a_lookup_one_rank_never_reads_is_not_applied_and_moves_no_clock(tmp_path):
    ok(torchrun("unread", str(tmp_path)))
    import json

    results = [json.loads((tmp_path / f"unread-{rank}.json").read_text()) for rank in (0, 1)]
    rows = {int(k): v for result in results for k, v in result["rows"].items()}
    # Rank 1's second lookup (ids 40-43, at time 900) was never read: as if never looked up.
    assert sorted(rows) == [10, 11, 12, 13, 20, 21, 22, 23, 30, 31, 32]
    assert rows[10] == -2.0 and all(v == -1.0 for k, v in rows.items() if k != 10)
    assert [result["clock"] for result in results] == [200, 200]
    owners = shard_of(torch.tensor(sorted(rows)), 2).tolist()
    assert set(owners) == {0, 1}


def known_metrics(batches: list) -> dict[str, float]:
    """KnownPredictionsModel's AUC (pairwise, ties half) and MSE over ``batches``, in numpy."""
    label = np.concatenate([b.dense["label"].numpy() for b in batches])
    ctr = np.concatenate([torch.sigmoid(b.dense["score"]).numpy() for b in batches])
    pos, neg = ctr[label == 1], ctr[label == 0]
    auc = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (pos.size * neg.size)
    bid = np.concatenate([b.dense["bid"].numpy() for b in batches]).astype(np.float64)
    target = np.concatenate([b.dense["target"].numpy() for b in batches]).astype(np.float64)
    return {"ctr/auc": float(auc), "bid/mse": float(np.mean((bid - target) ** 2))}


def assert_metrics(got: dict[str, float], want: dict[str, float]) -> None:
    assert got["ctr/auc"] == pytest.approx(want["ctr/auc"], abs=1e-12)
    assert got["bid/mse"] == pytest.approx(want["bid/mse"], rel=1e-6)


def test_one_process_logs_the_auc_and_mse_of_its_examples(tmp_path):
    estimator = Estimator(worker.KnownPredictionsModel(), RunConfig(
        model_dir=str(tmp_path), log_step_count_steps=1000, enable_summaries=False, progress_bar=False))
    want = known_metrics(worker.metrics_batches(0))
    assert_metrics(estimator.train(), want)
    assert_metrics(estimator.evaluate(), want)


def test_two_ranks_log_the_auc_and_mse_of_both_ranks_examples(tmp_path):
    ok(torchrun("metrics", str(tmp_path)))
    import json

    ranks = [worker.metrics_batches(rank) for rank in (0, 1)]
    want = known_metrics(ranks[0] + ranks[1])
    # The ranks' examples differ enough that a mean of the ranks' AUCs is not the merged one.
    assert abs(np.mean([known_metrics(r)["ctr/auc"] for r in ranks]) - want["ctr/auc"]) > 0.01
    for rank in (0, 1):
        logged = json.loads((tmp_path / f"metrics-{rank}.json").read_text())
        assert_metrics(logged["train"], want)
        assert_metrics(logged["eval"], want)
