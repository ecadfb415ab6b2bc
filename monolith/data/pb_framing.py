"""How records lie in Monolith's data files and Kafka payloads, and the check that a file is framed
as its reader's options say.

**Framing** (Monolith's ``BaseStreamReader`` in ``data_reader.h`` and ``BaseStreamWriter`` in
``data_writer.cc``). A file is a sequence of records; every integer is 8 bytes little-endian::

    [lagrangex header]                          if lagrangex_header (then none of the next three)
    [prefix]  (if it is 0: one more word)       if kafka_dump_prefix
    [sort id length][sort id bytes]             if has_sort_id (a non-zero prefix is the length)
    [kafka dump word]                           if kafka_dump
    [message length][serialized message]

The header words are skipped (Monolith keeps only the pb type and data source key of the lagrangex
header, which no parser reads). Monolith's writer fills them with zeros, as
:func:`~monolith.data.pb_dataset.write_pb_file` and :func:`frame_record` do. Byte offsets count
from the start of the (uncompressed) stream.

A wrong framing option does not always fail to parse: a file written without sort ids and read with
``has_sort_id=True`` (the default) takes every other record for a sort id, and header words read as
lengths make empty records. So :class:`~monolith.data.pb_dataset.PBDataset` first reads each file's first records
(:func:`check_framing`): if they are not whole messages under the options given (or a sort id is
one), but are under other options, it stops with an error naming the file and the options to change.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import astuple, dataclass, fields
from itertools import product
from typing import BinaryIO, TypedDict

from google.protobuf.message import DecodeError, Message
from google.protobuf.unknown_fields import UnknownFieldSet

from monolith.data.pb_compression import (
    STREAM_ERRORS,
    check_compression,
    open_compressed,
    read_up_to,
    resolve_compression,
)
from monolith.data.pb_messages import MESSAGES, variant_name

__all__ = [
    "DEFAULT_MAX_RECORD_BYTES",
    "FrameError",
    "Framing",
    "FramingOptions",
    "PBFileFormat",
    "check_framing",
    "frame_record",
    "read_frames",
]

#: A frame's lengths above this are taken as corruption rather than allocated.
DEFAULT_MAX_RECORD_BYTES = 1 << 30
# The framing of each file is checked on its first records: at most these many, in these many bytes.
_FRAMING_CHECK_RECORDS = 16
_FRAMING_CHECK_BYTES = 4 << 20


class FramingOptions(TypedDict, total=False):
    """The keyword form of :class:`Framing`."""

    lagrangex_header: bool
    kafka_dump_prefix: bool
    has_sort_id: bool
    kafka_dump: bool


@dataclass(frozen=True)
class Framing:
    """Which header words precede each record's length (see the module doc); Monolith's names."""

    lagrangex_header: bool = False
    kafka_dump_prefix: bool = False
    has_sort_id: bool = False
    kafka_dump: bool = False

    def header(self) -> bytes:
        """The header words as Monolith's writer puts them: all zero (an empty sort id)."""
        if self.lagrangex_header:
            return bytes(8)
        return bytes(16 * self.kafka_dump_prefix + 8 * self.has_sort_id + 8 * self.kafka_dump)


class FrameError(Exception):
    """The stream cannot be read on from ``offset`` (a truncated or corrupt frame)."""

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(reason)
        self.offset = offset
        self.reason = reason


def read_frames(stream: BinaryIO, framing: Framing, max_record_bytes: int) -> Iterator[tuple[int, bytes, bytes]]:
    """Yield (byte offset, sort id, serialized message) for each record of ``stream`` (which has
    ``peek``); the sort id is ``b""`` where the framing has none.

    Raises:
        FrameError: the stream ends inside a record, a length exceeds ``max_record_bytes``, or the
            decompression fails; the offset is that of the record.
    """
    pos = 0

    def read(n: int, start: int, what: str) -> bytes:
        nonlocal pos
        if n > max_record_bytes:
            raise FrameError(start, f"corrupt frame: {what} of {n} bytes exceeds max_record_bytes={max_record_bytes}")
        try:
            data = read_up_to(stream, n)
        except STREAM_ERRORS as e:
            raise FrameError(start, f"corrupt compressed data: {e}") from e
        pos += len(data)
        if len(data) < n:
            raise FrameError(start, f"truncated record: the {what} needs {n} bytes, the stream has {len(data)}")
        return data

    def word(start: int, what: str) -> int:
        return int.from_bytes(read(8, start, what), "little")

    while True:
        start = pos
        try:
            if not stream.peek(1):
                return
        except STREAM_ERRORS as e:
            raise FrameError(start, f"corrupt compressed data: {e}") from e
        sort_id = b""
        if framing.lagrangex_header:
            word(start, "lagrangex header")
        else:
            sort_id_length = 0
            if framing.kafka_dump_prefix:
                prefix = word(start, "kafka dump prefix")
                if prefix:
                    sort_id_length = prefix
                else:
                    word(start, "kafka dump prefix")
            if framing.has_sort_id:
                sort_id = read(sort_id_length or word(start, "sort id length"), start, "sort id")
            if framing.kafka_dump:
                word(start, "kafka dump header")
        yield start, sort_id, read(word(start, "message length"), start, "message")


