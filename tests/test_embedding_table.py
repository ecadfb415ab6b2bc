"""The collisionless table: REFERENCE.md's filter and dedup vectors, expiry, persistence, autograd."""

import ctypes
import mmap
import os
import sys
import threading
import time

import numpy as np
import pytest
import torch

from monolith.fid import make_fid
from monolith.modules.combiners import FirstN, ReduceMean, ReduceSum
from monolith.modules.embedding_lookup import HashEmbedding
from monolith.optim import AdagradOptimizer, ConstantsInitializer, SgdOptimizer, ZerosInitializer
from monolith.table import EmbeddingHashTable, FidMap, SliceConfig, SlotConfig, page_in
from monolith.table.page_in import populate


def sgd_table(lr=0.1, dim=1, **kwargs):
    return EmbeddingHashTable(
        [SliceConfig("vec", dim, initializer=ZerosInitializer(), optimizer=SgdOptimizer(learning_rate=lr))], **kwargs
    )


def train_step(module, ids, loss_fn, step=0, dedup="sum", req_time=None):
    emb = module(torch.tensor(ids), req_time=req_time)
    loss_fn(emb).backward()
    module.apply_gradients(global_step=step, dedup=dedup)


def test_fid_map_assigns_dense_rows_and_grows():
    fid_map = FidMap(initial_capacity=16)
    keys = np.random.default_rng(1).integers(-(2**63), 2**63 - 1, 50_000)
    keys[:3] = [-(2**63), 0, 2**63 - 1]  # the empty-slot marker itself is a valid key
    rows = fid_map.find_or_insert(np.concatenate([keys, keys[::-1]]))
    unique, first = np.unique(keys, return_index=True)
    assert len(fid_map) == unique.size
    # Rows follow first appearance and repeat for repeated keys.
    expected = np.empty(keys.size, dtype=np.int64)
    expected[np.sort(first)] = np.arange(unique.size)
    np.testing.assert_array_equal(rows[: keys.size][np.sort(first)], np.arange(unique.size))
    np.testing.assert_array_equal(fid_map.find(keys), rows[: keys.size])
    assert fid_map.find(np.array([12345678901])).item() == -1 or 12345678901 in keys
    assert fid_map.nbytes / len(fid_map) <= 48


def test_a_large_fid_map_doubles_into_a_slot_array_prepared_ahead():
    """Near its load limit a large map has its next slot array paged in on a background thread and doubles
    into it: every key keeps its row, in insertion order, as in a map that grew alone."""
    fid_map, plain = FidMap(initial_capacity=40_000), FidMap(initial_capacity=40_000)
    plain._next = None
    keys = np.random.default_rng(2).integers(-(2**63), 2**63 - 1, 120_000)
    capacity, used = fid_map.capacity, 0
    for batch in np.split(keys, 60):
        prepared = fid_map._next
        rows = fid_map.find_or_insert(batch)
        np.testing.assert_array_equal(rows, plain.find_or_insert(batch))
        if fid_map.capacity != capacity:
            capacity = fid_map.capacity
            if prepared is not None:
                used += 1
                assert fid_map._slots is prepared[1].get()
        plain._next = None  # the reference map grows without help
    assert used >= 1 and len(fid_map) == np.unique(keys).size
    np.testing.assert_array_equal(fid_map.find(keys), plain.find(keys))
    assert (fid_map.find(keys) >= 0).all()


def test_lookup_of_absent_ids_is_zero_and_inserts_nothing():
    table = EmbeddingHashTable([SliceConfig("vec", 3)])
    out = table.lookup(np.array([5, 6]))
    assert out.shape == (2, 3) and torch.count_nonzero(out) == 0
    assert len(table) == 0


def test_local_dedup_applies_one_update_per_occurrence():
    # REFERENCE: SGD lr 0.1, ids [0, 0, 1], loss = -embedding -> [[0.2], [0.1]].
    module = HashEmbedding(sgd_table())
    train_step(module, [0, 0, 1], lambda e: -e.sum(), dedup="local")
    torch.testing.assert_close(module.table.lookup(np.array([0, 1])), torch.tensor([[0.2], [0.1]]))


