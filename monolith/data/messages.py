"""Monolith's framed protobuf files as a dataset of messages, for the transforms of
:mod:`monolith.data.feature_utils` and the parse functions of :mod:`monolith.data.parsing`.

:class:`~monolith.data.pb_dataset.PBDataset` reads such files straight into batches;
:class:`PBMessageDataset` reads the same files (same framing and compression options, the same
reader) one ``Example`` / ``Instance`` / ``ExampleBatch`` at a time, as Monolith's ``PBDataset``
yields variants, so they can be filtered and changed before they are batched and parsed::

    PBMessageDataset(files, "example", has_sort_id=False).filter(...).map(...).batch(256).map(parse_examples)
"""

from __future__ import annotations

from collections.abc import Iterator

from google.protobuf.message import DecodeError, Message

from monolith.data.base import PathOrPaths, _existing_files, skip_bad_record
from monolith.data.dataset import Dataset
from monolith.data.pb_framing import DEFAULT_MAX_RECORD_BYTES, FrameError, Framing, PBFileFormat
from monolith.data.pb_messages import MESSAGES, variant_name

__all__ = ["PBMessageDataset"]


class PBMessageDataset(Dataset):
    """The messages of Monolith's framed protobuf files, in order.

    Args:
        paths: one file or a sequence of files.
        variant_type: ``"example"``, ``"example_batch"`` or ``"instance"``: the message class.
        lagrangex_header, has_sort_id, kafka_dump, kafka_dump_prefix, compression, max_record_bytes:
            as for :class:`~monolith.data.pb_dataset.PBDataset` (``has_sort_id`` defaults to True),
            kept as ``self.file_format``.
        strict: raise ``ValueError`` on the first bad record instead of skipping it.

    Attributes:
        bad_records: ``(file, byte offset, reason)`` of this pass's bad records (the first
            :data:`~monolith.data.base.MAX_BAD_RECORDS_KEPT`); ``num_bad_records``: how many in all.
            A message that does not parse is skipped; a cut or corrupt frame ends its file.
    """

    def __init__(
        self,
        paths: PathOrPaths,
        variant_type: str = "example",
        *,
        lagrangex_header: bool = False,
        has_sort_id: bool = True,
        kafka_dump: bool = False,
        kafka_dump_prefix: bool = False,
        compression: str | None = "infer",
        strict: bool = False,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    ) -> None:
        self.paths = _existing_files(paths)
        self.variant_type = variant_name(variant_type)
        self.message_class: type[Message] = MESSAGES[self.variant_type]
        self.file_format = PBFileFormat(
            Framing(lagrangex_header=lagrangex_header, kafka_dump_prefix=kafka_dump_prefix, has_sort_id=has_sort_id,
                    kafka_dump=kafka_dump),
            compression,
            max_record_bytes,
        )
        self.strict = strict
        self.bad_records: list[tuple[str, int, str]] = []
        self.num_bad_records = 0

    def __iter__(self) -> Iterator[Message]:
        self.bad_records, self.num_bad_records = [], 0
        for path in self.paths:
            try:
                for offset, payload in self.file_format.records(path, self.variant_type):
                    try:
                        yield self.message_class.FromString(payload)
                    except DecodeError as e:
                        skip_bad_record(self, path, offset, f"cannot parse the {self.message_class.__name__}: {e}")
            except FrameError as e:
                skip_bad_record(self, path, e.offset, e.reason)
