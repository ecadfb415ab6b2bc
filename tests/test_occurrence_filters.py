"""Occurrence filters: the exact one forgets ids unseen for the expire time; the bounded sliding
hash filter admits exactly as a transcription of Monolith's C++ does, in fixed memory, and goes
through checkpoints."""

import logging

import numpy as np
import pytest
import torch

from monolith.distributed.routing import shard_of
from monolith.distributed.sharded_embedding import table_state_for_rank
from monolith.fid import make_fid
from monolith.optim import SgdOptimizer, ZerosInitializer
from monolith.table import EmbeddingHashTable, SliceConfig, SlotConfig
from monolith.table.config import SlidingHashFilterConfig
from monolith.table.embedding_table import read_table_file

DAY = 86400


def table(occurrence_filter=None, **kwargs):
    return EmbeddingHashTable([SliceConfig("vec", 1, initializer=ZerosInitializer(), optimizer=SgdOptimizer(0.1))],
                              occurrence_filter=occurrence_filter, **kwargs)


def feed(t, ids, req_time=0):
    ids = np.asarray(ids, dtype=np.int64)
    t.apply_gradients(ids, np.ones((ids.size, 1), np.float32), req_time=req_time)


def monolith_admissions(batches, thresholds):
    """Plain Python of Monolith's ShouldBeFiltered after dedup: per batch, each distinct absent id
    passes when its count before the batch reaches its slot's T, then the batch's occurrences count."""
    counts, admitted, out = {}, set(), []
    for batch in batches:
        ids, occurrences = np.unique(batch, return_counts=True)
        for fid, n in zip(ids.tolist(), occurrences.tolist()):
            if fid in admitted:
                continue
            threshold = thresholds[fid >> 48]
            if counts.get(fid, 0) >= threshold:
                admitted.add(fid)
            counts[fid] = counts.get(fid, 0) + n
        out.append(sorted(admitted))
    return out


# ----------------------------------------------------------------------------- the exact filter
def test_exact_filter_drops_counters_of_ids_unseen_for_the_expire_time(tmp_path):
    rare = [make_fid(1, i) for i in range(2_000)]
    t = table(slots=[SlotConfig(1, occurrence_threshold=5, expire_time=1)])
    feed(t, rare, req_time=0)
    feed(t, [make_fid(1, 99_999)], req_time=2 * DAY)
    assert len(t._filter) == 2_001  # noqa: SLF001 - the number of counters is the subject
    state = t.state_dict()  # a save leaves stale counters out even before an eviction
    np.testing.assert_array_equal(state["filter_keys"], [make_fid(1, 99_999)])
    np.testing.assert_array_equal(state["filter_seen"], [2 * DAY])
    t.evict()
    assert len(t._filter) == 1  # noqa: SLF001
    # A forgotten id counts again from zero: five more occurrences, admitted on the sixth.
    for n in range(6):
        feed(t, [rare[0]], req_time=2 * DAY)
        assert t.contains(np.array([rare[0]])).item() == (n == 5)
    # Counters and their times survive save and load, and an unexpired counter is kept by eviction.
    t.save(tmp_path / "t.npz")
    restored = table(slots=[SlotConfig(1, occurrence_threshold=5, expire_time=1)])
    restored.load(tmp_path / "t.npz")
    assert restored.evict() == 0 and len(restored._filter) == 1  # noqa: SLF001
    for n in range(5):
        feed(restored, [make_fid(1, 99_999)], req_time=2 * DAY)
        assert restored.contains(np.array([make_fid(1, 99_999)])).item() == (n == 4)


# ----------------------------------------------------------------------------- the sliding hash filter
def splitmix_finaliser(fid):
    x = fid & (2**64 - 1)
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & (2**64 - 1)
    return x ^ (x >> 31)