def test_default_update_is_torch_adagrad_on_gradients_summed_per_distinct_id():
    # Plain torch: the rows as one dense parameter, autograd sums the gradients of repeated ids, one
    # Adagrad step per batch (eps 0 and accumulator 1.0 are Monolith's Adagrad; rows not in the batch
    # get a zero gradient, which leaves them as they are).
    start = torch.tensor([[0.1, -0.2], [0.3, 0.05], [-0.15, 0.2]])
    table = EmbeddingHashTable([SliceConfig("vec", 2, initializer=ZerosInitializer(),
                                            optimizer=AdagradOptimizer(learning_rate=0.1, initial_accumulator_value=1.0))])
    table.assign(np.arange(3), start)
    module = HashEmbedding(table)
    weight = torch.nn.Parameter(start.clone())
    reference = torch.optim.Adagrad([weight], lr=0.1, initial_accumulator_value=1.0, eps=0.0)
    target = torch.tensor([1.0, -1.0])
    for step, ids in enumerate([[0, 0, 0, 1], [1, 2, 1, 0, 1], [2, 2, 2, 2]]):
        loss_fn = lambda e: ((e - target) ** 2).sum()  # noqa: E731
        emb = module(torch.tensor(ids))
        loss_fn(emb).backward()
        module.apply_gradients(global_step=step)  # the default
        reference.zero_grad()
        loss_fn(torch.nn.functional.embedding(torch.tensor(ids), weight)).backward()
        reference.step()
        torch.testing.assert_close(table.lookup(np.arange(3)), weight.detach(), atol=1e-6, rtol=1e-5,
                                   msg=f"rows after step {step}")


def test_sum_dedup_matches_reference_distributed_vector():
    # REFERENCE: SGD lr 1, loss = 2 * embedding, ids [0, 3, 0, 1] -> [[-4], [-2], [-4], [-2]].
    module = HashEmbedding(sgd_table(lr=1.0))
    train_step(module, [0, 3, 0, 1], lambda e: (2 * e).sum(), dedup="sum")
    torch.testing.assert_close(module.table.lookup(np.array([0, 3, 0, 1])), torch.tensor([[-4.0], [-2.0], [-4.0], [-2.0]]))


def test_a_hint_taken_before_an_insert_finds_the_inserted_row():
    # Two lookups of id 7 before either is applied: the second apply must update the row the
    # first one created, not create another (its hint still says "absent").
    table = sgd_table(lr=1.0)
    _, first = table.lookup_with_hint(np.array([7, 8]))
    _, second = table.lookup_with_hint(np.array([7]))
    table.apply_gradients(np.array([7, 8]), torch.tensor([[1.0], [2.0]]), hint=first)
    table.apply_gradients(np.array([7]), torch.tensor([[4.0]]), hint=second)
    assert len(table) == 2
    torch.testing.assert_close(table.lookup(np.array([7, 8])), torch.tensor([[-5.0], [-2.0]]))
    # With no insert in between, the hint's absent ids go straight to admission.
    _, hint = table.lookup_with_hint(np.array([9, 7]))
    table.apply_gradients(np.array([9, 7]), torch.tensor([[1.0], [1.0]]), hint=hint)
    torch.testing.assert_close(table.lookup(np.array([7, 8, 9])), torch.tensor([[-6.0], [-2.0], [-1.0]]))


def test_occurrence_threshold_admits_on_t_plus_first_occurrence():
    # REFERENCE (Monolith's Python vector, one update per occurrence): threshold 3, ids [0, 0, 1]
    # each step, SGD lr 0.1, loss = -embedding.
    module = HashEmbedding(sgd_table(default_occurrence_threshold=3))
    expected = [[[0.0], [0.0]], [[0.1], [0.0]], [[0.3], [0.0]], [[0.5], [0.1]]]
    for step, want in enumerate(expected, start=1):
        train_step(module, [0, 0, 1], lambda e: -e.sum(), step=step, dedup="local")
        torch.testing.assert_close(module.table.lookup(np.array([0, 1])), torch.tensor(want))


def test_sum_dedup_filters_each_id_once_with_all_its_occurrences():
    # Monolith's BatchOptimize with dedup: group first, then ShouldBeFiltered(id, count), which
    # compares the count *before* this batch with T and then adds the batch's occurrences.
    table = sgd_table(lr=1.0, default_occurrence_threshold=1)
    table.apply_gradients(np.array([5, 5, 5]), -np.array([[1.0], [2.0], [4.0]], np.float32), dedup="sum")
    assert len(table) == 0  # count 0 before the batch: filtered, however many occurrences
    table.apply_gradients(np.array([5, 5]), -np.array([[1.0], [2.0]], np.float32), dedup="sum")
    torch.testing.assert_close(table.lookup(np.array([5])), torch.tensor([[3.0]]))  # all its gradients
    # Entries already summed elsewhere carry their occurrences: [7 x2] and [7 x1] is 7 three times.
    summed = sgd_table(lr=1.0, default_occurrence_threshold=3)
    every = sgd_table(lr=1.0, default_occurrence_threshold=3)
    for step in range(3):
        summed.apply_gradients(np.array([7, 8, 7]), np.ones((3, 1), np.float32), dedup="sum",
                               occurrences=np.array([2, 1, 1]))
        every.apply_gradients(np.array([7, 7, 8, 7]), np.full((4, 1), 0.5, np.float32), dedup="sum")
        np.testing.assert_array_equal(summed.items()[0], every.items()[0])
    assert summed.contains(np.array([7])).item() and not summed.contains(np.array([8])).item()
    with pytest.raises(ValueError, match="occurrences must be at least 1"):
        summed.apply_gradients(np.array([9]), np.ones((1, 1), np.float32), dedup="sum", occurrences=[0])


