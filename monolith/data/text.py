"""Streaming delimited text (CSV, TSV) through pyarrow, with the line number of every record.

The file is read in blocks of whole lines, each parsed by pyarrow; every column is read as text
so that the readers do the number parsing themselves and can pin a bad value (or invalid UTF-8)
on its line. Each line is one record (a quoted field ends on its line), so a record's line number
is its position among the lines of its block, and a malformed line drops only itself.

An uncompressed file can be read in byte ranges (a reader's share, see :mod:`monolith.data.base`):
a range holds the lines that start in it, so the ranges of a file hold each line once.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from monolith.data.base import ChunkedReader, Piece, Rows
from monolith.data.columns import invalid_utf8

__all__ = ["LineStream", "header_names", "is_compressed", "read_delimited", "stream_error", "text_pieces"]

#: Bytes parsed at a time; each block becomes one ``Rows`` (about 10-50k lines).
DEFAULT_BLOCK_SIZE = 4 << 20

Convert = Callable[[pa.RecordBatch, np.ndarray], tuple[Rows, list[tuple[int, str]]]]

# Byte ranges a text file is cut into per share (see text_pieces).
_PIECES_PER_SHARE = 16
# What pyarrow's compression="detect" decompresses, by file name ending.
_COMPRESSED = (".gz", ".bz2", ".lz4", ".zst", ".br")


def is_compressed(path: str) -> bool:
    """Whether the text file ``path`` is read decompressed (its name says so), hence not by ranges."""
    return path.endswith(_COMPRESSED)


def text_pieces(path: str, shares: int) -> list[Piece]:
    """``path`` cut into byte ranges, ``_PIECES_PER_SHARE`` per share so that shares of files of
    different sizes come out about equal, or whole if it is compressed."""
    size = os.path.getsize(path)
    if is_compressed(path):
        return [Piece(path, None, size)]
    cuts = [size * k // (shares * _PIECES_PER_SHARE) for k in range(shares * _PIECES_PER_SHARE + 1)]
    return [Piece(path, (start, stop), stop - start) for start, stop in zip(cuts, cuts[1:]) if stop > start]


def _line_bounds(path: str, start: int, stop: int) -> tuple[int, int]:
    """The bytes ``[begin, end)`` of the lines of the uncompressed file ``path`` that start in
    ``[start, stop)``."""
    with open(path, "rb") as f:

        def next_line_start(at: int) -> int:
            if at <= 0:
                return 0
            f.seek(at - 1)
            f.readline()  # the line holding byte ``at - 1`` starts before ``at``
            return f.tell()

        return next_line_start(start), next_line_start(stop)


class _ByteRange(io.RawIOBase):
    """Bytes ``[begin, end)`` of a file."""

    def __init__(self, path: str, begin: int, end: int) -> None:
        super().__init__()
        self._file = open(path, "rb")  # closed with this stream
        self._file.seek(begin)
        self._left = end - begin

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._file.readinto(memoryview(buffer)[: min(len(buffer), self._left)])
        self._left -= n
        return n

    def close(self) -> None:
        if not self.closed:
            self._file.close()
        super().close()


def _newlines_before(path: str, offset: int) -> int:
    """How many lines of ``path`` end before byte ``offset``."""
    count = 0
    with open(path, "rb") as f:
        while offset > 0:
            data = f.read(min(offset, 1 << 24))
            if not data:
                break
            count += data.count(b"\n")
            offset -= len(data)
    return count


def header_names(path: str, delimiter: str, quote_char: str | bool) -> list[str]:
    """The column names in the header line of a delimited file.

    Raises:
        ValueError: the header cannot be read (naming the file).
    """
    try:
        with io.BufferedReader(pa.input_stream(path, compression="detect")) as f:
            header = f.readline()
        return _names_in(header, delimiter, quote_char)
    except (pa.ArrowInvalid, OSError) as e:
        raise ValueError(f"{path}: cannot read the header line: {e}") from e


def _names_in(header: bytes, delimiter: str, quote_char: str | bool) -> list[str]:
    """The column names of a header line (parsed alone: pyarrow's quoting rules apply, no data is parsed)."""
    if not header.endswith(b"\n"):
        header += b"\n"  # pyarrow reads no columns from a line without its end
    parse = pacsv.ParseOptions(delimiter=delimiter, quote_char=quote_char)
    return pacsv.read_csv(io.BytesIO(header), parse_options=parse).schema.names


class LineStream(ChunkedReader):
    """The decompressed bytes of a text file, whole lines at a time, for pyarrow or line iteration.

    Where the data cannot be read on (a corrupt or cut compressed file) it ends, after the last
    complete line, and keeps the error: a half line could otherwise pass for a good record.

    With ``span``, only the lines of an uncompressed file that start in that byte range are read.

    Attributes:
        begin: the byte of the file where the stream starts.
        error: what stopped the reading early, else ``None``.
        lines: the number of whole lines read so far.
    """

    def __init__(self, path: str, span: tuple[int, int] | None = None) -> None:
        if span is None:
            self.begin, raw = 0, pa.input_stream(path, compression="detect")
        else:
            self.begin, end = _line_bounds(path, *span)
            raw = _ByteRange(path, self.begin, end)
        super().__init__(raw)
        self._path = path
        self._lines_before: int | None = None  # counted when a bad record needs it
        self._partial: list[bytes] = []  # the pieces of a line read in part
        self._done = False
        self.error: OSError | None = None
        self.lines = 0

    def numbered(self, bad: list[tuple[int, str]]) -> list[tuple[int, str]]:
        """(line number within the stream, reason) as (line number in the whole file, reason)."""
        if not bad or not self.begin:
            return bad
        if self._lines_before is None:
            self._lines_before = _newlines_before(self._path, self.begin)
        return [(n + self._lines_before, reason) for n, reason in bad]

    def read_lines(self, size: int) -> bytes:
        """The next whole lines, about ``size`` bytes or one longer line (the last line even without
        its newline); ``b""`` at the end. Not to be mixed with ``read``."""
        return self._next_chunk(size)

    def _next_chunk(self, size: int) -> bytes:
        while not self._done:
            try:
                data = self._raw.read(size)
            except OSError as e:  # pyarrow's errors of corrupt compressed data are OSErrors
                self.error, self._done = e, True
                break
            if not data:
                ready, self._partial, self._done = b"".join(self._partial), [], True
            else:
                cut = data.rfind(b"\n") + 1
                if not cut:
                    self._partial.append(data)
                    continue
                # Joined once the line is whole: a long line read in many pieces costs linear time.
                ready, self._partial = b"".join([*self._partial, data[:cut]]), [data[cut:]]
            self.lines += ready.count(b"\n")
            if ready:
                return ready
        return b""


class _LineParser:
    """Parses whole lines of delimited text with pyarrow, each line as one record.

    pyarrow lets a quoted field run over line ends, so one stray quote would swallow the lines up
    to the next quote (often the rest of the block) as one field. Lines are records here: a block
    whose records do not match its lines one to one is cut in halves until they do, so a line with
    an unclosed quote is one bad record, and a clean block is parsed in one go.
    """

    def __init__(self, names: list[str], columns: Sequence[str], delimiter: str, quote_char: str | bool) -> None:
        self._names = names
        self._columns = list(columns)
        self._delimiter, self._quote_char = delimiter, quote_char
        # Binary: invalid UTF-8 is then one bad record (see _as_strings), not an error for the file.
        self._convert = pacsv.ConvertOptions(
            column_types={c: pa.binary() for c in columns}, include_columns=self._columns, strings_can_be_null=False
        )

    def parse(self, data: bytes) -> tuple[pa.RecordBatch, np.ndarray, list[tuple[int, str]]]:
        """The records of ``data`` (whole lines) as binary ``columns``, their 0-based line numbers in
        ``data``, and (0-based line, reason) of the malformed lines. Empty lines are no records."""
        if not data.endswith(b"\n"):
            data += b"\n"
        raw = np.frombuffer(data, dtype=np.uint8)
        ends = np.flatnonzero(raw == ord("\n"))
        starts = np.concatenate([[0], ends[:-1] + 1])
        empty = (ends == starts) | ((ends == starts + 1) & (raw[starts] == ord("\r")))
        tables, lines, bad = self._records(data, ends, 0)
        batch = pa.concat_tables(tables).combine_chunks().to_batches() if tables else []
        batch = batch[0] if batch else _empty_batch(self._columns)
        keep = ~empty[lines]
        if not keep.all():
            batch, lines = batch.filter(pa.array(keep)), lines[keep]
        return batch, lines, bad

    def _records(
        self, data: bytes, ends: np.ndarray, first: int
    ) -> tuple[list[pa.Table], np.ndarray, list[tuple[int, str]]]:
        """``parse`` of the lines ending at ``ends`` (offsets in ``data``), the first being line ``first``."""
        num = len(ends)
        lone_cr = data.count(b"\r") != data.count(b"\r\n")  # pyarrow ends a record there too
        table, invalid = self._read(data)
        # One more record than lines (the empty line _read appends is there): no quote ran over a
        # line end. A lone carriage return adds a record where a quote may have taken one away, so
        # only a single line with one record is sure then.
        if table.num_rows + len(invalid) == num + 1 and (not lone_cr or (num == 1 and len(invalid) <= 1)):
            lines = np.delete(np.arange(first, first + num), [n for n, _ in invalid])
            return [table.slice(0, table.num_rows - 1)], lines, [(first + n, why) for n, why in invalid]
        if num == 1:
            reason = "a carriage return inside the line" if lone_cr else "a quoted field is not closed on its line"
            return [], np.empty(0, dtype=np.int64), [(first, reason)]
        half = num // 2
        cut = int(ends[half - 1]) + 1
        left = self._records(data[:cut], ends[:half], first)
        right = self._records(data[cut:], ends[half:] - cut, first + half)
        return left[0] + right[0], np.concatenate([left[1], right[1]]), left[2] + right[2]

    def _read(self, data: bytes) -> tuple[pa.Table, list[tuple[int, str]]]:
        """pyarrow's records of ``data`` and an empty line after it, and (0-based line, reason) of
        the lines with the wrong number of fields."""
        invalid: list[tuple[int, str]] = []

        def on_invalid(row: pacsv.InvalidRow) -> str:
            invalid.append((row.number - 1, f"expected {row.expected_columns} fields, got {row.actual_columns}"))
            return "skip"

        # One block, so that a quote cannot stop unseen at a block end; serial, as pyarrow only
        # knows the line numbers of invalid rows then.
        read = pacsv.ReadOptions(use_threads=False, block_size=len(data) + 2, column_names=self._names)
        parse = pacsv.ParseOptions(
            delimiter=self._delimiter, quote_char=self._quote_char, ignore_empty_lines=False,
            invalid_row_handler=on_invalid,
        )
        table = pacsv.read_csv(
            pa.py_buffer(data + b"\n"), read_options=read, parse_options=parse, convert_options=self._convert
        )
        return table, invalid


def _empty_batch(columns: Sequence[str]) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays([pa.array([], pa.binary()) for _ in columns], names=list(columns))


def _as_strings(batch: pa.RecordBatch, lines: np.ndarray) -> tuple[pa.RecordBatch, np.ndarray, list[tuple[int, str]]]:
    """The binary columns of ``batch`` as strings, without the rows holding invalid UTF-8, which
    are returned as (line number, reason)."""
    reasons: dict[int, str] = {}
    for name, column in zip(batch.schema.names, batch.columns):
        for row in invalid_utf8(column).tolist():
            reasons.setdefault(row, f"column {name!r}: invalid UTF-8")
    bad = [(int(lines[row]), reason) for row, reason in reasons.items()]
    if reasons:
        keep = np.ones(batch.num_rows, dtype=bool)
        keep[list(reasons)] = False
        batch, lines = batch.filter(pa.array(keep)), lines[keep]
    strings = pa.RecordBatch.from_arrays([c.cast(pa.string()) for c in batch.columns], names=batch.schema.names)
    return strings, lines, bad


def read_delimited(
    path: str | os.PathLike[str],
    columns: Sequence[str],
    convert: Convert,
    *,
    delimiter: str,
    quote_char: str | bool,
    column_names: Sequence[str] | None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    span: tuple[int, int] | None = None,
) -> Iterator[tuple[Rows, list[tuple[int, str]]]]:
    """Yield ``convert(batch, line_numbers)`` for each parsed block of ``path`` (of its lines that
    start in the byte range ``span`` of an uncompressed file, if given).

    Args:
        columns: the columns to read (all as strings).
        convert: turns a RecordBatch of string ``columns`` ``[num]`` and their line numbers
            ``[num]`` into good examples plus (line number, reason) of the malformed ones.
        column_names: the names of all columns when the file has no header line; ``None`` reads
            them from the header.

    Each line is one record: a quoted field ends on its line. Empty lines are skipped silently (a
    line of empty fields is a record). Reported as malformed: a line with the wrong number of
    fields, with a quoted field not closed on it, with a carriage return inside it (not before its
    newline, nor quoted), or with invalid UTF-8 in a column read. Files ending in ``.gz``,
    ``.bz2``, ... are decompressed on the fly; compressed data that is corrupt or cut short ends
    the file there, as one malformed record at the first line not read.

    Raises:
        ValueError: pyarrow cannot read the file, naming it: a column is missing, no header, ...
    """
    path = os.fspath(path)
    with LineStream(path, span) as stream:
        data = stream.read_lines(block_size)
        names = list(column_names) if column_names is not None else None
        header_lines = 0
        if names is None and stream.begin:
            names = header_names(path, delimiter, quote_char)
        elif names is None:
            header, _, data = data.partition(b"\n")
            if not header and stream.error is not None:
                # The header is cut off by corrupt data: the file is reported below instead.
                yield Rows.empty(), stream_error(stream)
                return
            try:
                names = _names_in(header, delimiter, quote_char)
            except pa.ArrowInvalid as e:
                raise ValueError(f"{path}: {e}") from e
            header_lines = 1
        parser = _LineParser(names, columns, delimiter, quote_char)
        first_line = header_lines + 1
        while data or (data := stream.read_lines(block_size)):
            try:
                batch, lines, bad = parser.parse(data)
            except pa.ArrowKeyError as e:
                # A column to read is not in the file; pyarrow's message names it.
                raise ValueError(f"{path}: {e.args[0]}") from e
            lines += first_line
            bad = [(first_line + n, reason) for n, reason in bad]
            batch, lines, bad_text = _as_strings(batch, lines)
            rows, bad_values = convert(batch, lines)
            yield rows, stream.numbered(bad + bad_text + bad_values)
            first_line += data.count(b"\n") + (not data.endswith(b"\n"))
            data = b""
    yield Rows.empty(), stream.numbered(stream_error(stream))


def stream_error(stream: LineStream) -> list[tuple[int, str]]:
    """The (line, reason) of the data a :class:`LineStream` could not read, if any."""
    if stream.error is None:
        return []
    return [(stream.lines + 1, f"corrupt or truncated data, the rest of the file is skipped: {stream.error}")]