class MonolithSlidingHashFilter:
    """Plain Python of Monolith's HashFilter<uint16_t> and SlidingHashFilter (hash_filter.h,
    sliding_hash_filter.cc), line by line; absl::Hash is replaced by splitmix64's finaliser."""

    def __init__(self, capacity, split_num):
        self.split_capacity = capacity // (split_num - 1)
        self.total_size = int(self.split_capacity * 1.2)
        self.maps = [[0] * (self.total_size + 64) for _ in range(split_num)]
        self.elements = [0] * split_num
        self.head, self.head_increment, self.failure_count = 0, 0, 0

    def find(self, split, fid):  # HashFilter::find(fid, SlidingHashFilter::MAX_STEP = 16)
        cells, sign = self.maps[split], (fid >> 17 | fid << 15) & 0xFFF
        pos = splitmix_finaliser(fid) % self.total_size
        for _ in range(16):
            if cells[pos] == 0 or cells[pos] >> 4 == sign:
                return pos
            pos = (pos + 1) % len(cells)
        return None

    def iter_add(self, split, pos, fid, add_count):  # HashFilterIterator::add
        add_count, cells = min(add_count, 15), self.maps[split]
        if cells[pos] == 0:
            self.elements[split] = min(self.elements[split] + 1, self.split_capacity)
            cells[pos] = (((fid >> 17 | fid << 15) & 0xFFF) << 4) + add_count
            return 0
        count = cells[pos] & 15
        cells[pos] = cells[pos] | 15 if count + add_count >= 15 else cells[pos] + add_count
        return count

    def add(self, fid, count):  # SlidingHashFilter::add
        n = len(self.maps)
        split, pos = self.head, None
        for _ in range(2):  # max_forward_step_
            pos = self.find(split, fid)
            if pos is not None:
                break
            split = (split + 1) % n
        if pos is None:
            self.failure_count += 1
            return 15
        if self.maps[split][pos] != 0:
            return self.iter_add(split, pos, fid, count)
        old_count, older = 0, (self.head - 1) % n
        for _ in range(min(self.head_increment, n - 2)):
            old = self.find(older, fid)
            if old is not None and self.maps[older][old] != 0:
                old_count = self.maps[older][old] & 15
                break
            older = (older - 1) % n
        self.iter_add(split, pos, fid, old_count + count)
        if self.elements[self.head] >= self.split_capacity - 1:  # full()
            self.head, self.head_increment = (self.head + 1) % n, self.head_increment + 1
            cleared = (self.head + 1) % n
            self.maps[cleared], self.elements[cleared] = [0] * len(self.maps[cleared]), 0
        return old_count

    def should_be_filtered(self, fid, count, threshold):
        return threshold > 0 and self.add(fid, count) < threshold


def hashed_fids(slot, n, seed):
    """FIDs of ``slot`` with hashed (random) features, as Monolith's are: signature bits vary."""
    return [make_fid(slot, int(v)) for v in np.random.default_rng(seed).integers(0, 2**40, n)]


def test_sliding_hash_filter_admits_as_monoliths_sliding_hash_filter_with_fixed_memory():
    thresholds = {1: 0, 2: 1, 3: 3, 4: 15}
    slots = [SlotConfig(s, occurrence_threshold=t) for s, t in thresholds.items()]
    rng = np.random.default_rng(0)
    features = np.array(hashed_fids(0, 5_000, 1)) & ((1 << 48) - 1)
    batches = [(rng.integers(1, 5, 400) << 48) | features[np.minimum(rng.zipf(1.3, 400), 5_000) - 1]
               for _ in range(40)]
    config = SlidingHashFilterConfig(capacity=1_200, split_num=5)  # 300 ids a split: it rotates and overflows
    bounded = table(config, slots=slots)
    reference = MonolithSlidingHashFilter(config.capacity, config.split_num)
    admitted = set()
    for batch in batches:
        feed(bounded, batch)
        # The table counts each distinct id once a batch, in the order of first occurrence.
        ids, first, counts = np.unique(batch, return_index=True, return_counts=True)
        for fid, n in zip(ids[np.argsort(first)].tolist(), counts[np.argsort(first)].tolist()):
            if fid not in admitted and not reference.should_be_filtered(fid, n, thresholds[fid >> 48]):
                admitted.add(fid)
        assert sorted(bounded.items()[0].tolist()) == sorted(admitted)
    assert reference.head_increment >= 5  # splits were forgotten
    # Fixed memory: 5 splits of int(300 * 1.2) + 64 16-bit cells, however many rare ids stream by.
    assert bounded._filter.nbytes == 5 * (360 + 64) * 2  # noqa: SLF001
    exact = table(slots=slots)
    feed(exact, np.array([make_fid(3, 10_000 + i) for i in range(200_000)]))
    feed(bounded, np.array([make_fid(3, 10_000 + i) for i in range(200_000)]))
    assert bounded._filter.nbytes == 5 * (360 + 64) * 2  # noqa: SLF001
    assert exact._filter.nbytes > 200_000 * 12  # noqa: SLF001
    with pytest.raises(ValueError, match="occurrence_threshold 16 exceeds 15"):
        table(config, slots=[SlotConfig(5, occurrence_threshold=16)])
    with pytest.raises(ValueError, match="split_num must be an int >= 5"):
        SlidingHashFilterConfig(capacity=1_000, split_num=4)