def test_an_evicted_id_counts_its_occurrences_again():
    day = 86400
    for sweep_while_present in (False, True):
        table = sgd_table(slots=[SlotConfig(1, occurrence_threshold=1, expire_time=1)])
        fid, other = make_fid(1, 7), make_fid(1, 8)
        for _ in range(2):
            table.apply_gradients(np.array([fid]), np.ones((1, 1), np.float32), req_time=0)
        assert table.contains(np.array([fid])).item()
        if sweep_while_present:
            assert table.evict(now=0) == 0
        table.apply_gradients(np.array([other]), np.ones((1, 1), np.float32), req_time=5 * day)
        table.apply_gradients(np.array([other]), np.ones((1, 1), np.float32), req_time=5 * day)
        np.testing.assert_array_equal(table.evict_expired(), [fid])
        table.apply_gradients(np.array([fid]), np.ones((1, 1), np.float32), req_time=5 * day)
        assert not table.contains(np.array([fid])).item()  # its first occurrence since: counted, not admitted
        table.apply_gradients(np.array([fid]), np.ones((1, 1), np.float32), req_time=5 * day)
        assert table.contains(np.array([fid])).item()


def test_expiry_now_is_the_newest_update_time_filtered_ids_included(tmp_path):
    day = 86400
    table = sgd_table(slots=[SlotConfig(1, occurrence_threshold=1, expire_time=1)])
    old, new = make_fid(1, 1), make_fid(1, 2)
    for _ in range(2):  # admitted on its second occurrence
        table.apply_gradients(np.array([old]), np.ones((1, 1), np.float32), req_time=0)
    table.apply_gradients(np.array([new]), np.ones((1, 1), np.float32), req_time=2 * day)  # filtered out
    assert not table.contains(np.array([new])).item()
    table.save(tmp_path / "t.npz")  # expired rows are skipped on save: "now" is day 2
    restored = sgd_table(slots=[SlotConfig(1, occurrence_threshold=1, expire_time=1)])
    restored.load(tmp_path / "t.npz")
    assert len(restored) == 0
    np.testing.assert_array_equal(table.evict_expired(), [old])  # as Monolith's max_update_ts_sec_


def test_thresholds_are_per_slot():
    slot_a, slot_b = make_fid(1, 7), make_fid(2, 7)
    table = sgd_table(slots=[SlotConfig(1, occurrence_threshold=1), SlotConfig(2, occurrence_threshold=0)])
    table.apply_gradients(np.array([slot_a, slot_b]), -np.ones((2, 1), np.float32))
    np.testing.assert_array_equal(table.contains(np.array([slot_a, slot_b])), [False, True])
    table.apply_gradients(np.array([slot_a]), -np.ones((1, 1), np.float32))
    assert table.contains(np.array([slot_a])).item()


def test_expire_time_evicts_per_slot_and_is_skipped_on_save(tmp_path):
    day = 86400
    short, long_ = make_fid(1, 5), make_fid(2, 5)
    table = sgd_table(slots=[SlotConfig(1, expire_time=1), SlotConfig(2, expire_time=3)])
    table.apply_gradients(np.array([short, long_]), np.ones((2, 1), np.float32), req_time=0)
    fresh = make_fid(1, 6)
    table.apply_gradients(np.array([fresh]), np.ones((1, 1), np.float32), req_time=2 * day)
    # max_ts = 2 days: the slot-1 row of day 0 expired (2 >= 1), the slot-2 row did not (2 < 3).
    table.save(tmp_path / "t.npz")
    restored = sgd_table()
    restored.load(tmp_path / "t.npz")
    np.testing.assert_array_equal(restored.contains(np.array([short, long_, fresh])), [False, True, True])
    assert len(table) == 3  # saving does not touch the live table
    assert table.evict() == 1
    np.testing.assert_array_equal(table.contains(np.array([short, long_, fresh])), [False, True, True])
    torch.testing.assert_close(table.lookup(np.array([long_, fresh])), torch.tensor([[-0.1], [-0.1]]))
    assert table.evict(now=10 * day) == 2


