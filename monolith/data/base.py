"""The reader contract every data source follows, and the machinery the readers share.

A reader is an iterable of :class:`~monolith.sparse.Batch`:

* ``batch.sparse`` -- a :class:`~monolith.sparse.KeyedJaggedTensor` of int64 FIDs, one key per feature;
* ``batch.dense["label"]`` -- float32 ``[batch]``; other dense entries are float32 ``[batch]`` or
  ``[batch, d]``, and ``req_time`` (where a source has one) is int64 ``[batch]``.

Every batch has exactly ``batch_size`` examples, except the last one of a pass, which is smaller (or
dropped with ``drop_last=True``). Batches run across file boundaries.

A malformed record (line of a text file, row of a Parquet file) is skipped: it is logged once as a
warning with its file and 1-based line (row) number, kept in ``reader.bad_records`` (the first
:data:`MAX_BAD_RECORDS_KEPT` of a pass) and counted in ``reader.num_bad_records``. Both are reset at
the start of each pass. With ``strict=True`` the first malformed record raises ``ValueError`` instead.
Where a file cannot be read on (corrupt or cut compressed data, a damaged Parquet file), the rest of
it counts as one malformed record, at the first line (row) not read.

Readers parse a file block by block into :class:`Rows` (numpy arrays for many examples) and only then
cut batches, so the per-example work happens in numpy/pyarrow, not in Python loops.

**Shares.** A reader built with ``rank`` and ``world_size`` reads only its share of the files: the
files are cut into pieces (whole files; Parquet row groups and byte ranges of uncompressed text
where the reader can split them) and each share is a run of consecutive pieces of about equal
size (:func:`share_of`). A reader is a ``torch.utils.data.IterableDataset``: read by
``DataLoader(reader, batch_size=None, num_workers=k)``, each worker reads its own part of the
rank's share, and the bad-record counters are those of each worker's process.
"""

from __future__ import annotations

import abc
import io
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from monolith.data.dataset import Dataset
from monolith.sparse import Batch, KeyedJaggedTensor

__all__ = ["Reader", "Rows", "RowErrors", "rebatch", "skip_bad_record", "MAX_BAD_RECORDS_KEPT", "PathOrPaths", "Piece",
           "check_share", "share_of"]

logger = logging.getLogger("monolith.data")

#: How many malformed records a reader keeps (and logs) per pass; the rest are only counted.
MAX_BAD_RECORDS_KEPT = 1000

PathOrPaths = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]

#: A jagged column as numpy: (values ``[total]``, offsets ``[num + 1]`` with a leading 0).
Jagged = tuple[np.ndarray, np.ndarray]


class ChunkedReader(io.RawIOBase):
    """A raw binary stream over bytes made a chunk at a time by :meth:`_next_chunk` (decompressed,
    cut at whole lines, ...) from the underlying stream ``raw``, which it closes."""

    def __init__(self, raw: Any) -> None:
        super().__init__()
        self._raw = raw
        self._chunk = b""  # made and not delivered yet, from ``_at`` on
        self._at = 0

    def _next_chunk(self, size: int) -> bytes:
        """The next chunk (``size``: what the reader asks for, a hint); ``b""`` at the end."""
        raise NotImplementedError

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()

    def readinto(self, buffer: Any) -> int:
        if self._at == len(self._chunk):
            self._chunk, self._at = self._next_chunk(max(len(buffer), 1)), 0
        n = min(len(buffer), len(self._chunk) - self._at)
        buffer[:n] = self._chunk[self._at : self._at + n]
        self._at += n
        return n


