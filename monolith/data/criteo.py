"""Criteo display-advertising logs (Kaggle / Terabyte TSV): :class:`CriteoReader`."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from monolith.data.base import PathOrPaths, Piece, Reader, RowErrors, Rows, jagged
from monolith.data.columns import parse_column, parse_hex
from monolith.data.text import DEFAULT_BLOCK_SIZE, read_delimited, text_pieces
from monolith.fid import extract_fid

__all__ = ["CriteoReader", "CRITEO_DENSE", "CRITEO_SPARSE"]

NUM_DENSE = 13
NUM_SPARSE = 26
#: Names of the integer features, in file order.
CRITEO_DENSE = [f"I{i}" for i in range(1, NUM_DENSE + 1)]
#: Names of the categorical features, in file order; ``C{i}`` has slot ``i``.
CRITEO_SPARSE = [f"C{i}" for i in range(1, NUM_SPARSE + 1)]
_COLUMNS = ["label", *CRITEO_DENSE, *CRITEO_SPARSE]


class CriteoReader(Reader):
    """Reads Criteo TSV files (optionally .gz): ``label``, 13 integer features, 26 hex categoricals.

    Per line, the batch gets:

    * ``Batch.dense["label"]`` float32 ``[batch]``;
    * ``Batch.dense["dense"]`` float32 ``[batch, 13]``: ``log(1 + x)`` of each integer feature
      ``x``, with empty and negative values read as 0 -- DLRM's transform (its preprocessing
      clamps negatives to 0 before ``log(x + 1)``);
    * sparse ``C1..C26`` with slots ``1..26``: one FID ``extract_fid(int(hex, 16), slot)`` per
      non-empty categorical (hex strings of up to 16 digits), none for an empty one.

    A line is malformed when it has other than 40 tab-separated fields, an empty, non-numeric or
    non-finite label (so a line of 39 tabs is), a non-integer integer feature, a categorical that
    is not hex, or invalid UTF-8. Empty lines are skipped; a corrupt or cut ``.gz`` ends the file's
    reading, as one malformed record.

    Args:
        paths, batch_size, drop_last, strict, rank, world_size: see :class:`~monolith.data.base.Reader`.
        block_size: bytes parsed at a time.
    """

    def __init__(
        self,
        paths: PathOrPaths,
        batch_size: int,
        *,
        drop_last: bool = False,
        strict: bool = False,
        rank: int = 0,
        world_size: int = 1,
        block_size: int = DEFAULT_BLOCK_SIZE,
    ) -> None:
        super().__init__(paths, batch_size, drop_last=drop_last, strict=strict, rank=rank, world_size=world_size)
        self.block_size = block_size

    def _convert(self, batch: pa.RecordBatch, lines: np.ndarray) -> tuple[Rows, list[tuple[int, str]]]:
        num = batch.num_rows
        errors = RowErrors(num)
        label = parse_column(batch.column("label"), pa.float32(), "column 'label'", errors, required=True)
        counts = np.empty((num, NUM_DENSE), dtype=np.int64)
        for j, name in enumerate(CRITEO_DENSE):
            counts[:, j] = parse_column(
                batch.column(name), pa.int64(), f"column {name!r}", errors, required=False, what="an integer"
            )
        dense = np.log1p(np.maximum(counts, 0)).astype(np.float32)
        sparse = {}
        for slot, name in enumerate(CRITEO_SPARSE, start=1):
            column = batch.column(name)
            present = pc.not_equal(column, "")
            values, bad = parse_hex(column.filter(present))
            present_np = present.to_numpy(zero_copy_only=False)
            bad_rows = np.flatnonzero(present_np)[bad]
            # ``add`` calls the reason at once, so the loop variables are current.
            errors.add(
                bad_rows, lambda k: f"column {name!r}: expected 1-16 hex digits, got {column[bad_rows[k]].as_py()!r}"
            )
            sparse[name] = jagged(extract_fid(values, slot), present_np.astype(np.int64))
        return errors.finish(Rows(num, sparse, {"label": label, "dense": dense}), lines)

    def _pieces(self, path: str, shares: int) -> list[Piece]:
        return text_pieces(path, shares)

    def _read_piece(self, piece: Piece) -> Iterator[tuple[Rows, list[tuple[int, str]]]]:
        return read_delimited(
            piece.path,
            _COLUMNS,
            self._convert,
            delimiter="\t",
            quote_char=False,
            column_names=_COLUMNS,
            block_size=self.block_size,
            span=piece.span,
        )