def test_an_expiry_that_drops_most_of_a_table_warns_once_with_the_figures(tmp_path, caplog):
    # Rows last updated in 1998, then one event stamped 2026 into slots expiring after 30 days: the
    # clock jumps 28 years and every old row goes (serving's 1,253 rows became 1).
    y1998, y2026 = 883_612_800, 1_796_083_200  # 1998-01-01 and 2026-12-01 UTC
    table = sgd_table(default_expire_time=30, name="user")
    table.assign(np.arange(1_253), np.zeros((1_253, 1), np.float32), req_time=y1998)
    table.apply_gradients(np.array([5_000]), np.ones((1, 1), np.float32), req_time=y2026)
    with caplog.at_level("WARNING", logger="monolith.table.embedding_table"):
        assert table.evict() == 1_253
        table.assign(np.arange(10), np.zeros((10, 1), np.float32), req_time=y1998)  # 10 of 11 rows expire again
        assert table.evict() == 10
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1, warnings
    for figure in ("table 'user'", "drops 1253 of its 1254 rows (99.9%", "now is 2026-12-01 00:00:00 UTC",
                   "1998-01-01 00:00:00 UTC to 1998-01-01 00:00:00 UTC", "expire_time 30..30 days"):
        assert figure in warnings[0], warnings[0]
    # A save skipping most rows warns as well; dropping half or less does not.
    saved = sgd_table(default_expire_time=30)
    saved.assign(np.arange(3), np.zeros((3, 1), np.float32), req_time=[y1998, y1998, y2026])
    half = sgd_table(default_expire_time=30)
    half.assign(np.arange(4), np.zeros((4, 1), np.float32), req_time=[y1998, y1998, y2026, y2026])
    caplog.clear()
    with caplog.at_level("WARNING", logger="monolith.table.embedding_table"):
        half.save(tmp_path / "half.npz")
        assert half.evict() == 2 and not caplog.records
        saved.save(tmp_path / "saved.npz")
    assert [r.getMessage()[:40] for r in caplog.records] == ["table 'table': expiry drops 2 of its 3 r"]


def test_save_load_round_trips_rows_state_counters_and_timestamps(tmp_path):
    def make():
        return EmbeddingHashTable(
            [SliceConfig("a", 2, optimizer=AdagradOptimizer(learning_rate=0.1, initial_accumulator_value=1.0)),
             SliceConfig("b", 3, initializer=ConstantsInitializer(0.5), optimizer=SgdOptimizer(learning_rate=0.2))],
            default_occurrence_threshold=1, seed=3,
        )

    rng = np.random.default_rng(0)
    original = make()
    ids = rng.integers(0, 50, 200)
    original.apply_gradients(ids, rng.normal(size=(200, 5)).astype(np.float32), req_time=100)
    original.save(tmp_path / "t.npz")
    restored = make()
    restored.load(tmp_path / "t.npz")
    keys, rows = original.items()
    np.testing.assert_array_equal(restored.items()[0], keys)
    np.testing.assert_array_equal(restored.items()[1], rows)
    # Same state, counters and rng: the next identical step gives identical tables.
    more = rng.integers(0, 80, 100)
    grads = rng.normal(size=(100, 5)).astype(np.float32)
    for table in (original, restored):
        table.apply_gradients(more, grads, global_step=1, req_time=200)
    np.testing.assert_array_equal(original.items()[1], restored.items()[1])
    np.testing.assert_array_equal(original.items()[0], restored.items()[0])


