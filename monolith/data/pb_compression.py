"""Compressed Monolith data files: Hadoop block snappy and gzip.

**Compression**: ``"snappy"`` is Hadoop's block snappy, which Monolith's ``ByteSnappyInputBuffer``
reads: blocks of ``[uncompressed length]`` followed by chunks ``[compressed length][raw snappy]``
until the block's length is reached, both lengths 4 bytes big-endian. ``"gzip"`` is a gzip stream.
``"infer"`` picks snappy for ``*.snappy`` (as Monolith does), gzip for ``*.gz``, none otherwise.
"""

from __future__ import annotations

import gzip
import io
import os
import zlib
from typing import Any, BinaryIO

import cramjam

from monolith.data.base import ChunkedReader

__all__ = [
    "COMPRESSIONS",
    "STREAM_ERRORS",
    "CorruptStream",
    "HadoopSnappyReader",
    "HadoopSnappyWriter",
    "check_compression",
    "open_compressed",
    "read_up_to",
    "resolve_compression",
]

#: The ``compression`` options of the readers and writers.
COMPRESSIONS = (None, "snappy", "gzip", "infer")
# Hadoop's default snappy buffer: the most uncompressed bytes the writer puts in one chunk.
_SNAPPY_CHUNK = 256 << 10
# Long reads go this many bytes at a time (see read_up_to).
_READ_PIECE = 1 << 20


class CorruptStream(Exception):
    """Compressed data that cannot be decompressed."""


def read_up_to(stream: BinaryIO, n: int) -> bytes:
    """``n`` bytes of ``stream``, or fewer where it ends.

    Read a piece at a time: a length word of a cut or corrupt file may claim far more than the
    file holds, and a buffered ``read(n)`` allocates all ``n`` bytes before reading any.
    """
    if n <= _READ_PIECE:
        return stream.read(n)
    pieces = []
    while n:
        piece = stream.read(min(n, _READ_PIECE))
        if not piece:
            break
        pieces.append(piece)
        n -= len(piece)
    return b"".join(pieces)


#: What reading a stream of broken compressed data raises.
STREAM_ERRORS = (CorruptStream, gzip.BadGzipFile, EOFError, zlib.error)


def _snappy_length(chunk: bytes) -> tuple[int, int] | None:
    """(uncompressed length, header bytes) of a raw snappy chunk: its leading little-endian base-128
    varint of at most 5 bytes (a 32-bit length); ``None`` if it has no such header."""
    length = 0
    for i, byte in enumerate(chunk[:5]):
        length |= (byte & 0x7F) << (7 * i)
        if byte < 0x80:
            return length, i + 1
    return None


class HadoopSnappyReader(ChunkedReader):
    """Decompresses Hadoop block snappy (see the module doc) read from ``raw``."""

    def __init__(self, raw: BinaryIO) -> None:
        super().__init__(raw)
        self._block_left = 0
        self._raw_at = 0  # bytes of ``raw`` read, for the errors

    def _next_chunk(self, size: int) -> bytes:
        while True:
            out = self._inflate()
            if out is None or out:
                return out or b""

    def _be32(self, what: str, eof_ok: bool = False) -> int | None:
        data = self._raw.read(4)
        self._raw_at += len(data)
        if not data and eof_ok:
            return None
        if len(data) < 4:
            raise CorruptStream(f"snappy stream ends inside a {what}")
        return int.from_bytes(data, "big")

    def _inflate(self) -> bytes | None:
        """The next chunk decompressed (``b""`` for an empty block); None at the end of the stream."""
        if not self._block_left:
            block = self._be32("block length", eof_ok=True)
            if block is None:
                return None
            self._block_left = block
            if not block:
                return b""
        chunk_at = self._raw_at
        size = self._be32("chunk length")
        # Snappy's worst case expansion; anything larger cannot be a chunk of this block.
        if size > 32 + self._block_left + self._block_left // 6:
            raise CorruptStream(f"snappy chunk length {size} exceeds its block's {self._block_left} bytes")
        chunk = read_up_to(self._raw, size)
        self._raw_at += len(chunk)
        if len(chunk) < size:
            raise CorruptStream("snappy stream ends inside a chunk")
        # The decompressor allocates the length the chunk claims before it finds the data short, so
        # the claim is checked first: against the block, and against the most that ``size`` bytes
        # can hold (a 3-byte copy element makes at most 64 bytes).
        header = _snappy_length(chunk)
        if header is None:
            raise CorruptStream(f"snappy chunk at byte {chunk_at} of the file has no length header")
        length, header_bytes = header
        if length > min(self._block_left, (size - header_bytes) * 64 // 3):
            raise CorruptStream(
                f"snappy chunk at byte {chunk_at} of the file claims {length} uncompressed bytes; its "
                f"{size} bytes hold at most {(size - header_bytes) * 64 // 3} and its block has {self._block_left} left"
            )
        try:
            out = bytes(cramjam.snappy.decompress_raw(chunk))
        except cramjam.DecompressionError as e:
            raise CorruptStream(f"bad snappy chunk: {e}") from e
        self._block_left -= len(out)
        return out


class HadoopSnappyWriter(io.RawIOBase):
    """Writes each ``write`` as one Hadoop snappy block of chunks of at most ``_SNAPPY_CHUNK`` bytes."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        data = bytes(data)
        self._raw.write(len(data).to_bytes(4, "big"))
        for at in range(0, len(data), _SNAPPY_CHUNK):
            chunk = bytes(cramjam.snappy.compress_raw(data[at : at + _SNAPPY_CHUNK]))
            self._raw.write(len(chunk).to_bytes(4, "big") + chunk)
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


def check_compression(compression: str | None) -> str | None:
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")
    return compression


def resolve_compression(path: str, compression: str | None) -> str | None:
    """The compression of ``path``: ``compression``, or the one its name says for ``"infer"``."""
    if check_compression(compression) == "infer":
        return {".snappy": "snappy", ".gz": "gzip"}.get(os.path.splitext(path)[1])
    return compression


def open_compressed(path: str, compression: str | None, mode: str) -> BinaryIO:
    """``path`` opened for binary ``mode`` ("r"/"w") through ``compression`` (already resolved)."""
    if compression == "gzip":
        return gzip.open(path, mode + "b")
    if compression == "snappy":
        raw = open(path, mode + "b")  # closed with the wrapper
        if mode == "r":
            return io.BufferedReader(HadoopSnappyReader(raw))
        return io.BufferedWriter(HadoopSnappyWriter(raw), buffer_size=4 * _SNAPPY_CHUNK)
    return open(path, mode + "b")
