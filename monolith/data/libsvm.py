"""libSVM and field-aware libFM (libFFM) text files: :class:`LibSvmReader`."""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from itertools import islice

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from monolith.data.base import PathOrPaths, Piece, Reader, RowErrors, Rows, jagged
from monolith.data.columns import check_slots, invalid_utf8, parse_column
from monolith.data.text import LineStream, stream_error, text_pieces
from monolith.fid import extract_fid

__all__ = ["LibSvmReader", "LIBSVM_FIELD"]

#: The field (and slot) every token of a plain libSVM line belongs to.
LIBSVM_FIELD = 1


class LibSvmReader(Reader):
    """Reads whitespace-separated libSVM / libFFM lines (optionally .gz), one example per line.

    Formats:

    * libSVM (``fields=None``): ``label index:value index:value ...``. It is read as if every
      token were in field :data:`LIBSVM_FIELD` (1).
    * libFFM / field-aware libFM (``fields=[...]``): ``label field:index:value ...``; ``fields``
      lists every field that may occur, which fixes the batch's feature keys.

    Mapping: ``Batch.dense["label"]`` is the label (float32 ``[batch]``, as written: map ``-1/+1``
    yourself). Sparse mode (default): each field ``f`` is the feature ``f"f{f}"`` with slot ``f``
    holding ``extract_fid(index, f)`` for its tokens in line order (duplicates kept); values are
    ignored. Dense mode (``dense_dim=d``): no sparse features; ``Batch.dense["dense"]`` is float32
    ``[batch, d]`` with ``value`` added at column ``index`` (``0 <= index < d``; fields ignored).

    A line is malformed when it is not valid UTF-8, its label is not a finite number, a token does
    not have the form above, a field or index is not an integer, a field is not in ``fields``, or
    (dense mode) a value is not a finite number or an index is out of range. Blank lines are
    skipped silently. A corrupt or cut ``.gz`` ends the file's reading, as one malformed record.

    Args:
        paths, batch_size, drop_last, strict, rank, world_size: see :class:`~monolith.data.base.Reader`.
        fields: the fields of libFFM input, or ``None`` for libSVM input.
        dense_dim: width of the dense output; ``None`` for sparse output.
        block_lines: lines parsed at a time.
    """

    def __init__(
        self,
        paths: PathOrPaths,
        batch_size: int,
        *,
        fields: Sequence[int] | None = None,
        dense_dim: int | None = None,
        drop_last: bool = False,
        strict: bool = False,
        rank: int = 0,
        world_size: int = 1,
        block_lines: int = 65536,
    ) -> None:
        super().__init__(paths, batch_size, drop_last=drop_last, strict=strict, rank=rank, world_size=world_size)
        if dense_dim is not None and dense_dim < 1:
            raise ValueError(f"dense_dim must be >= 1, got {dense_dim}")
        self.fields = None if fields is None else list(check_slots({f"f{f}": f for f in fields}).values())
        self.dense_dim = dense_dim
        self.block_lines = block_lines

    def _pieces(self, path: str, shares: int) -> list[Piece]:
        return text_pieces(path, shares)

    def _read_piece(self, piece: Piece) -> Iterator[tuple[Rows, list[tuple[int, str]]]]:
        with LineStream(piece.path, piece.span) as stream, io.BufferedReader(stream) as f:
            first = 1
            while lines := list(islice(f, self.block_lines)):
                rows, bad = self._parse(lines, first)
                yield rows, stream.numbered(bad)
                first += len(lines)
            yield Rows.empty(), stream.numbered(stream_error(stream))

    def _parse(self, lines: list[bytes], first: int) -> tuple[Rows, list[tuple[int, str]]]:
        raw = pa.array(lines, pa.binary())
        undecodable = invalid_utf8(raw)
        if len(undecodable):
            mask = np.zeros(len(lines), dtype=bool)
            mask[undecodable] = True
            raw = pc.if_else(pa.array(mask), pa.scalar(b"", pa.binary()), raw)  # blank: not parsed below
        text = pc.utf8_trim_whitespace(raw.cast(pa.string()))
        nonblank = pc.not_equal(text, "").to_numpy(zero_copy_only=False)
        text = text.filter(pa.array(nonblank))
        line_numbers = (first + np.arange(len(lines)))[nonblank]
        num = len(text)
        errors = RowErrors(num)
        # Trimmed, so splitting on whitespace runs gives no empty tokens.
        tokens = pc.utf8_split_whitespace(text)
        label = parse_column(pc.list_element(tokens, 0), pa.float32(), "label", errors, required=True)

        num_parts = 2 if self.fields is None else 3
        form = "index:value" if self.fields is None else "field:index:value"
        feats = pc.list_flatten(pc.list_slice(tokens, 1))
        owner = np.repeat(np.arange(num), pc.list_value_length(tokens).to_numpy(zero_copy_only=False) - 1)
        parts = pc.split_pattern(feats, ":")
        well_formed = pc.list_value_length(parts).to_numpy(zero_copy_only=False) == num_parts
        bad = np.flatnonzero(~well_formed)
        errors.add(owner[bad], lambda k: f"token {feats[bad[k]].as_py()!r}: expected {form}")
        parts, owner = parts.filter(pa.array(well_formed)), owner[well_formed]

        def part(i: int, to: pa.DataType, what: str) -> np.ndarray:
            strings = pc.list_element(parts, i)
            return parse_column(strings, to, f"{form} token", errors, required=True, what=what, rows=owner)

        index = part(num_parts - 2, pa.int64(), "an integer index")
        if self.fields is None:
            field = np.full(len(owner), LIBSVM_FIELD)
        else:
            field = part(0, pa.int64(), "an integer field")
            unknown = np.flatnonzero(~np.isin(field, self.fields))
            errors.add(owner[unknown], lambda k: f"field {field[unknown[k]]} is not one of {self.fields}")

        if self.dense_dim is not None:
            value = part(num_parts - 1, pa.float32(), "a number")
            outside = np.flatnonzero((index < 0) | (index >= self.dense_dim))
            errors.add(owner[outside], lambda k: f"index {index[outside[k]]} outside 0..{self.dense_dim - 1}")
            cell = owner * self.dense_dim + np.clip(index, 0, self.dense_dim - 1)
            dense = np.bincount(cell, weights=value, minlength=num * self.dense_dim)
            rows = Rows(num, {}, {"label": label, "dense": dense.reshape(num, self.dense_dim).astype(np.float32)})
        else:
            sparse = {}
            for f in self.fields or [LIBSVM_FIELD]:
                mine = field == f
                sparse[f"f{f}"] = jagged(extract_fid(index[mine], f), np.bincount(owner[mine], minlength=num))
            rows = Rows(num, sparse, {"label": label})
        rows, bad = errors.finish(rows, line_numbers)
        return rows, bad + [(first + int(i), "invalid UTF-8") for i in undecodable]
