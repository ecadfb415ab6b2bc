"""Monolith's protobuf data files: :class:`PBDataset` reads them, :func:`write_pb_file` writes them.

A file is a sequence of framed records (:mod:`monolith.data.pb_framing`), optionally compressed
(:mod:`monolith.data.pb_compression`), each an ``Example``, ``ExampleBatch`` or ``Instance`` turned
into examples by :class:`~monolith.data.pb_parser.PBParser` (what a batch holds, which records are
malformed). Kafka payloads in the same framing are parsed by
:func:`~monolith.data.pb_parser.parse_pb_bytes`. The names of those modules are importable from here too.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Unpack

from google.protobuf.message import Message

from monolith.data.base import PathOrPaths, Piece, Reader, Rows, skip_bad_record
from monolith.data.feature_list import FeatureList
from monolith.data.pb_compression import open_compressed, resolve_compression
from monolith.data.pb_framing import (
    DEFAULT_MAX_RECORD_BYTES,
    FrameError,
    Framing,
    FramingOptions,
    PBFileFormat,
    check_framing,
    frame_record,
)
from monolith.data.pb_messages import MESSAGES, variant_name
from monolith.data.pb_parser import (
    INVALID_LABEL,
    PBParser,
    parse_example_batch_bytes,
    parse_example_bytes,
    parse_instance_bytes,
    parse_pb_bytes,
)

__all__ = [
    "DEFAULT_MAX_RECORD_BYTES",
    "INVALID_LABEL",
    "Framing",
    "PBDataset",
    "PBParser",
    "check_framing",
    "frame_record",
    "parse_example_batch_bytes",
    "parse_example_bytes",
    "parse_instance_bytes",
    "parse_pb_bytes",
    "write_pb_file",
]


def write_pb_file(
    path: str | os.PathLike[str],
    messages: Iterable[Message],
    variant_type: str,
    *,
    compression: str | None = "infer",
    **framing: Unpack[FramingOptions],
) -> int:
    """Write ``messages`` of ``variant_type`` as a Monolith data file that :class:`PBDataset` reads.

    Args:
        compression: ``None``, ``"snappy"``, ``"gzip"`` or ``"infer"`` (from the file name).
        framing: the :class:`Framing` flags; the header words are written as zeros. As for
            :class:`PBDataset`, ``has_sort_id`` defaults to True, so that the defaults match.

    Returns:
        The number of records written.

    Raises:
        TypeError: a message is not of the ``variant_type`` message class.
    """
    path = os.fspath(path)
    cls = MESSAGES[variant_name(variant_type)]
    frame = Framing(**{"has_sort_id": True, **framing})
    count = 0
    with open_compressed(path, resolve_compression(path, compression), "w") as out:
        for message in messages:
            if not isinstance(message, cls):
                raise TypeError(
                    f"variant_type {variant_type!r} needs {cls.__name__} messages, got {type(message).__name__}"
                )
            out.write(frame_record(message.SerializeToString(), frame))
            count += 1
    return count


class PBDataset(Reader):
    """Reads Monolith's framed protobuf files (Monolith's ``PBDataset`` for files) into batches.

    Args:
        paths, batch_size, drop_last, strict, rank, world_size: see
            :class:`~monolith.data.base.Reader` (a file is not split among shares); bad records
            are located by byte offset instead of line, ``bad_records`` holds
            ``(file, byte offset, reason)``.
        variant_type, feature_list, sparse_features, dense_features, dense_dtypes, line_id_fields:
            see :class:`PBParser` (kept as ``self.parser``).
        lagrangex_header, has_sort_id, kafka_dump, kafka_dump_prefix: the framing
            (:mod:`monolith.data.pb_framing`); ``has_sort_id`` defaults to True as in Monolith's
            file dataset.
        compression: ``None``, ``"snappy"``, ``"gzip"`` or ``"infer"`` (from each file's name).
        block_records: frames decoded at a time.
        max_record_bytes: lengths above this are corrupt frames. With the framing and the
            compression, kept as ``self.file_format`` (a :class:`~monolith.data.pb_framing.PBFileFormat`).

    Raises:
        ValueError: (while reading) a file whose first records are framed otherwise than the
            framing options say, naming the file and the options to change (:func:`check_framing`).

    Example::

        ds = PBDataset("part-0.snappy", 256, sparse_features=["uid", "item"], has_sort_id=False)
        for batch in ds:
            batch["uid"], batch["label"], batch["req_time"]
    """

    def __init__(
        self,
        paths: PathOrPaths,
        batch_size: int,
        *,
        variant_type: str = "example",
        feature_list: FeatureList | str | os.PathLike[str] | None = None,
        sparse_features: Sequence[str | int] | None = None,
        dense_features: Mapping[str, int] | None = None,
        dense_dtypes: Mapping[str, Any] | None = None,
        line_id_fields: Sequence[str] | Mapping[str, int] = ("req_time",),
        lagrangex_header: bool = False,
        has_sort_id: bool = True,
        kafka_dump: bool = False,
        kafka_dump_prefix: bool = False,
        compression: str | None = "infer",
        drop_last: bool = False,
        strict: bool = False,
        rank: int = 0,
        world_size: int = 1,
        block_records: int = 1024,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    ) -> None:
        super().__init__(paths, batch_size, drop_last=drop_last, strict=strict, rank=rank, world_size=world_size)
        if block_records < 1:
            raise ValueError(f"block_records must be >= 1, got {block_records}")
        self.parser = PBParser(
            variant_type,
            feature_list=feature_list,
            sparse_features=sparse_features,
            dense_features=dense_features,
            dense_dtypes=dense_dtypes,
            line_id_fields=line_id_fields,
        )
        self.file_format = PBFileFormat(
            Framing(lagrangex_header=lagrangex_header, kafka_dump_prefix=kafka_dump_prefix, has_sort_id=has_sort_id,
                    kafka_dump=kafka_dump),
            compression,
            max_record_bytes,
        )
        self.block_records = block_records

    @property
    def num_unknown_features(self) -> int:
        """How many features this pass's examples lost for not being in the feature list."""
        return self.parser.num_unknown_features

    def _blocks(self) -> Iterator[Rows]:
        self.parser.num_unknown_features = 0  # counted per pass, as the bad records
        yield from super()._blocks()

    def _read_piece(self, piece: Piece) -> Iterator[tuple[Rows, list[tuple[int, str]]]]:
        chunk: list[tuple[int, bytes]] = []
        broken: list[tuple[int, str]] = []
        try:
            for record in self.file_format.records(piece.path, self.parser.variant_type):
                chunk.append(record)
                if len(chunk) == self.block_records:
                    yield self.parser.decode(chunk)
                    chunk = []
        except FrameError as e:
            broken.append((e.offset, e.reason))
        rows, bad = self.parser.decode(chunk)
        yield rows, bad + broken

    def _bad_record(self, path: str, offset: int, reason: str) -> None:
        # The base class's bookkeeping, worded with the byte offset where text readers have a line.
        skip_bad_record(self, path, offset, reason)
