"""Streaming delimited text (CSV, TSV) through pyarrow, with the line number of every record.

pyarrow parses the file in blocks; every column is read as text so that the readers do the
number parsing themselves and can pin a bad value (or invalid UTF-8) on its line. Lines with the
wrong number of fields reach pyarrow's invalid-row handler, which knows their physical line
number; the line of any parsed record follows from its position in the stream and the invalid
lines before it. Line numbers assume no quoted field spans several lines.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from monolith.data.base import ChunkedReader, Rows
from monolith.data.columns import invalid_utf8

__all__ = ["LineStream", "header_names", "read_delimited", "stream_error"]

#: Bytes pyarrow parses at a time; each block becomes one ``Rows`` (about 10-50k lines).
DEFAULT_BLOCK_SIZE = 4 << 20

Convert = Callable[[pa.RecordBatch, np.ndarray], tuple[Rows, list[tuple[int, str]]]]

# A "\n" that ends the line before an empty one.
_BEFORE_EMPTY_LINE = re.compile(rb"\n(?=\r?\n)")


def header_names(path: str, delimiter: str, quote_char: str | bool) -> list[str]:
    """The column names in the header line of a delimited file.

    Raises:
        ValueError: the header cannot be read (naming the file).
    """
    try:
        with io.BufferedReader(pa.input_stream(path, compression="detect")) as f:
            header = f.readline()
        # Parse the header line alone so that pyarrow's quoting rules apply and no data is parsed.
        parse = pacsv.ParseOptions(delimiter=delimiter, quote_char=quote_char)
        return pacsv.read_csv(io.BytesIO(header), parse_options=parse).schema.names
    except (pa.ArrowInvalid, OSError) as e:
        raise ValueError(f"{path}: cannot read the header line: {e}") from e


class LineStream(ChunkedReader):
    """The decompressed bytes of a text file, whole lines at a time, for pyarrow or line iteration.

    * It notes the numbers of the physically empty lines: pyarrow turns an empty line into a
      record of empty fields, just like a line of empty fields (``8,,,`` with the first column
      unread, or 39 tabs), and only the raw bytes tell them apart.
    * Where the data cannot be read on (a corrupt or cut compressed file) it ends, after the last
      complete line, and keeps the error: a half line could otherwise pass for a good record.

    Attributes:
        error: what stopped the reading early, else ``None``.
        lines: the number of whole lines read so far.
    """

    def __init__(self, path: str) -> None:
        super().__init__(pa.input_stream(path, compression="detect"))
        self._partial: list[bytes] = []  # the pieces of a line read in part
        self._done = False
        self._empty: list[int] = []
        self.error: OSError | None = None
        self.lines = 0

    def _next_chunk(self, size: int) -> bytes:
        """The next whole lines (the last line even without its newline)."""
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
            self._note_empty_lines(ready)
            if ready:
                return ready
        return b""

    def _note_empty_lines(self, chunk: bytes) -> None:
        # Each chunk but the last ends with a line, so b"\n" + chunk starts with the end of one.
        text = b"\n" + chunk
        line, counted = self.lines, 0
        for match in _BEFORE_EMPTY_LINE.finditer(text):
            line += text.count(b"\n", counted, match.start() + 1)
            counted = match.start() + 1
            self._empty.append(line)
        self.lines += chunk.count(b"\n")

    def empty_lines(self, last: int) -> np.ndarray:
        """The empty lines up to ``last`` (forgotten afterwards: lines are asked for in order)."""
        done = [n for n in self._empty if n <= last]
        self._empty = self._empty[len(done) :]
        return np.array(done, dtype=np.int64)


def _line_numbers(first_row: int, num: int, header_lines: int, invalid_lines: np.ndarray) -> np.ndarray:
    """1-based line numbers of parsed records ``first_row .. first_row + num - 1`` of the stream.

    ``invalid_lines`` (sorted) are lines pyarrow skipped. The ``j``-th of them comes after
    ``invalid_lines[j] - header_lines - 1 - j`` parsed records, so a record at stream position ``i``
    has as many invalid lines before it as there are such counts ``<= i``.
    """
    rows = np.arange(first_row, first_row + num, dtype=np.int64)
    parsed_before = invalid_lines - header_lines - 1 - np.arange(len(invalid_lines))
    return header_lines + 1 + rows + np.searchsorted(parsed_before, rows, side="right")


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
) -> Iterator[tuple[Rows, list[tuple[int, str]]]]:
    """Yield ``convert(batch, line_numbers)`` for each parsed block of ``path``.

    Args:
        columns: the columns to read (all as strings).
        convert: turns a RecordBatch of string ``columns`` ``[num]`` and their line numbers
            ``[num]`` into good examples plus (line number, reason) of the malformed ones.
        column_names: the names of all columns when the file has no header line; ``None`` reads
            them from the header.

    Empty lines are skipped silently (a line of empty fields is a record). Reported as malformed:
    a line with the wrong number of fields or with invalid UTF-8 in a column read. Files ending in
    ``.gz``, ``.bz2``, ... are decompressed on the fly; compressed data that is corrupt or cut
    short ends the file there, as one malformed record at the first line not read.

    Raises:
        ValueError: pyarrow cannot read the file, naming it: a column is missing, no header, ...
    """
    path = os.fspath(path)
    invalid: list[tuple[int, str]] = []

    def on_invalid(row: pacsv.InvalidRow) -> str:
        invalid.append((row.number, f"expected {row.expected_columns} fields, got {row.actual_columns}"))
        return "skip"

    read = pacsv.ReadOptions(
        # Serial parsing: pyarrow only knows the line numbers of invalid rows then.
        use_threads=False,
        block_size=block_size,
        column_names=list(column_names) if column_names is not None else None,
    )
    # Empty lines stay in the stream (as all-empty records) so the line numbering holds.
    parse = pacsv.ParseOptions(
        delimiter=delimiter, quote_char=quote_char, ignore_empty_lines=False, invalid_row_handler=on_invalid
    )
    # Binary: invalid UTF-8 is then one bad record (see _as_strings), not an error for the file.
    convert_options = pacsv.ConvertOptions(
        column_types={c: pa.binary() for c in columns}, include_columns=list(columns), strings_can_be_null=False
    )
    header_lines = 0 if column_names is not None else 1
    reported = 0
    first_row = 0
    with LineStream(path) as stream:
        try:
            with pacsv.open_csv(
                stream, read_options=read, parse_options=parse, convert_options=convert_options
            ) as reader:
                for batch in reader:
                    invalid_lines = np.array([n for n, _ in invalid], dtype=np.int64)
                    lines = _line_numbers(first_row, batch.num_rows, header_lines, invalid_lines)
                    first_row += batch.num_rows
                    blank = np.isin(lines, stream.empty_lines(int(lines[-1]) if len(lines) else 0))
                    if blank.any():
                        # Checked, as line numbers go wrong after a quoted field that spans lines.
                        for column in batch.columns:
                            blank &= pc.equal(column, b"").to_numpy(zero_copy_only=False)
                        batch, lines = batch.filter(pa.array(~blank)), lines[~blank]
                    batch, lines, bad_text = _as_strings(batch, lines)
                    rows, bad = convert(batch, lines)
                    bad += bad_text + invalid[reported:]
                    reported = len(invalid)
                    yield rows, bad
        except pa.ArrowKeyError as e:
            # A column to read is not in the file; pyarrow's message names it.
            raise ValueError(f"{path}: {e.args[0]}") from e
        except pa.ArrowInvalid as e:
            # Without its header (cut off by corrupt data), the file is reported below instead.
            if stream.error is None:
                raise ValueError(f"{path}: {e}") from e
    yield Rows.empty(), invalid[reported:] + stream_error(stream)


def stream_error(stream: LineStream) -> list[tuple[int, str]]:
    """The (line, reason) of the data a :class:`LineStream` could not read, if any."""
    if stream.error is None:
        return []
    return [(stream.lines + 1, f"corrupt or truncated data, the rest of the file is skipped: {stream.error}")]