def test_sliding_hash_filter_forgets_ids_unseen_for_split_num_minus_2_splits():
    config = SlidingHashFilterConfig(capacity=6_000, split_num=7)  # 1,000 ids a split
    t = table(config, default_occurrence_threshold=1)
    kept, forgotten = hashed_fids(1, 2, 0)
    feed(t, [kept, forgotten])
    feed(t, hashed_fids(2, 4_900, 1))  # 4 more splits: both still counted
    feed(t, [kept])
    assert t.contains(np.array([kept])).item()
    feed(t, hashed_fids(3, 1_200, 2))  # the splits of the first occurrences are cleared
    feed(t, [forgotten])
    assert not t.contains(np.array([forgotten])).item()  # counting again from zero
    feed(t, [forgotten])
    assert t.contains(np.array([forgotten])).item()


def test_sliding_hash_filter_goes_through_checkpoints(tmp_path, caplog):
    config = SlidingHashFilterConfig(capacity=5_000)
    ids = np.array(hashed_fids(1, 400, 0))
    owners = shard_of(torch.from_numpy(ids), 2).numpy()
    shards = [table(config, default_occurrence_threshold=2) for _ in range(2)]
    for rank, shard in enumerate(shards):
        feed(shard, ids[owners == rank])  # count 1 each
        feed(shard, ids[owners == rank])  # count 2 each: not yet admitted (T = 2 admits the third)
        assert len(shard) == 0
        shard.save(tmp_path / f"s{rank}.npz")
    states = [read_table_file(tmp_path / f"s{rank}.npz") for rank in range(2)]
    for rank in range(2):  # the same ranks: each gets its own filter back
        resumed = table(config, default_occurrence_threshold=2)
        resumed.load_state_dict(table_state_for_rank(states, rank, 2))
        feed(resumed, ids[owners == rank])  # the third occurrence of each: all admitted
        assert len(resumed) == np.count_nonzero(owners == rank)
    with caplog.at_level(logging.WARNING):  # 3 ranks: the filters cannot be split, they start empty
        resharded = table(config, default_occurrence_threshold=2)
        resharded.load_state_dict(table_state_for_rank(states, 0, 3))
    assert "cannot be split for 3" in caplog.text
    feed(resharded, ids)
    assert len(resharded) == 0
    # A table with another filter refuses these cells, naming what they were.
    with pytest.raises(ValueError, match="sliding hash filter"):
        table(default_occurrence_threshold=2).load(tmp_path / "s0.npz")
    with pytest.raises(ValueError, match="capacity"):
        table(SlidingHashFilterConfig(capacity=6_000), default_occurrence_threshold=2).load(tmp_path / "s0.npz")
    # Exact counters of an earlier run are counted into a table switched to the sliding filter.
    exact = table(default_occurrence_threshold=2)
    feed(exact, ids)
    feed(exact, ids)
    switched = table(config, default_occurrence_threshold=2)
    switched.load_state_dict(exact.state_dict())
    feed(switched, ids)
    assert len(switched) == ids.size


def test_run_config_plumbs_the_sliding_hash_filter_into_the_tables_and_checkpoints(tmp_path):
    from monolith.estimator import Estimator, RunConfig
    from test_embedding_table import repeated_ids_model

    model, batch, _ = repeated_ids_model()
    model.p.default_occurrence_threshold = 40  # each id occurs 32 times a batch: admitted at step 2
    with pytest.raises(ValueError, match="exceeds 15"):
        Estimator(model, RunConfig(model_dir=str(tmp_path / "a"), occurrence_filter={"capacity": 1000},
                                   enable_summaries=False, progress_bar=False)).train(max_steps=1)
    model, batch, _ = repeated_ids_model()
    model.p.default_occurrence_threshold = 10
    est = Estimator(model, RunConfig(model_dir=str(tmp_path / "b"), occurrence_filter={"capacity": 1000},
                                     enable_summaries=False, progress_bar=False))
    est.train(max_steps=1)
    fids = batch.sparse["f"].values()
    assert not model.ctx.tables["f"].table.contains(fids).any()
    est.train(max_steps=2)
    assert model.ctx.tables["f"].table.contains(fids).all()
    state = model.ctx.tables["f"].table.state_dict()
    assert state["filter_splits"].shape == (7, SlidingHashFilterConfig(1000).split_cells)