def test_load_rejects_truncated_foreign_and_mismatched_files(tmp_path):
    table = sgd_table()
    table.apply_gradients(np.arange(10), np.ones((10, 1), np.float32))
    table.save(tmp_path / "t.npz")
    data = (tmp_path / "t.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.npz"):
        sgd_table().load(tmp_path / "cut.npz")
    np.savez(tmp_path / "foreign.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="foreign.npz"):
        sgd_table().load(tmp_path / "foreign.npz")
    with pytest.raises(ValueError, match="do not match"):
        sgd_table(dim=2).load(tmp_path / "t.npz")
    np.save(tmp_path / "array.npy", np.zeros(3))
    with pytest.raises(ValueError, match="array.npy"):
        sgd_table().load(tmp_path / "array.npy")


def test_a_bad_state_leaves_the_table_as_it_was(tmp_path):
    table = sgd_table()
    table.apply_gradients(np.arange(10), np.ones((10, 1), np.float32))
    good = table.state_dict()
    target = sgd_table()
    target.apply_gradients(np.array([100, 101, 102]), np.ones((3, 1), np.float32))
    before = target.items()
    short = {**good, "weights_0": good["weights_0"][:3]}
    with pytest.raises(ValueError, match=r"'weights_0' has shape \[3, 1\], expected \[10, 1\]"):
        target.load_state_dict(short, source="short")
    repeated = {**good, "keys": np.concatenate([good["keys"][:9], good["keys"][:1]])}
    with pytest.raises(ValueError, match="keys repeat a FID"):
        target.load_state_dict(repeated, source="repeated")
    for got, want in zip(target.items(), before):
        np.testing.assert_array_equal(got, want)


def test_save_is_atomic_when_writing_fails(tmp_path, monkeypatch):
    table = sgd_table()
    table.apply_gradients(np.arange(4), np.ones((4, 1), np.float32))
    table.save(tmp_path / "t.npz")
    before = (tmp_path / "t.npz").read_bytes()

    def broken_savez(file, **arrays):
        file.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    table.apply_gradients(np.arange(8), np.ones((8, 1), np.float32))
    with pytest.raises(OSError):
        table.save(tmp_path / "t.npz")
    assert (tmp_path / "t.npz").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["t.npz"]


def test_autograd_matches_dense_embedding_reference():
    """Adagrad through HashEmbedding equals torch.optim.Adagrad on a dense nn.Embedding."""
    dim, vocab = 4, 30
    table = EmbeddingHashTable(
        [SliceConfig("vec", dim, optimizer=AdagradOptimizer(learning_rate=0.05, initial_accumulator_value=0.1))]
    )
    # Rows exist before the first lookup (an absent id would look up as zeros, unlike nn.Embedding).
    table.assign(np.arange(vocab), np.full((vocab, dim), 0.3, np.float32))
    module = HashEmbedding(table)
    dense = torch.nn.Embedding(vocab, dim)
    torch.nn.init.constant_(dense.weight, 0.3)
    reference = torch.optim.Adagrad(dense.parameters(), lr=0.05, initial_accumulator_value=0.1, eps=0.0)
    rng = np.random.default_rng(7)
    for step in range(5):
        ids = torch.from_numpy(np.unique(rng.integers(0, vocab, 12)))  # unique: one update per id
        target = torch.from_numpy(rng.normal(size=(ids.numel(), dim)).astype(np.float32))
        ((module(ids) - target) ** 2).sum().backward()
        module.apply_gradients(global_step=step)
        reference.zero_grad()
        ((dense(ids) - target) ** 2).sum().backward()
        reference.step()
        torch.testing.assert_close(table.lookup(ids), dense.weight[ids].detach(), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("combiner, mode", [(ReduceSum(), "sum"), (ReduceMean(), "mean")])
def test_pooled_lookup_trains_as_torch_embedding_bag(combiner, mode):
    """A lookup pooled inside its own autograd step (lengths and a sum or mean combiner) gives torch's
    EmbeddingBag outputs and, with Adagrad, its rows; each id gets its example's request time."""
    dim, vocab = 3, 12
    rng = np.random.default_rng(3)
    start = rng.normal(size=(vocab, dim)).astype(np.float32)
    table = EmbeddingHashTable(
        [SliceConfig("vec", dim, optimizer=AdagradOptimizer(learning_rate=0.05, initial_accumulator_value=0.1))])
    table.assign(np.arange(vocab), start, req_time=0)
    module = HashEmbedding(table)
    bag = torch.nn.EmbeddingBag.from_pretrained(torch.from_numpy(start.copy()), freeze=False, mode=mode)
    reference = torch.optim.Adagrad(bag.parameters(), lr=0.05, initial_accumulator_value=0.1, eps=0.0)
    # Several ids per example (an id repeated, an example without ids), then one id per example.
    for step, (ids, lengths) in enumerate([([1, 4, 4, 7, 2, 9], [2, 0, 3, 1]), ([5, 1, 11, 3], [1, 1, 1, 1])]):
        ids, lengths = torch.tensor(ids), torch.tensor(lengths)
        times = torch.tensor([100, 200, 300, 400]) + 1000 * step
        target = torch.from_numpy(rng.normal(size=(4, dim)).astype(np.float32))
        pooled = module(ids, times, lengths=lengths, combiner=combiner)
        ((pooled - target) ** 2).sum().backward()
        module.apply_gradients(global_step=step)
        offsets = torch.cumsum(lengths, 0) - lengths
        expected = bag(ids, offsets)
        torch.testing.assert_close(pooled.detach(), expected.detach())
        reference.zero_grad()
        ((expected - target) ** 2).sum().backward()
        reference.step()
        torch.testing.assert_close(table.lookup(np.arange(vocab)), bag.weight.detach(), atol=1e-6, rtol=1e-5)
        # Each id's newest request time: the latest example it came in.
        example = torch.repeat_interleave(torch.arange(4), lengths)
        state = table.state_dict(skip_expired=False)
        stamped = dict(zip(state["keys"].tolist(), state["timestamps"].tolist()))
        for i, fid in enumerate(ids.tolist()):
            assert stamped[fid] >= int(times[example[i]]) and stamped[fid] in times[example[ids == fid]].tolist()
    # Eval: the same pooled rows, nothing recorded; other combiners pool the looked-up rows.
    module.eval()
    ids, lengths = torch.tensor([3, 5, 5]), torch.tensor([1, 2])
    out = module(ids, lengths=lengths, combiner=combiner)
    assert not out.requires_grad and module.pending == []
    torch.testing.assert_close(out, bag(ids, torch.tensor([0, 1])).detach())
    torch.testing.assert_close(module(ids, lengths=lengths, combiner=FirstN(2)), FirstN(2)(table.lookup(ids), lengths))


def test_eval_lookup_records_no_gradient():
    module = HashEmbedding(sgd_table())
    module.eval()
    out = module(torch.tensor([1, 2]))
    assert not out.requires_grad and module.pending == []


def test_bad_input_names_the_problem():
    table = sgd_table(dim=2)
    with pytest.raises(ValueError, match=r"shape \[3, 2\]"):
        table.apply_gradients(np.arange(3), np.ones((3, 1), np.float32))
    with pytest.raises(ValueError, match="dedup"):
        table.apply_gradients(np.arange(1), np.ones((1, 2), np.float32), dedup="mean")
    with pytest.raises(ValueError, match="integers"):
        table.lookup(np.array([1.5]))
    with pytest.raises(ValueError, match="64 bits"):
        table.lookup([2**64, 5])
    # Empty lists, uint64-form FIDs in a list and bfloat16 gradients are fine.
    assert table.lookup([]).shape == (0, 2)
    table.apply_gradients([], torch.zeros(0, 2))
    table.apply_gradients([2**64 - 1, 5], torch.ones(2, 2, dtype=torch.bfloat16))
    torch.testing.assert_close(table.lookup(np.array([-1, 5])), torch.full((2, 2), -0.1))
    with pytest.raises(ValueError, match="slot 40000"):
        SlotConfig(40000)


def test_changed_since_reports_written_rows_and_evict_expired_the_dropped_fids():
    table = sgd_table(slots=[SlotConfig(1, expire_time=1)])
    first, second = make_fid(1, 1), make_fid(1, 2)
    table.apply_gradients(np.array([first]), np.ones((1, 1), np.float32), req_time=0)
    marker = table.change_marker
    keys, rows = table.changed_since(marker)
    assert keys.size == 0 and rows.shape == (0, 1)
    table.apply_gradients(np.array([second]), np.ones((1, 1), np.float32), req_time=86400)
    table.assign(np.array([first]), np.full((1, 1), 0.5, np.float32), req_time=0)
    keys, rows = table.changed_since(marker)
    order = np.argsort(keys)
    np.testing.assert_array_equal(keys[order], [first, second])
    np.testing.assert_allclose(rows[order], [[0.5], [-0.1]])
    later = table.change_marker
    np.testing.assert_array_equal(table.evict_expired(), [first])  # day 0 vs newest day 1: expired
    assert table.changed_since(later)[0].size == 0  # eviction writes no row
    np.testing.assert_array_equal(table.contains(np.array([first, second])), [False, True])


def test_large_tables_grow_without_copying_and_count_only_rows_in_use():
    table = EmbeddingHashTable([SliceConfig("vec", 4, optimizer=AdagradOptimizer(learning_rate=0.1, initial_accumulator_value=1.0))])
    ids = np.arange(1, 300_001, dtype=np.int64)
    table.apply_gradients(ids[:100_000], np.ones((100_000, 4), np.float32))
    store = table._weights[0]
    before = table.lookup(ids[:100_000])
    table.apply_gradients(ids[100_000:], np.ones((200_000, 4), np.float32))
    # Past the small sizes the row store is reserved far ahead: 200k more rows, same buffer.
    assert table._weights[0] is store
    torch.testing.assert_close(table.lookup(ids[:100_000]), before)
    # Bytes per row: key, time, change marker (8 each) + weights and Adagrad sums (16 each), plus the map.
    rows_bytes = len(table) * (3 * 8 + 2 * 16)
    assert rows_bytes < table.nbytes <= rows_bytes + table._map.nbytes


def _resident(array: np.ndarray, start: int, stop: int) -> float:
    """Share of the whole pages of rows ``[start, stop)`` of ``array`` that are in memory (``mincore``)."""
    page = mmap.PAGESIZE
    low = -(-(array.ctypes.data + start * array.strides[0]) // page) * page
    high = (array.ctypes.data + stop * array.strides[0]) // page * page
    pages = (high - low) // page
    flags = (ctypes.c_ubyte * pages)()
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.mincore(ctypes.c_void_p(low), ctypes.c_size_t(high - low), flags) == 0, ctypes.get_errno()
    return sum(f & 1 for f in flags) / pages


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise(MADV_POPULATE_WRITE) is Linux's")
def test_populate_pages_rows_in_and_leaves_their_values():
    memory = mmap.mmap(-1, 1 << 24)  # 16 MiB of fresh anonymous memory, its pages mapped on first touch
    store = np.frombuffer(memory, np.float32).reshape(1 << 14, 256)
    store[5, 3] = 2.0
    assert _resident(store, 1 << 12, 1 << 14) == 0
    if not populate(store, 1 << 12, 1 << 14):
        pytest.skip("madvise(MADV_POPULATE_WRITE) is not available on this kernel")
    assert _resident(store, 1 << 12, 1 << 14) == 1
    assert store[5, 3] == 2.0 and np.count_nonzero(store) == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise(MADV_POPULATE_WRITE) is Linux's")
def test_a_large_growing_table_pages_in_the_rows_it_appends_next():
    """A growing table moves into larger stores a background thread allocated and paged in ahead, past its
    first large reservation it has the rows it will append next paged in before it writes them, and it
    holds the same rows as a table reserved up front."""
    def table(**kwargs):
        return EmbeddingHashTable([SliceConfig("vec", 4, optimizer=AdagradOptimizer(learning_rate=0.1))], seed=3,
                                  **kwargs)

    growing, reserved = table(), table(initial_capacity=120_000)
    rng = np.random.default_rng(0)
    moved = 0
    for _ in range(10):
        ids = rng.integers(1, 1 << 40, 10_000)
        grads = rng.standard_normal((ids.size, 4)).astype(np.float32)
        prepared, store = growing._next_stores, growing._weights[0]
        for t in (growing, reserved):
            t.apply_gradients(ids, grads, req_time=0)
        if growing._weights[0] is not store and prepared is not None:  # grew into the stores prepared ahead
            moved += 1
            assert growing._weights[0] is prepared[1][3].get()
    assert moved >= 2  # 16,384 -> 32,768 -> 65,536 rows, then the large reservation
    page_in._worker().submit(lambda: None).result()  # the page-in tasks queued so far are done
    size = len(growing)
    assert size > 65_536 and growing._weights[0].shape[0] > 1_000_000  # reserved far ahead
    if not page_in.populate(np.zeros((1, 1024)), 0, 1):
        pytest.skip("madvise(MADV_POPULATE_WRITE) is not available on this kernel")
    # Rows ahead of the last one written are in memory already, in every store; far beyond, not.
    for store in (growing._keys, growing._weights[0], growing._states[0]):
        assert _resident(store, size + 64, size + 8_000) == 1
        assert _resident(store, size + 4_000_000, size + 4_100_000) == 0
    fids = np.sort(reserved.items()[0])
    torch.testing.assert_close(growing.lookup(fids), reserved.lookup(fids), rtol=0, atol=0)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_process_forked_while_stores_are_prepared_grows_its_table_without_them():
    """A child forked while the page-in thread still owes a table its next stores (the child has no such
    thread) grows the table into stores of its own instead of waiting for them."""
    table = EmbeddingHashTable([SliceConfig("vec", 4, optimizer=AdagradOptimizer(learning_rate=0.1))], seed=3)
    rng = np.random.default_rng(0)
    release = threading.Event()
    page_in._worker().submit(release.wait)  # the page-in thread is busy: what is queued now stays pending
    try:
        while table._next_stores is None:
            table.apply_gradients(rng.integers(1, 1 << 40, 4_000), np.ones((4_000, 4), np.float32), req_time=0)
        capacity = table._next_stores[0]
        ids = rng.integers(1, 1 << 40, capacity - len(table) - 100)  # grows into just the capacity prepared
        pid = os.fork()
        if pid == 0:  # the child: grow past the capacity, then report how many rows it holds
            try:
                before = len(table)
                table.apply_gradients(ids, np.ones((ids.size, 4), np.float32), req_time=0)
                os._exit(0 if len(table) == before + np.unique(ids).size and table.lookup(ids[:5]).shape == (5, 4)
                         else 1)
            except BaseException:
                os._exit(2)
        deadline = time.monotonic() + 30
        while (status := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        if status[0] == 0:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the forked child waited for stores its page-in thread will never prepare")
        assert os.waitstatus_to_exitcode(status[1]) == 0
    finally:
        release.set()


def test_initial_capacity_reserves_room_up_front_and_trains_like_a_growing_table(tmp_path):
    def adagrad_table(**kwargs):
        return EmbeddingHashTable([SliceConfig("vec", 4, optimizer=AdagradOptimizer(learning_rate=0.1))],
                                  [SlotConfig(1, occurrence_threshold=0, expire_time=1)], seed=3, **kwargs)

    reserved, growing = adagrad_table(initial_capacity=50_000), adagrad_table()
    assert reserved.capacity >= 50_000 and growing.capacity < 50_000
    built = reserved.capacity, reserved.nbytes
    rng = np.random.default_rng(0)
    for step in range(5):
        ids = make_fid(1 + step % 2, rng.integers(0, 40_000, 8_000))
        grads = rng.standard_normal((ids.size, 4)).astype(np.float32)
        for table in (reserved, growing):
            table.apply_gradients(ids, grads, req_time=1_000 * step, dedup="sum")
    assert 30_000 < len(reserved) <= 50_000
    # Up to its initial capacity the table never grew, and the map's memory was all there from the start.
    assert reserved.capacity == built[0]
    assert reserved.nbytes - built[1] == len(reserved) * (3 * 8 + 2 * 16)
    fids = np.sort(reserved.items()[0])
    torch.testing.assert_close(reserved.lookup(fids), growing.lookup(fids), rtol=0, atol=0)
    # Eviction and loading keep the room (slot 1's rows expire after one day; slot 2's stay).
    assert reserved.evict(now=86_400 + 4_000) > 0
    assert reserved.capacity == built[0]
    reserved.save(tmp_path / "t.npz")
    loaded = adagrad_table(initial_capacity=50_000)
    loaded.load(tmp_path / "t.npz")
    assert loaded.capacity == built[0]
    torch.testing.assert_close(loaded.lookup(fids), reserved.lookup(fids), rtol=0, atol=0)
    with pytest.raises(ValueError, match="initial_capacity must be an int >= 0, got -1"):
        adagrad_table(initial_capacity=-1)


def repeated_ids_model():
    """A one-slot logistic model (logit: the sum of a 4-dim Adam slice) whose batch repeats 4 ids 32
    times each, the batch and its labels."""
    from monolith.estimator import EstimatorSpec
    from monolith.losses import get_sigmoid_loss_and_pred
    from monolith.model import MonolithModel
    from monolith.optim import AdamOptimizer, RandomUniformInitializer
    from monolith.sparse import Batch, KeyedJaggedTensor

    rng = np.random.default_rng(3)
    ids = np.repeat(np.arange(4), 32)
    labels = (rng.random(ids.size) < np.array([0.1, 0.3, 0.6, 0.9])[ids]).astype(np.float32)
    batch = Batch(KeyedJaggedTensor.from_lists({"f": [[make_fid(1, int(i))] for i in ids]}),
                  {"label": torch.from_numpy(labels)})

    class Model(MonolithModel):
        def __init__(self):
            super().__init__(None)
            self.register_slots({"f": 1})
            self.p.train.per_replica_batch_size = ids.size

        def input_fn(self, mode):
            return [batch] * 3

        def model_fn(self, features, mode):
            self.create_embedding_feature_column("f")
            emb = self.lookup_embedding_slice(["f"], "vec", 4, out_type="concat",
                                              initializer=RandomUniformInitializer(-0.05, 0.05),
                                              optimizer=AdamOptimizer(learning_rate=0.1))
            loss, pred = get_sigmoid_loss_and_pred("ctr", emb.sum(1), features.dense["label"], ids.size, mode=mode)
            return EstimatorSpec(label=features.dense["label"], pred=pred, loss=loss,
                                 optimizer=lambda params: torch.optim.SGD(params, lr=0.0))

        def serving_input_receiver_fn(self):
            return None

    return Model(), batch, labels


def test_adam_on_repeated_ids_converges_in_single_process_training(tmp_path):
    # One process, default RunConfig: ids repeated 32 times in a batch take one Adam step each (on
    # their summed gradient), so the log loss falls; one step per occurrence (dedup="local") moves
    # each row 32 Adam steps per batch and overshoots.
    from monolith.estimator import Estimator, RunConfig

    torch.manual_seed(0)
    model, batch, labels = repeated_ids_model()
    est = Estimator(model, RunConfig(model_dir=str(tmp_path / "run"), log_step_count_steps=1000,
                                     enable_summaries=False, progress_bar=False))
    fids = batch.sparse["f"].values()

    def log_loss() -> float:
        p = torch.sigmoid(model.ctx.tables["f"].table.lookup(fids).sum(1)).numpy().astype(np.float64)
        return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))

    losses = []
    for step in range(1, 4):
        est.train(max_steps=step)
        losses.append(log_loss())
    # ln 2 is the loss of all-zero rows; one Adam step per occurrence went 1.15, 1.12, 1.17.
    assert np.log(2) > losses[0] > losses[1] > losses[2], losses


def test_tables_updated_on_two_threads_end_exactly_as_one_after_the_other():
    # Enough ids that apply_gradients_together hands the tables to its threads (16,384 or more).
    def tables(seed):
        return [HashEmbedding(EmbeddingHashTable(
            [SliceConfig("vec", 8, optimizer=AdagradOptimizer(0.1, initial_accumulator_value=0.1))],
            seed=seed, name=f"t{i}")) for i in range(6)]

    rng = np.random.default_rng(0)
    ids = [torch.from_numpy(rng.integers(0, 5_000, 4_096)) for _ in range(6)]
    grads = [torch.from_numpy(rng.standard_normal((4_096, 8)).astype(np.float32)) for _ in range(6)]
    threads = torch.get_num_threads()
    results = []
    for n in (1, 2):
        modules = tables(seed=3)
        torch.set_num_threads(n)
        try:
            for step in range(3):
                for module, i, g in zip(modules, ids, grads):
                    module(i).backward(g * (step + 1))
                HashEmbedding.apply_gradients_together(modules, global_step=step, dedup="sum")
        finally:
            torch.set_num_threads(threads)
        results.append([module.table.state_dict(skip_expired=False) for module in modules])
    for one, two in zip(*results):
        assert one.keys() == two.keys()
        for name in one:
            np.testing.assert_array_equal(one[name], two[name], err_msg=name)