def jagged(values: np.ndarray, lengths: np.ndarray) -> Jagged:
    """Pack ``values`` ``[total]`` split by ``lengths`` ``[num]`` as (values, offsets ``[num + 1]``)."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return np.asarray(values, dtype=np.int64), offsets


@dataclass
class Rows:
    """A block of ``num`` examples held as numpy arrays, before it is cut into batches.

    Attributes:
        num: number of examples.
        sparse: feature name -> (int64 FIDs ``[total]``, int64 offsets ``[num + 1]``), in key order.
            Offsets rather than lengths, so slicing many batches out of one block stays O(batch).
        dense: name -> array with leading dimension ``num``.
    """

    num: int
    sparse: dict[str, Jagged]
    dense: dict[str, np.ndarray]

    @classmethod
    def empty(cls) -> Rows:
        return cls(0, {}, {})

    def slice(self, start: int, stop: int) -> Rows:
        """Examples ``start:stop`` (views, no copies)."""
        sparse = {}
        for name, (values, offsets) in self.sparse.items():
            sparse[name] = values[offsets[start] : offsets[stop]], offsets[start : stop + 1] - offsets[start]
        return Rows(stop - start, sparse, {k: v[start:stop] for k, v in self.dense.items()})

    def select(self, keep: np.ndarray) -> Rows:
        """The examples where the bool mask ``keep`` ``[num]`` is true."""
        sparse = {}
        for name, (values, offsets) in self.sparse.items():
            lengths = np.diff(offsets)
            sparse[name] = jagged(values[np.repeat(keep, lengths)], lengths[keep])
        return Rows(int(keep.sum()), sparse, {k: v[keep] for k, v in self.dense.items()})

    @staticmethod
    def concat(blocks: Sequence[Rows]) -> Rows:
        """Stack blocks with the same features, example after example."""
        if len(blocks) == 1:
            return blocks[0]
        sparse = {}
        for name in blocks[0].sparse:
            parts = [b.sparse[name] for b in blocks]
            lengths = np.concatenate([np.diff(offsets) for _, offsets in parts])
            sparse[name] = jagged(np.concatenate([values for values, _ in parts]), lengths)
        dense = {k: np.concatenate([b.dense[k] for b in blocks]) for k in blocks[0].dense}
        return Rows(sum(b.num for b in blocks), sparse, dense)

    def to_batch(self) -> Batch:
        """The block as one :class:`Batch` (key-major KJT lengths, as TorchRec lays them out)."""
        keys = list(self.sparse)
        if keys:
            values = np.concatenate([v for v, _ in self.sparse.values()])
            lengths = np.concatenate([np.diff(o) for _, o in self.sparse.values()])
        else:
            values = lengths = np.empty(0, dtype=np.int64)
        kjt = KeyedJaggedTensor(keys, torch.from_numpy(values), torch.from_numpy(lengths), stride=self.num)
        # Arrays backed by pyarrow buffers are read-only; torch wants writable memory.
        dense = {k: torch.from_numpy(np.require(v, requirements=("C", "W"))) for k, v in self.dense.items()}
        return Batch(kjt, dense)


class RowErrors:
    """The first problem found in each malformed example of a block of ``num`` examples."""

    def __init__(self, num: int) -> None:
        self.num = num
        self._reasons: dict[int, str] = {}

    def add(self, rows: np.ndarray, reason: Callable[[int], str]) -> None:
        """Mark examples ``rows`` bad; ``reason(k)`` describes the problem of ``rows[k]``.

        Only the first problem of an example is kept, and ``reason`` is called only for those.
        """
        for k, row in enumerate(np.asarray(rows).tolist()):
            if row not in self._reasons:
                self._reasons[row] = reason(k)

    def keep(self) -> np.ndarray:
        """Bool mask ``[num]`` of the good examples."""
        mask = np.ones(self.num, dtype=bool)
        mask[list(self._reasons)] = False
        return mask

    def finish(self, rows: Rows, line_numbers: np.ndarray) -> tuple[Rows, list[tuple[int, str]]]:
        """Drop the bad examples of ``rows``; return them as (line number, reason) pairs too."""
        if not self._reasons:
            return rows, []
        bad = [(int(line_numbers[r]), reason) for r, reason in self._reasons.items()]
        return rows.select(self.keep()), bad


def rebatch(blocks: Iterable[Rows], batch_size: int, drop_last: bool) -> Iterator[Batch]:
    """Cut a stream of blocks into batches of exactly ``batch_size`` (the last one may be short)."""
    pending: list[Rows] = []
    count = 0
    for block in blocks:
        if not block.num:
            continue
        pending.append(block)
        count += block.num
        if count < batch_size:
            continue
        merged = Rows.concat(pending)
        full = count - count % batch_size
        for start in range(0, full, batch_size):
            yield merged.slice(start, start + batch_size).to_batch()
        pending = [merged.slice(full, count)] if full < count else []
        count -= full
    if count and not drop_last:
        yield Rows.concat(pending).to_batch()


def _existing_files(paths: PathOrPaths) -> list[str]:
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files = [os.fspath(p) for p in paths]
    if not files:
        raise ValueError("a reader needs at least one file")
    for path in files:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"data file not found: {path}")
    return files


def skip_bad_record(source: Any, path: str, offset: int, reason: str) -> None:
    """A record at byte ``offset`` of ``path`` is bad: raise ``ValueError`` if ``source.strict``, else
    count it in ``source.num_bad_records`` and keep (and log) it in ``source.bad_records`` while
    fewer than :data:`MAX_BAD_RECORDS_KEPT` are kept: the bookkeeping of the sources whose records
    have byte offsets rather than lines."""
    where = f"{path}, byte offset {offset}"
    if source.strict:
        raise ValueError(f"{where}: malformed record: {reason}")
    source.num_bad_records += 1
    if len(source.bad_records) < MAX_BAD_RECORDS_KEPT:
        source.bad_records.append((path, offset, reason))
        logger.warning("skipping malformed record at %s: %s", where, reason)



@dataclass(frozen=True)
class Piece:
    """A part of a file that is read as a whole by one share of a reader.

    Attributes:
        path: the file.
        span: ``(start, stop)`` in the reader's own units (Parquet row groups, bytes of a text
            file), or ``None`` for the whole file.
        size: what the shares are balanced by (rows, bytes).
    """

    path: str
    span: tuple[int, int] | None
    size: int


def check_share(rank: int, world_size: int) -> None:
    """Raise ``ValueError`` unless ``rank`` is one of ``world_size`` shares (``0 <= rank < world_size``)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in 0..world_size-1, got rank {rank} of world_size {world_size}")


