"""Column-per-feature files: :class:`ParquetReader` and :class:`CsvReader`.

Each row is one example. A sparse column holds an int, a string, or a list of ints/strings per row:
ints become ``extract_fid(value, slot)``, strings ``hash_string_fid(value, slot)``, and null gives
no FID. Dense columns become float32 ``[batch]`` entries of ``Batch.dense`` under their own names
(null/empty -> 0.0), the label column ``Batch.dense["label"]`` (float32; null/empty is malformed),
and an optional request-time column ``Batch.dense["req_time"]`` (int64; null/empty is malformed).
A label or dense value that is not finite as float32 (NaN, inf, or too large) is malformed, as is
a request time that is not an integer (a fraction, NaN).
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from monolith.data.base import PathOrPaths, Piece, Reader, RowErrors, Rows
from monolith.data.columns import cast_numeric, check_slots, parse_column, sparse_fids
from monolith.data.text import DEFAULT_BLOCK_SIZE, header_names, read_delimited, text_pieces

__all__ = ["ParquetReader", "CsvReader"]

SparseColumns = Mapping[str, int] | Sequence[str]


class _TabularReader(Reader):
    """Shared column handling; subclasses say how to read a file and how to parse a number."""

    def __init__(
        self,
        paths: PathOrPaths,
        sparse_columns: SparseColumns,
        dense_columns: Sequence[str],
        label_column: str,
        batch_size: int,
        *,
        req_time_column: str | None,
        drop_last: bool,
        strict: bool,
        rank: int,
        world_size: int,
    ) -> None:
        super().__init__(paths, batch_size, drop_last=drop_last, strict=strict, rank=rank, world_size=world_size)
        if isinstance(sparse_columns, Mapping):
            self.sparse_slots = check_slots(dict(sparse_columns))
        else:
            names = self._column_names(self.paths[0])
            missing = [c for c in sparse_columns if c not in names]
            if missing:
                raise ValueError(f"{self.paths[0]} has no columns {missing}; it has {names}")
            self.sparse_slots = {c: names.index(c) + 1 for c in sparse_columns}
        self.dense_columns = list(dense_columns)
        self.label_column = label_column
        self.req_time_column = req_time_column
        outputs = [*self.sparse_slots, *self.dense_columns, "label"] + (["req_time"] if req_time_column else [])
        clash = sorted({n for n in outputs if outputs.count(n) > 1})
        if clash:
            raise ValueError(f"batch names {clash} would be used twice (sparse features, dense columns, label)")
        optional = [req_time_column] if req_time_column else []
        self.columns = list(dict.fromkeys([*self.sparse_slots, *self.dense_columns, label_column, *optional]))

    @abc.abstractmethod
    def _column_names(self, path: str) -> list[str]:
        """All column names of a file, in order (for the default slots)."""

    @abc.abstractmethod
    def _number(self, column: pa.Array, to: pa.DataType, name: str, errors: RowErrors, required: bool) -> np.ndarray:
        """Column ``[num]`` as numpy of type ``to``; missing -> 0, or a problem when ``required``."""

    def _rows(self, batch: pa.RecordBatch, errors: RowErrors, *, text: bool) -> Rows:
        sparse = {
            name: sparse_fids(batch.column(name), slot, name, text=text) for name, slot in self.sparse_slots.items()
        }
        dense = {c: self._number(batch.column(c), pa.float32(), c, errors, False) for c in self.dense_columns}
        dense["label"] = self._number(batch.column(self.label_column), pa.float32(), self.label_column, errors, True)
        if self.req_time_column:
            column = batch.column(self.req_time_column)
            dense["req_time"] = self._number(column, pa.int64(), self.req_time_column, errors, True)
        return Rows(batch.num_rows, sparse, dense)


class ParquetReader(_TabularReader):
    """Reads Parquet files; one row per example. Malformed-record "line numbers" are 1-based rows.

    Args:
        paths: one file or a sequence of files.
        sparse_columns: feature name -> slot, or a list of names whose slot is then the column's
            1-based position in the first file's schema. Column types: integer, string/binary, or a
            list of either.
        dense_columns: numeric columns, each ``Batch.dense[name]`` float32 ``[batch]``; null -> 0.
        label_column: numeric column -> ``Batch.dense["label"]`` float32 ``[batch]``; null rows are
            malformed.
        batch_size, drop_last, strict, rank, world_size: see :class:`~monolith.data.base.Reader`.
        req_time_column: optional numeric column of integers -> ``Batch.dense["req_time"]`` int64
            ``[batch]``; a row with a fraction is malformed.
        read_rows: rows read from the file at a time.

    A file that cannot be read (corrupt, cut short, empty) is read up to there; the rest counts as
    one malformed record at the first row not read.

    Raises:
        ValueError: a file lacks a column (while reading), names collide, or (list of
            ``sparse_columns``) the first file's schema cannot be read; naming the file.
        TypeError: a column has an unsupported type (while reading), naming the file and column.
    """

    def __init__(
        self,
        paths: PathOrPaths,
        sparse_columns: SparseColumns,
        dense_columns: Sequence[str],
        label_column: str,
        batch_size: int,
        *,
        req_time_column: str | None = None,
        drop_last: bool = False,
        strict: bool = False,
        rank: int = 0,
        world_size: int = 1,
        read_rows: int = 65536,
    ) -> None:
        super().__init__(
            paths,
            sparse_columns,
            dense_columns,
            label_column,
            batch_size,
            req_time_column=req_time_column,
            drop_last=drop_last,
            strict=strict,
            rank=rank,
            world_size=world_size,
        )
        self.read_rows = read_rows

    def _column_names(self, path: str) -> list[str]:
        try:
            return pq.read_schema(path).names
        except (pa.ArrowException, OSError) as e:
            raise ValueError(f"{path}: cannot read the Parquet schema: {e}") from e

    def _number(self, column: pa.Array, to: pa.DataType, name: str, errors: RowErrors, required: bool) -> np.ndarray:
        what = "an integer" if pa.types.is_integer(to) else "a number"
        return cast_numeric(column, to, f"column {name!r}", errors, required=required, what=what)

    def _pieces(self, path: str, shares: int) -> list[Piece]:
        # One piece per row group: the smallest part of a Parquet file read without the rest.
        try:
            metadata = pq.ParquetFile(path).metadata
        except (pa.ArrowException, OSError):
            return [Piece(path, None, 0)]  # reported as the file is read
        return [Piece(path, (g, g + 1), metadata.row_group(g).num_rows) for g in range(metadata.num_row_groups)]

    def _read_piece(self, piece: Piece) -> Iterator[tuple[Rows, list[tuple[int, str]]]]:
        path, first = piece.path, 1
        try:
            file = pq.ParquetFile(path)
            missing = [c for c in self.columns if c not in file.schema_arrow.names]
            if missing:
                raise ValueError(f"{path} has no columns {missing}; it has {file.schema_arrow.names}")
            groups = range(file.num_row_groups) if piece.span is None else range(*piece.span)
            first += sum(file.metadata.row_group(g).num_rows for g in range(groups.start))
            for batch in file.iter_batches(batch_size=self.read_rows, columns=self.columns, row_groups=groups):
                errors = RowErrors(batch.num_rows)
                try:
                    rows = self._rows(batch, errors, text=False)
                except TypeError as e:
                    raise TypeError(f"{path}: {e}") from e
                yield errors.finish(rows, np.arange(first, first + batch.num_rows))
                first += batch.num_rows
        except (pa.ArrowException, OSError) as e:
            # A corrupt, cut or empty file: nothing from row ``first`` on can be read.
            yield Rows.empty(), [(first, f"cannot read the Parquet file from row {first} on: {e}")]


class CsvReader(_TabularReader):
    """Reads delimited text files (CSV, TSV, optionally .gz) through pyarrow; one line per example.

    Cells are text, so a sparse cell that is a base-10 integer (at most 18 digits, optional '-')
    is an int (``extract_fid``), any other non-empty cell a string (``hash_string_fid``), and an
    empty cell gives no FID. With ``list_delimiter`` a sparse cell holds several values, e.g.
    ``"12|7|abc"`` with ``list_delimiter="|"``.

    Args:
        paths: one file or a sequence of files.
        sparse_columns: feature name -> slot, or a list of names whose slot is then the column's
            1-based position in the first file's header (or in ``column_names``).
        dense_columns: each ``Batch.dense[name]`` float32 ``[batch]``; empty -> 0.0.
        label_column: -> ``Batch.dense["label"]`` float32 ``[batch]``.
        batch_size, drop_last, strict, rank, world_size: see :class:`~monolith.data.base.Reader`.
        req_time_column: optional integer column -> ``Batch.dense["req_time"]`` int64 ``[batch]``.
        delimiter: field separator.
        quote_char: quoting character, or ``False`` for none.
        list_delimiter: separator of the values inside a sparse cell, or ``None`` for one value.
        column_names: names of all columns when the files have no header line.

    A line is malformed when it has the wrong number of fields, invalid UTF-8 in a column read, an
    empty, non-numeric or non-finite label, an empty or non-integer request time, or a non-numeric
    or non-finite dense value (``nan``, ``inf``, beyond float32). Empty lines are skipped silently;
    a line of empty fields (``,,,``) is a record, malformed for its empty label. A corrupt or cut
    ``.gz`` ends the file's reading, as one malformed record.
    """

    def __init__(
        self,
        paths: PathOrPaths,
        sparse_columns: SparseColumns,
        dense_columns: Sequence[str],
        label_column: str,
        batch_size: int,
        *,
        req_time_column: str | None = None,
        drop_last: bool = False,
        strict: bool = False,
        rank: int = 0,
        world_size: int = 1,
        delimiter: str = ",",
        quote_char: str | bool = '"',
        list_delimiter: str | None = None,
        column_names: Sequence[str] | None = None,
        block_size: int = DEFAULT_BLOCK_SIZE,
    ) -> None:
        # Set before the base constructor, which reads the header through them for default slots.
        self.delimiter = delimiter
        self.quote_char = quote_char
        self.list_delimiter = list_delimiter
        self.column_names = list(column_names) if column_names is not None else None
        self.block_size = block_size
        super().__init__(
            paths,
            sparse_columns,
            dense_columns,
            label_column,
            batch_size,
            req_time_column=req_time_column,
            drop_last=drop_last,
            strict=strict,
            rank=rank,
            world_size=world_size,
        )

    def _column_names(self, path: str) -> list[str]:
        if self.column_names is not None:
            return self.column_names
        return header_names(path, self.delimiter, self.quote_char)

    def _number(self, column: pa.Array, to: pa.DataType, name: str, errors: RowErrors, required: bool) -> np.ndarray:
        what = "an integer" if pa.types.is_integer(to) else "a number"
        return parse_column(column, to, f"column {name!r}", errors, required=required, what=what)

    def _convert(self, batch: pa.RecordBatch, lines: np.ndarray) -> tuple[Rows, list[tuple[int, str]]]:
        if self.list_delimiter is not None:
            split = {c: pc.split_pattern(batch.column(c), self.list_delimiter) for c in self.sparse_slots}
            batch = pa.RecordBatch.from_pydict({c: split.get(c, batch.column(c)) for c in batch.schema.names})
        errors = RowErrors(batch.num_rows)
        return errors.finish(self._rows(batch, errors, text=True), lines)

    def _pieces(self, path: str, shares: int) -> list[Piece]:
        return text_pieces(path, shares)

    def _read_piece(self, piece: Piece) -> Iterator[tuple[Rows, list[tuple[int, str]]]]:
        return read_delimited(
            piece.path,
            self.columns,
            self._convert,
            delimiter=self.delimiter,
            quote_char=self.quote_char,
            column_names=self.column_names,
            block_size=self.block_size,
            span=piece.span,
        )