def frame_record(payload: bytes, framing: Framing = Framing()) -> bytes:
    """One serialized message framed as Monolith's writer does (for files and Kafka payloads)."""
    return framing.header() + len(payload).to_bytes(8, "little") + payload


def _is_message(cls: type[Message], data: bytes) -> bool:
    """Whether ``data`` is a whole serialized ``cls``: it parses, sets a field, and has no field
    ``cls`` does not know (short strings such as sort ids often parse, into unknown fields only)."""
    try:
        message = cls.FromString(data)
    except DecodeError:
        return False
    return bool(message.ListFields()) and not len(UnknownFieldSet(message))


def _framing_problem(head: bytes, whole: bool, framing: Framing, cls: type[Message]) -> str | None:
    """Why the first records of a file, in its first bytes ``head`` (``whole``: all of the file), do
    not read as ``framing`` says: a record that is no whole ``cls``, a sort id that is one (the file
    has no sort ids: every other record would be lost), or a frame that does not parse; ``None`` if
    they do (a frame cut by the end of a partial ``head`` is no problem)."""
    count = 0
    try:
        records = read_frames(io.BufferedReader(io.BytesIO(head)), framing, DEFAULT_MAX_RECORD_BYTES)
        for offset, sort_id, message in records:
            if not _is_message(cls, message):
                return f"the record at byte offset {offset} is no {cls.__name__} ({len(message)} bytes)"
            if sort_id and _is_message(cls, sort_id):
                return f"the sort id at byte offset {offset} is a whole {cls.__name__}"
            count += 1
            if count == _FRAMING_CHECK_RECORDS:
                break
    except FrameError as e:
        if whole or not count:
            return f"{e.reason}, at byte offset {e.offset}"
    return None


_FRAMING_FLAGS = tuple(f.name for f in fields(Framing))


def check_framing(path: str, stream: BinaryIO, framing: Framing, variant_type: str) -> None:
    """Stop on a file whose framing is not the one given: the first records (read from the start of
    ``stream``, the file decompressed) do not read as ``framing`` says, and do read as another framing.

    A wrong framing does not always fail: a file without sort ids read with ``has_sort_id=True``
    takes every other record for a sort id, and a file with header words read without them finds
    empty records; each looks like data, so it is checked for up front. Where no framing reads the
    records, the file is damaged and its bad records are counted as it is read.

    Raises:
        ValueError: naming the file and the options to change.
    """
    try:
        head = read_up_to(stream, _FRAMING_CHECK_BYTES)
    except STREAM_ERRORS:
        return  # broken compression: a bad record, found as the file is read
    whole = len(head) < _FRAMING_CHECK_BYTES
    cls = MESSAGES[variant_name(variant_type)]
    problem = _framing_problem(head, whole, framing, cls)
    if problem is None:
        return
    changes = []
    for flags in product((False, True), repeat=len(_FRAMING_FLAGS)):
        other = Framing(*flags)
        # A lagrangex header replaces the other words: one candidate, with the given flags.
        if other == framing or (other.lagrangex_header and flags[1:] != astuple(framing)[1:]):
            continue
        if _framing_problem(head, whole, other, cls) is None:
            changes.append([f"{f}={getattr(other, f)}" for f in _FRAMING_FLAGS
                            if getattr(other, f) != getattr(framing, f)])
    if not changes:
        return
    fewest = min(len(c) for c in changes)
    options = " or ".join(", ".join(c) for c in changes if len(c) == fewest)
    raise ValueError(
        f"{path}: the records are not framed as the reader's options say ({problem}); the file reads as "
        f"framed with {options}: change that option"
    )


@dataclass(frozen=True)
class PBFileFormat:
    """How the records lie in a reader's files: the options that
    :class:`~monolith.data.pb_dataset.PBDataset` and :class:`~monolith.data.messages.PBMessageDataset`
    take alike, in one place.

    Args:
        framing: the header words before each record.
        compression: ``None``, ``"snappy"``, ``"gzip"`` or ``"infer"`` (from each file's name).
        max_record_bytes: lengths above this are corrupt frames.

    Raises:
        ValueError: an unknown compression.
    """

    framing: Framing
    compression: str | None = "infer"
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES

    def __post_init__(self) -> None:
        check_compression(self.compression)

    def records(self, path: str, variant_type: str) -> Iterator[tuple[int, bytes]]:
        """(byte offset, serialized message) of each record of the file ``path``, once
        :func:`check_framing` found its first records framed as :attr:`framing` says.

        Raises:
            ValueError: from :func:`check_framing`.
            FrameError: where a record breaks (see :func:`read_frames`).
        """
        compression = resolve_compression(path, self.compression)
        with open_compressed(path, compression, "r") as stream:
            check_framing(path, stream, self.framing, variant_type)
        with open_compressed(path, compression, "r") as stream:
            for offset, _, payload in read_frames(stream, self.framing, self.max_record_bytes):
                yield offset, payload