def share_of(pieces: Sequence[Piece], share: int, shares: int) -> list[Piece]:
    """The pieces of share ``share`` of ``shares``: a run of consecutive pieces of about
    ``1 / shares`` of the total size (each piece goes to the share its middle falls in), adjacent
    spans of one file joined into one piece.

    Example::

        spans (0, 1), (1, 2), (2, 3), (3, 4) of one file, sizes 4 each, in 2 shares
        -> share 0: span (0, 2); share 1: span (2, 4)
    """
    total = sum(piece.size for piece in pieces)
    mine: list[Piece] = []
    before = 0
    for i, piece in enumerate(pieces):
        middle = max(0, 2 * before + piece.size - 1)  # twice the piece's middle, a tie going to the earlier share
        owner = min(shares - 1, middle * shares // (2 * total)) if total else i % shares
        before += piece.size
        if owner != share:
            continue
        last = mine[-1] if mine else None
        if last and last.path == piece.path and last.span and piece.span and last.span[1] == piece.span[0]:
            mine[-1] = Piece(piece.path, (last.span[0], piece.span[1]), last.size + piece.size)
        else:
            mine.append(piece)
    return mine


class Reader(Dataset, IterableDataset):
    """Base of the file readers: an iterable of :class:`Batch` over ``paths`` in order, a
    :class:`~monolith.data.dataset.Dataset` (``map``, ``shuffle``, ``take``, ``prefetch`` ... chain) and
    a torch ``IterableDataset`` (DataLoader workers each read their part).

    Args:
        paths: one file or a sequence of files, read in the given order.
        batch_size: examples per batch.
        drop_last: drop the last, short batch of a pass.
        strict: raise ``ValueError`` on the first malformed record instead of skipping it.
        rank, world_size: read only share ``rank`` of ``world_size`` (see the module doc), e.g.
            ``rank=monolith.distributed.get_rank(), world_size=get_world_size()`` in an
            ``input_fn`` run under torchrun. Shares may differ by a piece; the Estimator trains
            until every rank's share is read (ranks whose share ended join with empty batches).

    Attributes:
        paths: the files, as strings.
        bad_records: ``(file, line number, reason)`` of the skipped records of the current pass,
            the first :data:`MAX_BAD_RECORDS_KEPT` of them.
        num_bad_records: how many records the current pass skipped in all.

    Raises:
        FileNotFoundError: a path is not a file (raised at construction, naming the path).
        ValueError: ``batch_size < 1``, no paths, or a rank outside ``0..world_size-1``.
    """

    def __init__(self, paths: PathOrPaths, batch_size: int, *, drop_last: bool = False, strict: bool = False,
                 rank: int = 0, world_size: int = 1) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        check_share(rank, world_size)
        self.rank, self.world_size = rank, world_size
        self.paths = _existing_files(paths)
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.strict = strict
        self.bad_records: list[tuple[str, int, str]] = []
        self.num_bad_records = 0

    def __iter__(self) -> Iterator[Batch]:
        self.bad_records, self.num_bad_records = [], 0
        yield from rebatch(self._blocks(), self.batch_size, self.drop_last)
        if self.num_bad_records > len(self.bad_records):
            logger.warning(
                "%s skipped %d malformed records in all (only the first %d were logged)",
                type(self).__name__,
                self.num_bad_records,
                len(self.bad_records),
            )

    def _blocks(self) -> Iterator[Rows]:
        for piece in self._share():
            for rows, bad in self._read_piece(piece):
                for line_no, reason in sorted(bad):
                    self._bad_record(piece.path, line_no, reason)
                yield rows

    def _share(self) -> list[Piece]:
        """The pieces this iterator reads: the rank's share, shared again among DataLoader workers."""
        worker = get_worker_info()
        share, shares = self.rank, self.world_size
        if worker is not None:
            share, shares = share * worker.num_workers + worker.id, shares * worker.num_workers
        if shares == 1:
            return [Piece(path, None, 0) for path in self.paths]
        pieces = [piece for path in self.paths for piece in self._pieces(path, shares)]
        mine = share_of(pieces, share, shares)
        if not mine:
            logger.warning("%s: share %d of %d is empty: its %d file(s) make %d piece(s); give at least %d files",
                           type(self).__name__, share, shares, len(self.paths), len(pieces), shares)
        return mine

    def _pieces(self, path: str, shares: int) -> list[Piece]:
        """The pieces of a file to be shared among ``shares`` readers: the whole file, unless the
        reader can split it."""
        return [Piece(path, None, os.path.getsize(path))]

    @abc.abstractmethod
    def _read_piece(self, piece: Piece) -> Iterator[tuple[Rows, list[tuple[int, str]]]]:
        """Yield blocks of the piece's good examples, each with the (line number, reason) of the
        malformed records found while parsing it (numbered in the whole file)."""

    def _bad_record(self, path: str, line_no: int, reason: str) -> None:
        if self.strict:
            raise ValueError(f"{path}, line {line_no}: malformed record: {reason}")
        self.num_bad_records += 1
        if len(self.bad_records) < MAX_BAD_RECORDS_KEPT:
            self.bad_records.append((path, line_no, reason))
            logger.warning("skipping malformed record at %s, line %d: %s", path, line_no, reason)
