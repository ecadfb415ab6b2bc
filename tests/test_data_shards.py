"""Readers sharded among ranks and DataLoader workers: each share reads only its own pieces of the
files (Parquet row groups, byte ranges of text, whole protobuf files), the shares cover every
example once, and a 2-rank run trains every rank's share and stops on one step."""

from __future__ import annotations

import gzip
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader

from monolith.data import LIBSVM_FIELD, CsvReader, LibSvmReader, ParquetReader
from monolith.data.base import Piece, share_of
from monolith.data.pb_dataset import PBDataset, write_pb_file
from monolith.data.proto.example_pb2 import Example
from monolith.fid import extract_fid

WORKER = os.path.join(os.path.dirname(__file__), "data_shard_worker.py")


def times(reader) -> list[int]:
    """The req_time of every example the reader yields (each example's id in these tests)."""
    return [t for batch in reader for t in batch.dense["req_time"].tolist()]


def libsvm_ids(reader) -> list[int]:
    """The feature index of every example of a LibSVM file whose example t has the one index t."""
    index_of = {int(f): t for t, f in enumerate(extract_fid(np.arange(1000), LIBSVM_FIELD))}
    return [index_of[f] for batch in reader for f in batch.sparse.values().tolist()]


def write_parquet(path: Path, first: int, rows: int, row_group_size: int) -> None:
    table = pa.table({"uid": np.arange(first, first + rows) % 17, "label": np.arange(rows) % 2 * 1.0,
                      "t": np.arange(first, first + rows)})
    pq.write_table(table, path, row_group_size=row_group_size)


def write_csv(path: Path, first: int, rows: int) -> None:
    # Lines of one length: shares balanced by bytes are balanced by lines.
    text = "uid,label,t\n" + "".join(f"{t % 17:02d},{t % 2},{t:04d}\n" for t in range(first, first + rows))
    if str(path).endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)


def parquet(paths, **shard) -> ParquetReader:
    return ParquetReader(paths, {"uid": 1}, [], "label", 7, req_time_column="t", **shard)


def csv(paths, **shard) -> CsvReader:
    return CsvReader(paths, {"uid": 1}, [], "label", 7, req_time_column="t", **shard)


def test_share_of_gives_runs_of_pieces_of_about_equal_size() -> None:
    pieces = [Piece("f", (k, k + 1), size) for k, size in enumerate([4, 4, 4, 4, 1, 9])]
    pieces.append(Piece("g", None, 3))
    shares = [share_of(pieces, r, 3) for r in range(3)]
    # Each piece goes where its middle lies (thirds end at 9.7 and 19.3 of 29); adjacent spans are joined.
    assert shares == [[Piece("f", (0, 3), 12)], [Piece("f", (3, 5), 5)], [Piece("f", (5, 6), 9), Piece("g", None, 3)]]
    assert [len(share_of(pieces[:1], r, 2)) for r in range(2)] == [1, 0]


@pytest.mark.parametrize("world", [2, 3])
def test_every_reader_shares_every_example_once(tmp_path: Path, world: int) -> None:
    write_parquet(tmp_path / "a.parquet", 0, 100, row_group_size=10)
    write_parquet(tmp_path / "b.parquet", 100, 35, row_group_size=10)
    write_csv(tmp_path / "a.csv", 0, 100)
    write_csv(tmp_path / "b.csv", 100, 35)
    write_csv(tmp_path / "a.csv.gz", 0, 100)
    write_csv(tmp_path / "b.csv.gz", 100, 35)
    write_csv(tmp_path / "c.csv.gz", 135, 20)
    messages = []
    for t in range(155):
        example = Example()
        example.named_feature.add(name="uid").feature.fid_v2_list.value.append(t % 17)
        example.label.append(float(t % 2))
        example.line_id.req_time = t
        messages.append(example)
    for k, (start, stop) in enumerate([(0, 60), (60, 100), (100, 155)]):
        write_pb_file(tmp_path / f"{k}.pb", messages[start:stop], "example")
    readers = {
        "parquet": (lambda **s: parquet([tmp_path / "a.parquet", tmp_path / "b.parquet"], **s), 135),
        "csv": (lambda **s: csv([tmp_path / "a.csv", tmp_path / "b.csv"], **s), 135),
        "csv.gz": (lambda **s: csv([tmp_path / f"{n}.csv.gz" for n in "abc"], **s), 155),
        "pb": (lambda **s: PBDataset([tmp_path / f"{k}.pb" for k in range(3)], 7, **s), 155),
    }
    (tmp_path / "a.svm").write_text("".join(f"{t % 2} {t}:1\n" for t in range(100, 900)))
    for name, (make, total) in readers.items():
        shares = [times(make(rank=rank, world_size=world)) for rank in range(world)]
        assert sorted(t for share in shares for t in share) == list(range(total)), name
        if name in ("parquet", "csv"):  # split files: shares within a piece of one another
            sizes = [len(share) for share in shares]
            assert max(sizes) - min(sizes) <= (10 if name == "parquet" else 8), (name, sizes)
        assert times(make()) == list(range(total))  # one process reads everything, in order
    shares = [libsvm_ids(LibSvmReader(tmp_path / "a.svm", 7, rank=rank, world_size=world)) for rank in range(world)]
    assert [t for share in shares for t in share] == list(range(100, 900))
    assert max(map(len, shares)) - min(map(len, shares)) <= 800 // (world * 16) + 1


