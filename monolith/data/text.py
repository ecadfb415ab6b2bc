"""Streaming delimited text (CSV, TSV) through pyarrow, with the line number of every record.

pyarrow parses the file in blocks; every column is read as a string so that the readers do the
number parsing themselves and can pin a bad value on its line. Lines with the wrong number of
fields reach pyarrow's invalid-row handler, which knows their physical line number; the line of
any parsed record follows from its position in the stream and the invalid lines before it.
Line numbers assume no quoted field spans several lines.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from monolith.data.base import Rows

__all__ = ["read_delimited", "header_names"]

#: Bytes pyarrow parses at a time; each block becomes one ``Rows`` (about 10-50k lines).
DEFAULT_BLOCK_SIZE = 4 << 20

Convert = Callable[[pa.RecordBatch, np.ndarray], tuple[Rows, list[tuple[int, str]]]]


def header_names(path: str, delimiter: str, quote_char: str | bool) -> list[str]:
    """The column names in the header line of a delimited file."""
    with io.BufferedReader(pa.input_stream(path, compression="detect")) as f:
        header = f.readline()
    # Parse the header line alone so that pyarrow's quoting rules apply and no data is parsed.
    parse = pacsv.ParseOptions(delimiter=delimiter, quote_char=quote_char)
    return pacsv.read_csv(io.BytesIO(header), parse_options=parse).schema.names


def _line_numbers(first_row: int, num: int, header_lines: int, invalid_lines: np.ndarray) -> np.ndarray:
    """1-based line numbers of parsed records ``first_row .. first_row + num - 1`` of the stream.

    ``invalid_lines`` (sorted) are lines pyarrow skipped. The ``j``-th of them comes after
    ``invalid_lines[j] - header_lines - 1 - j`` parsed records, so a record at stream position ``i``
    has as many invalid lines before it as there are such counts ``<= i``.
    """
    rows = np.arange(first_row, first_row + num, dtype=np.int64)
    parsed_before = invalid_lines - header_lines - 1 - np.arange(len(invalid_lines))
    return header_lines + 1 + rows + np.searchsorted(parsed_before, rows, side="right")


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

    Blank lines are skipped silently; a line with the wrong number of fields is reported as
    malformed. Files ending in ``.gz``, ``.bz2``, ... are decompressed on the fly.

    Raises:
        ValueError: pyarrow cannot read the file (e.g. a column is missing, invalid UTF-8).
    """
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
    # Blank lines stay in the stream (as all-empty records) so the line numbering holds.
    parse = pacsv.ParseOptions(
        delimiter=delimiter, quote_char=quote_char, ignore_empty_lines=False, invalid_row_handler=on_invalid
    )
    convert_options = pacsv.ConvertOptions(
        column_types={c: pa.string() for c in columns}, include_columns=list(columns), strings_can_be_null=False
    )
    header_lines = 0 if column_names is not None else 1
    reported = 0
    first_row = 0
    try:
        with pacsv.open_csv(path, read_options=read, parse_options=parse, convert_options=convert_options) as reader:
            for batch in reader:
                invalid_lines = np.array([n for n, _ in invalid], dtype=np.int64)
                lines = _line_numbers(first_row, batch.num_rows, header_lines, invalid_lines)
                first_row += batch.num_rows
                blank = np.ones(batch.num_rows, dtype=bool)
                for column in batch.columns:
                    blank &= pc.equal(column, "").to_numpy(zero_copy_only=False)
                if blank.any():
                    batch, lines = batch.filter(pa.array(~blank)), lines[~blank]
                rows, bad = convert(batch, lines)
                bad += invalid[reported:]
                reported = len(invalid)
                yield rows, bad
    except pa.ArrowInvalid as e:
        raise ValueError(f"{os.fspath(path)}: {e}") from e
    yield Rows.empty(), invalid[reported:]
