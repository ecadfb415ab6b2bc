"""TFRecord files of ``tf.train.Example`` without TensorFlow, ``tf.io.parse_example`` of
fixed-length features, and Monolith's ``tf_example_to_example``.

**Framing** (TensorFlow's ``record_writer.cc``). A file is a sequence of records::

    uint64 length            (little-endian)
    uint32 masked_crc32c(length bytes)
    byte   data[length]
    uint32 masked_crc32c(data)

where ``masked_crc32c(b) = ((c >> 15) | (c << 17)) + 0xa282ead8`` (mod 2**32) of ``c`` the CRC-32C
(Castagnoli) of ``b``. ``compression_type="GZIP"`` files are a gzip stream of that; ``"ZLIB"`` a zlib
stream.

**Bad records** (the :class:`~monolith.data.base.Reader` contract, a record located by its byte
offset): a record whose data fails its CRC is skipped and counted, and reading goes on (its length
was checked); a length that fails its CRC, a file cut inside a record, or broken compression ends
the file's reading, as one bad record. ``strict=True`` raises ``ValueError`` instead.

The messages are :mod:`monolith.data.proto.tf_example_pb2` (TensorFlow's, package ``tensorflow``).
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import numba
import numpy as np
import torch

from monolith.data.base import PathOrPaths, _existing_files, logger, skip_bad_record
from monolith.data.dataset import Dataset
from monolith.data.proto import tf_example_pb2
from monolith.data.proto.example_pb2 import Example
from monolith.fid import MAX_SLOT_V2, make_fid

__all__ = ["FixedLenFeature", "TFRecordDataset", "crc32c", "frame_tfrecord", "masked_crc32c", "parse_example",
           "tf_example_to_example", "write_tfrecord"]

_MASK_DELTA = 0xA282EAD8
_COMPRESSIONS = (None, "", "GZIP", "ZLIB")


def _crc32c_table() -> np.ndarray:
    # Reflected CRC-32C, polynomial 0x1EDC6F41 (reversed 0x82F63B78), byte at a time.
    table = np.zeros(256, dtype=np.uint32)
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table[n] = c
    return table


_TABLE = _crc32c_table()


@numba.njit(cache=True, nogil=True)
def _crc32c_update(table: np.ndarray, data: np.ndarray) -> np.uint32:
    crc = np.uint32(0xFFFFFFFF)
    for byte in data:
        crc = table[(crc ^ byte) & np.uint32(0xFF)] ^ (crc >> np.uint32(8))
    return crc ^ np.uint32(0xFFFFFFFF)


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of ``data``, e.g. ``crc32c(b"123456789") == 0xE3069283``."""
    return int(_crc32c_update(_TABLE, np.frombuffer(data, dtype=np.uint8)))


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC-32C of ``data`` (see the module doc)."""
    c = crc32c(data)
    return ((((c >> 15) | (c << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


def frame_tfrecord(data: bytes) -> bytes:
    """One record framed as TensorFlow's ``TFRecordWriter`` writes it."""
    length = len(data).to_bytes(8, "little")
    return b"".join(
        (length, masked_crc32c(length).to_bytes(4, "little"), data, masked_crc32c(data).to_bytes(4, "little"))
    )


def _check_compression(compression_type: str | None) -> str | None:
    if compression_type not in _COMPRESSIONS:
        raise ValueError(f"compression_type must be one of {_COMPRESSIONS}, got {compression_type!r}")
    return compression_type or None


def write_tfrecord(
    path: str | os.PathLike[str], records: Iterable[bytes], compression_type: str | None = None
) -> int:
    """Write serialized ``records`` as a TFRecord file (``tf.io.TFRecordWriter``); returns their number."""
    compression_type = _check_compression(compression_type)
    framed = [frame_tfrecord(bytes(r)) for r in records]
    body = b"".join(framed)
    if compression_type == "GZIP":
        body = gzip.compress(body)
    elif compression_type == "ZLIB":
        body = zlib.compress(body)
    with open(path, "wb") as out:
        out.write(body)
    return len(framed)


class _FileEnd(Exception):
    """The file cannot be read on from ``offset``."""

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(reason)
        self.offset = offset
        self.reason = reason


