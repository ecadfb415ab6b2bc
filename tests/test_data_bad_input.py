"""Tests of monolith.data's text and Parquet readers on bad input: every problem names its file (and
line or row), and without ``strict`` a bad record is skipped and counted instead of ending the run."""

from __future__ import annotations

import gzip
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from monolith.data import CriteoReader, CsvReader, LibSvmReader, ParquetReader
from monolith.data.base import Reader
from monolith.data.feature_list import FeatureList
from monolith.data.text import DEFAULT_BLOCK_SIZE, LineStream
from monolith.fid import hash_string_fid


SKIPPED = "corrupt or truncated data, the rest of the file is skipped"


def read(reader: Reader) -> tuple[list[float], list[tuple[int, str]]]:
    """(labels of the good records, (line, reason) of the bad ones) of one pass."""
    labels = [x for batch in reader for x in batch.dense["label"].tolist()]
    return labels, [(line, reason) for _, line, reason in reader.bad_records]


def gzip_cut(data: bytes, keep: float) -> bytes:
    """A gzip stream of ``data`` cut to ``keep`` of its length (as a writer that died leaves it)."""
    packed = gzip.compress(data)
    return packed[: int(len(packed) * keep)]


# ---------------------------------------------------------------- empty lines and empty fields


@pytest.mark.parametrize("block_size", [1 << 20, 16])  # 16: reads end anywhere inside the lines
def test_only_physically_empty_lines_are_skipped(tmp_path: Path, block_size: int) -> None:
    path = tmp_path / "a.csv"
    path.write_bytes(
        b"id,u,x,label\n"  # 1
        b"1,a,0.5,1\n"  # 2
        b"\n"  # 3: empty, skipped
        b"8,,,\n"  # 4: its fields read are all empty, but it is a record without a label
        b",,,\r\n"  # 5: the same with no field at all
        b"\r\n"  # 6: empty, skipped
        b"2,b,1,0\n"  # 7
        b"\n\n"  # 8, 9: empty, skipped
        b"3,c,2,1\n"  # 10
    )
    reader = CsvReader(path, {"u": 1}, ["x"], "label", 10, block_size=block_size)
    labels, bad = read(reader)
    assert labels == [1.0, 0.0, 1.0]
    assert bad == [(4, "column 'label': expected a number, got ''"), (5, "column 'label': expected a number, got ''")]
    with pytest.raises(ValueError, match=rf"{path}, line 4: malformed record: column 'label'"):
        list(CsvReader(path, {"u": 1}, ["x"], "label", 10, strict=True))

    # Criteo: a line of 39 tabs has 40 empty fields, so no label.
    line = "\t".join(["1", *["3"] * 13, *["68fd1e64"] * 26]) + "\n"
    tsv = tmp_path / "day.tsv"
    tsv.write_text("\n" + line + "\t" * 39 + "\n" + line)
    labels, bad = read(CriteoReader(tsv, 8))
    assert labels == [1.0, 1.0] and bad == [(3, "column 'label': expected a number, got ''")]


def test_line_stream_reads_whole_lines_whatever_the_reads(tmp_path: Path) -> None:
    """Every read ends at a line end, however the underlying reads cut the bytes; a cut gzip ends at a whole line."""
    rng = random.Random(0)
    path = tmp_path / "lines"
    for _ in range(200):
        lines = [rng.choice([b"", b"\r", b"a", b"a,b", b"\t\t"]) for _ in range(rng.randint(0, 12))]
        path.write_bytes(b"".join(line + b"\n" for line in lines))
        got = []
        with LineStream(str(path)) as stream:
            while chunk := stream.read_lines(rng.randint(1, 5)):
                got.append(chunk)
        assert all(chunk.endswith(b"\n") for chunk in got) and b"".join(got) == path.read_bytes()
        assert stream.lines == len(lines) and stream.error is None

    cut = tmp_path / "cut.gz"
    cut.write_bytes(gzip_cut(b"".join(b"line %d\n" % i for i in range(100_000)), 0.5))
    with LineStream(str(cut)) as stream:
        data = stream.read()
    assert data.endswith(b"\n") and data.count(b"\n") == stream.lines > 0
    assert data == b"".join(b"line %d\n" % i for i in range(stream.lines))
    assert isinstance(stream.error, OSError) and "Truncated compressed stream" in str(stream.error)