def test_each_rank_reads_only_its_share_and_numbers_bad_records_in_the_whole_file(tmp_path: Path) -> None:
    # A bad record in the second half of each file: only the rank whose share holds it sees it,
    # named by its line (row) number in the whole file.
    path = tmp_path / "one.csv"
    lines = ["uid,label,t"] + [f"{t % 17},{t % 2},{t}" for t in range(60)]
    lines[50] = "1,not a label,49"
    path.write_text("\n".join(lines) + "\n")
    ranks = [csv(path, rank=rank, world_size=2) for rank in range(2)]
    got = [times(reader) for reader in ranks]
    assert sorted(got[0] + got[1]) == [t for t in range(60) if t != 49]
    assert max(got[0]) < min(got[1]) < 49  # consecutive halves; the bad line is in the second
    assert ranks[0].num_bad_records == 0
    assert [(line, reason.split(":")[0]) for _, line, reason in ranks[1].bad_records] == [(51, "column 'label'")]

    svm = [f"{t % 2} {t}:1" for t in range(100, 160)]
    svm[45] = "1 no-colon"
    (tmp_path / "one.svm").write_text("\n".join(svm) + "\n")
    ranks = [LibSvmReader(tmp_path / "one.svm", 8, rank=rank, world_size=2) for rank in range(2)]
    got = [libsvm_ids(reader) for reader in ranks]
    assert got[0] + got[1] == [t for t in range(100, 160) if t != 145] and len(got[0]) in (30, 31)
    assert ranks[0].num_bad_records == 0 and [line for _, line, _ in ranks[1].bad_records] == [46]

    table = pa.table({"uid": np.arange(40), "label": [None if t == 33 else 1.0 for t in range(40)],
                      "t": np.arange(40)})
    pq.write_table(table, tmp_path / "one.parquet", row_group_size=10)
    ranks = [parquet(tmp_path / "one.parquet", rank=rank, world_size=2) for rank in range(2)]
    assert [times(reader) for reader in ranks] == [list(range(20)), [t for t in range(20, 40) if t != 33]]
    assert ranks[0].num_bad_records == 0 and [row for _, row, _ in ranks[1].bad_records] == [34]

    good = Example()
    good.label.append(1.0)
    good.line_id.req_time = 7
    write_pb_file(tmp_path / "0.pb", [good], "example", has_sort_id=False)
    (tmp_path / "1.pb").write_bytes((0xFFFF).to_bytes(8, "little") + b"cut")  # a cut record
    ranks = [PBDataset([tmp_path / "0.pb", tmp_path / "1.pb"], 4, has_sort_id=False, rank=rank, world_size=2)
             for rank in range(2)]
    assert [times(reader) for reader in ranks] == [[7], []]
    assert (ranks[0].num_bad_records, ranks[1].num_bad_records) == (0, 1)


def test_dataloader_workers_read_one_share_each(tmp_path: Path) -> None:
    write_parquet(tmp_path / "a.parquet", 0, 100, row_group_size=10)
    write_csv(tmp_path / "a.csv", 0, 100)
    for reader in (parquet(tmp_path / "a.parquet"), csv(tmp_path / "a.csv")):
        loader = DataLoader(reader, batch_size=None, num_workers=2)
        assert sorted(times(loader)) == list(range(100))  # not every example twice
        # Under 2 ranks, the 2 workers of rank 1 read rank 1's half between them.
        reader.rank, reader.world_size = 1, 2
        assert sorted(times(DataLoader(reader, batch_size=None, num_workers=2))) == list(range(50, 100))


def train_two_ranks(data_dir: Path, run: str, *max_steps: str) -> list[dict]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={port}", WORKER, str(data_dir), run, *max_steps]
    result = subprocess.run(command, capture_output=True, text=True, timeout=240,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-4000:]
    return [torch.load(data_dir / f"{run}-{rank}.pt", weights_only=False) for rank in range(2)]


def test_two_ranks_with_uneven_shares_train_every_example_and_stop_together(tmp_path: Path) -> None:
    # Rank 0's share is 5 batches, rank 1's 3: rank 1 joins step 4 with an empty batch, and the run
    # stops there (max_steps). Resumed, rank 0 trains its last batch and rank 1 joins with an empty
    # one, rather than reading its share again; both stop at step 5, every example trained once.
    write_parquet(tmp_path / "a.parquet", 0, 40, row_group_size=40)
    write_parquet(tmp_path / "b.parquet", 40, 24, row_group_size=24)
    first = train_two_ranks(tmp_path, "first", "4")
    assert [r["global_step"] for r in first] == [4, 4]
    assert first[0]["trained"] == list(range(32)) and first[1]["trained"] == list(range(40, 64))
    resumed = train_two_ranks(tmp_path, "resumed")
    assert [r["global_step"] for r in resumed] == [5, 5]
    assert resumed[0]["trained"] == list(range(32, 40)) and resumed[1]["trained"] == []
    for name, value in resumed[0]["dense"].items():
        torch.testing.assert_close(resumed[1]["dense"][name], value, atol=0, rtol=0)