def _records(data: bytes, verify_crc: bool) -> Iterator[tuple[int, bytes | None, str]]:
    """(offset, record or ``None`` for a bad one, reason) of each record of ``data``.

    Raises:
        _FileEnd: a cut record or a length that fails its CRC.
    """
    at = 0
    while at < len(data):
        if at + 12 > len(data):
            raise _FileEnd(at, f"truncated record: {len(data) - at} bytes left, a header needs 12")
        length_bytes = data[at : at + 8]
        if verify_crc and masked_crc32c(length_bytes) != int.from_bytes(data[at + 8 : at + 12], "little"):
            raise _FileEnd(at, "corrupt record: the length fails its CRC-32C")
        length = int.from_bytes(length_bytes, "little")
        end = at + 12 + length + 4
        if end > len(data):
            raise _FileEnd(at, f"truncated record: it needs {length + 16} bytes, the file has {len(data) - at}")
        record = data[at + 12 : at + 12 + length]
        if verify_crc and masked_crc32c(record) != int.from_bytes(data[end - 4 : end], "little"):
            yield at, None, "corrupt record: the data fails its CRC-32C"
        else:
            yield at, record, ""
        at = end


class TFRecordDataset(Dataset):
    """The serialized records of TFRecord files, in order (``tf.data.TFRecordDataset``).

    Args:
        filenames: one file or a sequence of files.
        compression_type: ``None`` / ``""``, ``"GZIP"`` or ``"ZLIB"``.
        verify_crc: check both CRCs of each record.
        strict: raise ``ValueError`` on the first bad record instead of skipping it.

    Attributes:
        bad_records: ``(file, byte offset, reason)`` of this pass's bad records, the first
            :data:`~monolith.data.base.MAX_BAD_RECORDS_KEPT`.
        num_bad_records: how many this pass skipped in all.

    Example::

        TFRecordDataset("train.tfrecord").map(lambda r: tf_example_to_example(r, {"uid": 1}, [], "label"))

    A file is read whole into memory before its records are cut (TFRecord shards are typically
    tens to hundreds of MB).
    """

    def __init__(
        self,
        filenames: PathOrPaths,
        compression_type: str | None = None,
        *,
        verify_crc: bool = True,
        strict: bool = False,
    ) -> None:
        self.paths = _existing_files(filenames)
        self.compression_type = _check_compression(compression_type)
        self.verify_crc = verify_crc
        self.strict = strict
        self.bad_records: list[tuple[str, int, str]] = []
        self.num_bad_records = 0

    def _read(self, path: str) -> bytes:
        with open(path, "rb") as f:
            raw = f.read()
        if self.compression_type == "GZIP":
            return gzip.decompress(raw)
        if self.compression_type == "ZLIB":
            return zlib.decompress(raw)
        return raw

    def __iter__(self) -> Iterator[bytes]:
        self.bad_records, self.num_bad_records = [], 0
        for path in self.paths:
            try:
                data = self._read(path)
            except (OSError, EOFError, zlib.error) as e:
                skip_bad_record(self, path, 0, f"corrupt compressed data: {e}")
                continue
            try:
                for offset, record, reason in _records(data, self.verify_crc):
                    if record is None:
                        skip_bad_record(self, path, offset, reason)
                    else:
                        yield record
            except _FileEnd as e:
                skip_bad_record(self, path, e.offset, e.reason)


class FixedLenFeature(NamedTuple):
    """``tf.io.FixedLenFeature``: a feature with ``prod(shape)`` values in every example, int64 or
    float32 (``dtype``), ``default_value`` where an example lacks it (None: it is an error)."""

    shape: Sequence[int]
    dtype: torch.dtype
    default_value: Any = None


_KINDS = {torch.int64: "int64_list", torch.float32: "float_list"}


def parse_example(serialized: bytes | Iterable[bytes | tf_example_pb2.Example],
                  features: Mapping[str, FixedLenFeature]) -> dict[str, torch.Tensor]:
    """``tf.io.parse_example`` of a batch of serialized ``tf.train.Example`` s (or one): ``{name:
    tensor [batch, *shape]}`` for the ``FixedLenFeature`` s of ``features``.

    Raises:
        ValueError: a record does not parse, an example lacks a feature that has no default, holds
            another number of values than its shape, or of another kind than its dtype; a dtype other
            than int64 / float32 (as TensorFlow, one bad example fails the batch).
    """
    records = [serialized] if isinstance(serialized, (bytes, tf_example_pb2.Example)) else list(serialized)
    examples = []
    for i, record in enumerate(records):
        try:
            examples.append(record if isinstance(record, tf_example_pb2.Example)
                            else tf_example_pb2.Example.FromString(bytes(record)))
        except Exception as e:  # protobuf's DecodeError
            raise ValueError(f"parse_example: record {i} is not a tf.train.Example: {e}") from e
    out = {}
    for name, spec in features.items():
        if spec.dtype not in _KINDS:
            raise ValueError(f"parse_example: feature {name!r} has dtype {spec.dtype}; int64 and float32 are supported")
        kind, shape = _KINDS[spec.dtype], [int(d) for d in spec.shape]
        size = math.prod(shape)
        rows = []
        for i, example in enumerate(examples):
            feature = example.features.feature.get(name)
            if feature is None or feature.WhichOneof("kind") is None:
                if spec.default_value is None:
                    raise ValueError(f"parse_example: example {i} has no feature {name!r}, which has no default_value")
                rows.append(np.broadcast_to(np.asarray(spec.default_value), shape).reshape(-1))
                continue
            if feature.WhichOneof("kind") != kind:
                raise ValueError(f"parse_example: feature {name!r} of example {i} is a {feature.WhichOneof('kind')}, "
                                 f"expected a {kind}")
            values = getattr(feature, kind).value
            if len(values) != size:
                raise ValueError(f"parse_example: feature {name!r} of example {i} has {len(values)} values, "
                                 f"expected shape {shape}")
            rows.append(np.asarray(values))
        column = np.stack(rows) if rows else np.empty((0, size))
        out[name] = torch.from_numpy(column.astype(np.int64 if spec.dtype == torch.int64 else np.float32)
                                     ).reshape(len(examples), *shape)
    return out