# ---------------------------------------------------------------- values that are not finite


def test_non_finite_labels_and_dense_values_are_malformed(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text("u,x,label\na,1,1\nb,1,nan\nc,1,-inf\nd,inf,1\ne,1e40,0\nf,NaN,0\ng,2,0\n")
    labels, bad = read(CsvReader(path, {"u": 1}, ["x"], "label", 10))
    assert labels == [1.0, 0.0]
    assert bad == [
        (3, "column 'label': expected a finite number, got 'nan'"),
        (4, "column 'label': expected a finite number, got '-inf'"),
        (5, "column 'x': expected a finite number, got 'inf'"),
        (6, "column 'x': expected a finite number, got '1e40'"),  # beyond float32
        (7, "column 'x': expected a finite number, got 'NaN'"),
    ]
    with pytest.raises(ValueError, match=rf"{path}, line 3: malformed record: column 'label': expected a finite"):
        list(CsvReader(path, {"u": 1}, ["x"], "label", 10, strict=True))

    parquet = tmp_path / "a.parquet"
    pq.write_table(
        pa.table({"u": [1, 2, 3, 4], "x": [1.0, 1e40, 2.0, 3.0], "y": [1.0, 0.0, float("nan"), 0.0]}), parquet
    )
    labels, bad = read(ParquetReader(parquet, {"u": 1}, ["x"], "y", 10))
    assert labels == [1.0, 0.0]
    assert bad == [
        (2, "column 'x': expected a finite number, got 1e+40"),
        (3, "column 'y': expected a finite number, got nan"),
    ]

    svm = tmp_path / "a.svm"
    svm.write_text("1 1:1\nnan 1:1\ninf 2:1\n0 3:inf\n")
    labels, bad = read(LibSvmReader(svm, 10))
    assert labels == [1.0, 0.0]  # the sparse mode ignores values
    assert bad == [(2, "label: expected a finite number, got 'nan'"), (3, "label: expected a finite number, got 'inf'")]
    labels, bad = read(LibSvmReader(svm, 10, dense_dim=4))
    assert labels == [1.0] and bad[-1] == (4, "index:value token: expected a finite number, got 'inf'")


# ---------------------------------------------------------------- CSV files


def test_csv_errors_name_the_file(tmp_path: Path) -> None:
    good, other = tmp_path / "good.csv", tmp_path / "other.csv"
    good.write_text("u,x,label\na,1,1\n")
    other.write_text("u,label\nb,1\n")  # no column x
    with pytest.raises(ValueError, match=rf"{other}: Column 'x' .*does not exist"):
        list(CsvReader([good, other], {"u": 1}, ["x"], "label", 4))

    broken = tmp_path / "broken.csv.gz"
    broken.write_bytes(b"\x1f\x8b\x08\x00 not really gzip")
    with pytest.raises(ValueError, match=rf"{broken}: cannot read the header line"):
        CsvReader(broken, ["u"], [], "label", 4)  # the default slots come from the header


def test_corrupt_or_cut_gzip_is_one_bad_record(tmp_path: Path) -> None:
    rows = b"".join(b"%d,1\n" % i for i in range(200_000))
    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(gzip_cut(b"u,label\n" + rows, 0.6))
    reader = CsvReader(cut, {"u": 1}, [], "label", 1 << 20, block_size=1 << 16)
    labels, bad = read(reader)
    # The whole lines before the cut are read; the rest of the file is one bad record at the next line.
    assert 0 < len(labels) < 200_000
    assert bad == [(len(labels) + 2, f"{SKIPPED}: Truncated compressed stream")]
    with pytest.raises(ValueError, match=rf"{cut}, line {len(labels) + 2}: malformed record: corrupt or truncated"):
        list(CsvReader(cut, {"u": 1}, [], "label", 1 << 20, block_size=1 << 16, strict=True))

    garbage = tmp_path / "garbage.csv.gz"
    garbage.write_bytes(b"\x1f\x8b\x08\x00 not really gzip")
    good = tmp_path / "good.csv"
    good.write_text("u,label\na,1\n")
    reader = CsvReader([garbage, good], {"u": 1}, [], "label", 4)
    labels, _ = read(reader)
    assert labels == [1.0] and reader.num_bad_records == 1 and reader.bad_records[0][:2] == (str(garbage), 1)


def test_invalid_utf8_in_a_csv_line_is_one_bad_record(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_bytes(b"u,label\na,1\n\xff\xfe,1\nb,0\n")
    labels, bad = read(CsvReader(path, {"u": 1}, [], "label", 4))
    assert labels == [1.0, 0.0] and bad == [(3, "column 'u': invalid UTF-8")]
    with pytest.raises(ValueError, match=rf"{path}, line 3: malformed record: column 'u': invalid UTF-8"):
        list(CsvReader(path, {"u": 1}, [], "label", 4, strict=True))


@pytest.mark.parametrize("block_size", [1 << 16, DEFAULT_BLOCK_SIZE])
def test_a_stray_quote_drops_only_its_own_line(tmp_path: Path, block_size: int) -> None:
    """A quote that opens a field and never closes it on its line is one bad record; the lines
    after it (which pyarrow would read as the rest of that field) are records of their own."""
    n = 60_000  # about 1 MB: several blocks of 64 KiB
    quoted = '"a,b"'  # a good quoted field, on lines 7, 1007, ...
    lines = [f"{i},{quoted if i % 1000 == 5 else f'n{i}'},{i % 2},{i}\n" for i in range(n)]
    lines[10] = '10,"n10,0,10\n'  # line 12: the quote runs on to the end of the block
    lines[996] = '996,"n996,0,996\n'  # line 998: closed by the quoted field of line 1007
    lines[2000] = '2000,n"2000,0,2000\n'  # a quote inside a field is a character: a good record
    lines[-1] = f'{n - 1},n,1,"{n - 1}\n'  # the file's last line
    path = tmp_path / "stray.csv"
    path.write_text("u,note,label,x\n" + "".join(lines))
    reader = CsvReader(path, {"u": 1, "note": 2}, ["x"], "label", 4096, block_size=block_size)
    batches = list(reader)
    unclosed = "a quoted field is not closed on its line"
    assert [(line, reason) for _, line, reason in reader.bad_records] == [(12, unclosed), (998, unclosed),
                                                                          (n + 1, unclosed)]
    assert reader.num_bad_records == 3
    good = [i for i in range(n) if i not in (10, 996, n - 1)]
    assert [x for b in batches for x in b.dense["x"].tolist()] == good
    assert [y for b in batches for y in b.dense["label"].tolist()] == [i % 2 for i in good]
    notes = [v for b in batches for v in b["note"].values().tolist()]
    assert notes[good.index(1005)] == hash_string_fid(["a,b"], 2)[0]  # the quoted field of line 1007
    assert notes[good.index(2000)] == hash_string_fid(['n"2000'], 2)[0]
    with pytest.raises(ValueError, match=rf"{path}, line 12: malformed record: {unclosed}"):
        list(CsvReader(path, {"u": 1}, [], "label", 4096, block_size=block_size, strict=True))


def test_a_carriage_return_inside_a_line_is_one_bad_record(tmp_path: Path) -> None:
    path = tmp_path / "cr.csv"
    path.write_bytes(b"u,label\r\na,1\r\nb\r0\nc,1\n\"d\re\",0\n")  # pyarrow ends a record at a lone \r
    labels, bad = read(CsvReader(path, {"u": 1}, [], "label", 4))
    assert labels == [1.0, 1.0, 0.0] and bad == [(3, "a carriage return inside the line")]


# ---------------------------------------------------------------- Parquet files


def test_parquet_errors_name_the_file_and_column(tmp_path: Path) -> None:
    path = tmp_path / "a.parquet"
    table = pa.table({"u": [1, 2, 3], "s": ["1", "0", "1"], "t": [10.0, 11.5, float("nan")], "y": [1, 0, 1]})
    pq.write_table(table, path)
    with pytest.raises(TypeError, match=rf"{path}: column 's' must be numeric, got string"):
        list(ParquetReader(path, {"u": 1}, [], "s", 4))

    # A request time must be an integer: a fraction or NaN makes its row malformed.
    reader = ParquetReader(path, {"u": 1}, [], "y", 4, req_time_column="t")
    labels, bad = read(reader)
    assert labels == [1.0]
    assert bad == [(2, "column 't': expected an integer, got 11.5"), (3, "column 't': expected an integer, got nan")]
    with pytest.raises(ValueError, match=rf"{path}, line 2: malformed record: column 't': expected an integer"):
        list(ParquetReader(path, {"u": 1}, [], "y", 4, req_time_column="t", strict=True))


def test_unreadable_parquet_file_is_one_bad_record(tmp_path: Path) -> None:
    good, corrupt, empty = tmp_path / "good.parquet", tmp_path / "corrupt.parquet", tmp_path / "empty.parquet"
    pq.write_table(pa.table({"u": [1, 2], "y": [1.0, 0.0]}), good)
    corrupt.write_bytes(b"PAR1 this is no parquet file")
    empty.write_bytes(b"")
    reader = ParquetReader([corrupt, good, empty], {"u": 1}, [], "y", 4)
    labels, bad = read(reader)
    assert labels == [1.0, 0.0] and reader.num_bad_records == 2
    assert [(file, line) for file, line, _ in reader.bad_records] == [(str(corrupt), 1), (str(empty), 1)]
    assert "Parquet magic bytes not found" in bad[0][1] and "0 bytes" in bad[1][1]
    with pytest.raises(ValueError, match=rf"{corrupt}, line 1: malformed record: cannot read the Parquet file"):
        list(ParquetReader([corrupt, good], {"u": 1}, [], "y", 4, strict=True))
    with pytest.raises(ValueError, match=rf"{corrupt}: cannot read the Parquet schema"):
        ParquetReader(corrupt, ["u"], [], "y", 4)  # the default slots come from the schema


# ---------------------------------------------------------------- libSVM and the feature list


def test_libsvm_invalid_utf8_and_corrupt_gzip(tmp_path: Path) -> None:
    path = tmp_path / "a.svm"
    path.write_bytes(b"1 3:1\n\xff\xfe 1:1\n0 4:1\n")
    labels, bad = read(LibSvmReader(path, 8))
    assert labels == [1.0, 0.0] and bad == [(2, "invalid UTF-8")]
    with pytest.raises(ValueError, match=rf"{path}, line 2: malformed record: invalid UTF-8"):
        list(LibSvmReader(path, 8, strict=True))

    cut = tmp_path / "cut.svm.gz"
    cut.write_bytes(gzip_cut(b"".join(b"1 %d:1\n" % i for i in range(100_000)), 0.5))
    labels, bad = read(LibSvmReader(cut, 1 << 20, block_lines=1000))
    assert 0 < len(labels) < 100_000  # every whole line before the cut
    assert bad == [(len(labels) + 1, f"{SKIPPED}: Truncated compressed stream")]
    with pytest.raises(ValueError, match=rf"{cut}, line {len(labels) + 1}: malformed record: corrupt or truncated"):
        list(LibSvmReader(cut, 1 << 20, block_lines=1000, strict=True))


def test_feature_list_that_is_not_utf8_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "feature_list.conf"
    path.write_bytes(b"feature_name=f_a; slot=1\nfeature_name=f_\xe9; slot=2\n")
    with pytest.raises(ValueError, match=rf"{path}, line 2, byte 16: expected UTF-8 text, got byte 0xe9"):
        FeatureList.parse(path)
    path.write_bytes("feature_name=f_a; slot=1\r\nfeature_name=f_é; slot=2\r\n".encode())
    assert [f.feature_name for f in FeatureList.parse(path)] == ["f_a", "f_é"]