def _float_signature(value: float) -> int:
    # Monolith's CalcHashValue: int64(log2(|value| + 1)).
    return int(math.log2(abs(value) + 1))


def tf_example_to_example(
    serialized: bytes | tf_example_pb2.Example,
    sparse_features: Mapping[str, int],
    dense_features: Sequence[str],
    label: str | None,
    instance_weight: str | None = None,
) -> Example:
    """A ``tf.train.Example`` as a Monolith ``Example`` (Monolith's ``tf_example_to_example`` kernel).

    * ``sparse_features`` (name -> slot in ``1..32767``) become ``fid_v2_list`` FIDs of their slot:
      an int64 value ``v`` is FID ``(slot << 48) | (v & (2**48 - 1))``; a float ``v`` is that of
      ``int(log2(|v| + 1))``; the named feature's ``id`` is the slot.
    * ``dense_features`` are copied (int64, float or bytes lists).
    * the ``label`` feature's floats are the label; the ``instance_weight`` feature's single float the
      weight (1.0 otherwise, and, logged, when it is not one float).

    Other features are dropped. Features are written in name order.

    Raises:
        ValueError: a name in two roles, a slot out of range or used twice, or ``serialized`` does
            not parse as a ``tf.train.Example``.
    """
    label = label or ""
    instance_weight = instance_weight or ""
    both = sorted(set(sparse_features) & set(dense_features))
    if both:
        raise ValueError(f"{both} occur in sparse_features and dense_features simultaneously")
    for role, name in (("label", label), ("instance_weight", instance_weight)):
        if name and (name in sparse_features or name in dense_features):
            raise ValueError(f"{role} {name!r} should not occur in sparse_features or dense_features")
    slots = list(sparse_features.values())
    twice = sorted({s for s in slots if slots.count(s) > 1})
    if twice:
        raise ValueError(f"slots {twice} have several sparse feature names")
    bad = {n: s for n, s in sparse_features.items() if not 0 < s <= MAX_SLOT_V2}
    if bad:
        raise ValueError(f"sparse feature slots must be in [1, {MAX_SLOT_V2}], got {bad}")
    if isinstance(serialized, tf_example_pb2.Example):
        tf_example = serialized
    else:
        try:
            tf_example = tf_example_pb2.Example.FromString(serialized)
        except Exception as e:  # protobuf's DecodeError
            raise ValueError(f"cannot parse the tf.train.Example: {e}") from e
    features = tf_example.features.feature
    if label and label not in features:
        logger.error("label %r is not a feature of the tf.train.Example", label)
    example = Example(instance_weight=1.0)
    dense = set(dense_features)
    for name in sorted(features):
        feature = features[name]
        kind = feature.WhichOneof("kind")
        if name == label:
            example.label.extend(feature.float_list.value)
        elif name == instance_weight:
            if kind != "float_list" or len(feature.float_list.value) != 1:
                logger.error("instance_weight %r is not one float; the weight stays 1.0", name)
            else:
                example.instance_weight = feature.float_list.value[0]
        elif name in sparse_features:
            slot = sparse_features[name]
            named = example.named_feature.add(name=name, id=slot)
            if kind == "int64_list":
                signatures = np.array(feature.int64_list.value, dtype=np.int64)
            elif kind == "float_list":
                signatures = np.array([_float_signature(v) for v in feature.float_list.value], dtype=np.int64)
            else:
                logger.error("sparse feature %r holds %s; only int64 and float lists become FIDs", name, kind)
                signatures = np.empty(0, dtype=np.int64)
            fids = make_fid(slot, signatures & ((1 << 48) - 1))
            named.feature.fid_v2_list.value.extend(np.asarray(fids, dtype=np.int64).view(np.uint64).tolist())
        elif name in dense:
            named = example.named_feature.add(name=name)
            if kind is not None:
                getattr(named.feature, kind).value.extend(getattr(feature, kind).value)
    return example
