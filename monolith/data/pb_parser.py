"""Serialized Monolith messages -> batches: :class:`PBParser`, and the Kafka payload parsers.

**Kafka**: Monolith's ``KafkaDataset`` reads each message as a stream of framed records
(:mod:`monolith.data.pb_framing`; ``has_header=True``, no sort id by default), which may hold
several records; :func:`parse_pb_bytes` does the same, or takes each payload as one bare
serialized message (``has_header=False``).

**What a batch holds** (:class:`PBParser`), following Monolith's ``parse_examples`` /
``parse_example_batch`` / ``parse_instances`` kernels:

* ``batch.sparse[name]``: int64 FIDs in v2 layout. ``fid_v1_list`` values are converted as Monolith's
  ``convert_fid_v1_to_v2`` does (the FID's own 10-bit slot moved to bits 48..62, the signature cut
  to 48 bits); ``fid_v2_list`` values are kept as they are; list-of-list FID features are flattened.
  An ``Instance``'s flat ``fid`` list is v1: it is grouped by slot, converted, and each slot named
  after its feature in the feature list, else ``slot_{n}``. (Monolith keeps Instance FIDs in v1
  layout unless some v2 feature is parsed too; here every FID is v2, the layout the tables use.)
* ``batch.dense["label"]``: float32 ``[B]`` (or ``[B, k]`` with ``dense_features={"label": k}``)
  from ``Example.label`` / ``__LABEL__`` / ``Instance.label``, or from a float feature named
  ``label``; labels a record lacks are :data:`INVALID_LABEL`, as in Monolith.
* ``batch.dense[name]`` for the numeric features in ``dense_features`` (float32 unless
  ``dense_dtypes`` says int64; int64 for int64 features taken from the data): ``[B]`` for width 1,
  else ``[B, width]``; a record without the feature gets zeros. ``"instance_weight"`` (width 1) is
  the instance weight, 1.0 where it is not positive. An ``Instance``'s flat ``value`` list is the
  float feature ``value``.
* ``batch.dense[field]`` for the ``LineId`` fields in ``line_id_fields`` (default ``req_time``):
  int64 for integer and bool fields (``uid``, ``item_id`` as their int64 bit pattern), float32 for
  ``sample_rate`` and other floats; repeated fields such as ``actions`` take a width
  (``{"actions": 3}``) and are cut or padded with 0.
* Bytes features (``bytes_list`` ...) are dropped: a batch holds tensors only; hash raw strings
  into FIDs (``monolith.fid.hash_string_fid``) before writing the data if the model needs them.
  ``named_raw_feature`` lists are dropped too (Monolith's default pruning).

Features nobody asked for are ignored. Without ``sparse_features`` (``dense_features``), they are
taken from the first block that has a message that parses: every FID feature (every numeric feature
with one length throughout the block), in name order; features first seen later are ignored, with
a warning.

**Features outside the feature list** (when one is given) are left out of their example, which is
read without them, as Monolith's ``ExampleBatchToExample`` does with the features its name mapper
does not know; so are an Instance's flat FIDs of a slot no v1 feature of the list has. Each is
counted in :attr:`PBParser.num_unknown_features` (:attr:`PBDataset.num_unknown_features` for the
current pass), with a warning once per name.

**Malformed records** (the :class:`~monolith.data.base.Reader` contract, a frame being the record
and its byte offset the position): a message that does not parse, a feature without a name, a
requested feature of the wrong kind or, for a dense feature, of the wrong length, or an
``ExampleBatch`` whose ``batch_size`` is negative, does not match its feature lists or, when it
has no list of one value per example, exceeds its byte length, is skipped and counted (one whole
``ExampleBatch`` at a time), or raises with ``strict=True``. A truncated file or a corrupt frame
(an absurd length, a length beyond the end of the file, broken compression, a snappy chunk that
claims more bytes than it or its block can hold) ends the file's reading there, as one bad record.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, TypeVar

import numpy as np
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

from monolith.data.base import Jagged, Rows, jagged, logger
from monolith.data.feature_list import FeatureList
from monolith.data.pb_framing import DEFAULT_MAX_RECORD_BYTES, FrameError, Framing, read_frames
from monolith.data.pb_messages import variant_name
from monolith.data.proto.example_pb2 import SHARED, Example, ExampleBatch
from monolith.data.proto.example_pb2 import Feature as ExampleFeature
from monolith.data.proto.feature_pb2 import Feature as InstanceFeature
from monolith.data.proto.line_id_pb2 import LineId
from monolith.data.proto.proto_parser_pb2 import Instance
from monolith.fid import get_signature_v1, get_slot_v1, make_fid, slot_from_name
from monolith.sparse import Batch

__all__ = [
    "INVALID_LABEL",
    "PBParser",
    "parse_example_batch_bytes",
    "parse_example_bytes",
    "parse_instance_bytes",
    "parse_pb_bytes",
]

#: The label of a record that has fewer labels than the label width (Monolith's ``INVALID_LABEL``).
INVALID_LABEL = float(np.finfo(np.float32).min)

_DENSE_DTYPES = (np.dtype(np.float32), np.dtype(np.int64))
_NO_FIDS: tuple[Sequence[int], bool] = ((), False)
# Names an Example / ExampleBatch gives its label, line id and weight; no feature list has them.
_RESERVED_NAMES = frozenset({"__LABEL__", "__LINE_ID__", "instance_weight"})

P = TypeVar("P")


class _BadRecord(Exception):
    """A frame whose message cannot become examples."""


@dataclass
class _Record:
    """One example as read from a message, before the feature selection.

    ``fids``: name -> (FIDs as uint64 ints, whether they are v1); ``values``: name -> (kind:
    "float", "int" or "bytes", values) of the other features.
    """

    fids: dict[str, tuple[Sequence[int], bool]] = field(default_factory=dict)
    values: dict[str, tuple[str, Sequence[Any]]] = field(default_factory=dict)
    labels: Sequence[float] = ()
    line_id: LineId | None = None
    weight: float = 0.0

    def put(self, name: str, kind: str, values: Sequence[Any], v1: bool) -> None:
        if kind != "fid":
            self.values[name] = (kind, values)
            return
        if name in self.fids:
            # A second FID list under one name (an Instance's slot and named feature): join them as v2.
            values, v1 = np.concatenate([_as_v2(*self.fids[name]), _as_v2(values, v1)]), False
        self.fids[name] = (values, v1)


# oneof case of monolith.io.proto.Feature -> (kind, shape: "list" / "lists" / "scalar").
_EXAMPLE_CASES = {
    "fid_v1_list": ("fid", "list"),
    "fid_v2_list": ("fid", "list"),
    "float_list": ("float", "list"),
    "double_list": ("float", "list"),
    "int64_list": ("int", "list"),
    "bytes_list": ("bytes", "list"),
    "fid_v1_lists": ("fid", "lists"),
    "fid_v2_lists": ("fid", "lists"),
    "float_lists": ("float", "lists"),
    "double_lists": ("float", "lists"),
    "int64_lists": ("int", "lists"),
    "bytes_lists": ("bytes", "lists"),
    "int64_value": ("int", "scalar"),
    "float_value": ("float", "scalar"),
    "double_value": ("float", "scalar"),
    "bytes_value": ("bytes", "scalar"),
}

# Fields of idl.matrix.proto.Feature (an Instance's named features) in the order Monolith's
# InstanceToExample tries them: the first non-empty one is the feature's value.
_INSTANCE_FIELDS = (
    ("fid", "fid", False),
    ("float_value", "float", False),
    ("int64_value", "int", False),
    ("bytes_value", "bytes", False),
    ("fid_list", "fid", True),
    ("float_list", "float", True),
    ("int64_list", "int", True),
    ("bytes_list", "bytes", True),
)


def _parse_message(cls: type[Message], payload: bytes) -> Any:
    try:
        return cls.FromString(payload)
    except DecodeError as e:
        raise _BadRecord(f"cannot parse the {cls.__name__}: {e}") from e


def _fids_v1_to_v2(fids: np.ndarray) -> np.ndarray:
    """Monolith's ``convert_fid_v1_to_v2``: the v1 slot moves to bits 48..62, 48 signature bits stay."""
    return make_fid(get_slot_v1(fids), get_signature_v1(fids))


def _as_v2(fids: Sequence[int], v1: bool) -> np.ndarray:
    """uint64 FIDs as int64 v2 FIDs."""
    out = np.array(fids, dtype=np.uint64).view(np.int64)
    return _fids_v1_to_v2(out) if v1 else out


def _line_id_column(field_desc: FieldDescriptor, width: int) -> Callable[[Sequence[LineId]], np.ndarray]:
    """A function turning line ids into the ``[n]`` / ``[n, width]`` column of one LineId field."""
    name = field_desc.name
    unsigned64 = field_desc.cpp_type == FieldDescriptor.CPPTYPE_UINT64
    is_float = field_desc.cpp_type in (FieldDescriptor.CPPTYPE_FLOAT, FieldDescriptor.CPPTYPE_DOUBLE)
    # uint64 values (uid, item_id) are collected as uint64 and read back as their int64 bits.
    collect = np.uint64 if unsigned64 else np.float32 if is_float else np.int64

    def column(line_ids: Sequence[LineId]) -> np.ndarray:
        out = np.zeros((len(line_ids), width), dtype=collect)
        for i, line_id in enumerate(line_ids):
            value = getattr(line_id, name)
            values = value[:width] if field_desc.is_repeated else [value]
            out[i, : len(values)] = values
        out = out.view(np.int64) if unsigned64 else out
        return out[:, 0] if width == 1 else out

    return column


class PBParser:
    """Turns serialized Monolith messages into examples: the feature selection of the module doc.

    A parser keeps its feature selection once fixed (given, or taken from the first good records),
    so every batch it makes has the same keys: keep one per stream.

    Args:
        variant_type: ``"example"``, ``"example_batch"`` (or ``"examplebatch"``) or ``"instance"``.
        feature_list: a :class:`~monolith.data.feature_list.FeatureList` or the path of a
            ``feature_list.conf``: names Instance slots, resolves requested names to slots, and
            features outside it are left out of their examples (see the module doc).
        sparse_features: FID features to output, by name or (for slot-named ones) slot; ``None``
            takes them from the data.
        dense_features: numeric features to output, name -> width; ``"label"`` sets the label width
            and ``"instance_weight"`` adds the weights; ``None`` takes them from the data.
        dense_dtypes: name -> ``np.float32`` (the default) or ``np.int64`` for dense features.
        line_id_fields: ``LineId`` fields to output, as names or name -> width (repeated fields).
        labels: False: no label is output, and ``"label"`` and ``"instance_weight"`` are features
            like any other, read as the records hold them (serving reads requests so).

    Attributes:
        num_unknown_features: how many features examples have lost so far for not being in the
            feature list (one per example and feature; an Instance's flat FIDs count per slot).

    Raises:
        ValueError: an unknown variant type, a requested feature missing from the feature list, a
            name used twice, a width < 1, an unsupported dtype, or a LineId field that does not
            exist, holds strings or has a width other than 1 without being repeated.
    """

    def __init__(
        self,
        variant_type: str = "example",
        *,
        feature_list: FeatureList | str | os.PathLike[str] | None = None,
        sparse_features: Sequence[str | int] | None = None,
        dense_features: Mapping[str, int] | None = None,
        dense_dtypes: Mapping[str, Any] | None = None,
        line_id_fields: Sequence[str] | Mapping[str, int] = ("req_time",),
        labels: bool = True,
    ) -> None:
        self.variant_type = variant_name(variant_type)
        if feature_list is not None and not isinstance(feature_list, FeatureList):
            feature_list = FeatureList.parse(feature_list)
        self.feature_list = feature_list
        self._known: set[str] = set()
        self._line_id_columns = self._line_id_spec(line_id_fields)
        dense = dict(dense_features) if dense_features is not None else None
        self._labels = labels
        self._label_width = 0
        if labels:
            self._label_width = self._width("label", dense.pop("label", 1)) if dense is not None else 1
        self._weight = labels and dense is not None and "instance_weight" in dense
        if self._weight:
            self._width("instance_weight", dense.pop("instance_weight"), only=1)
        self._reserved = {*self._line_id_columns, *(["label"] if labels else []),
                          *(["instance_weight"] if self._weight else [])}
        self._dtypes = {name: np.dtype(dtype) for name, dtype in (dense_dtypes or {}).items()}
        bad_dtypes = {name: str(dtype) for name, dtype in self._dtypes.items() if dtype not in _DENSE_DTYPES}
        if bad_dtypes:
            raise ValueError(f"dense_dtypes must be float32 or int64, got {bad_dtypes}")
        # Instance slot -> output name, for the flat v1 FIDs.
        self._slot_names: dict[int, str] = {}
        self._sparse: list[str] | None = None
        self._dense: dict[str, tuple[int, np.dtype]] | None = None
        # Which halves of the selection came from the data (only those warn about late features).
        self._sparse_discovered = self._dense_discovered = False
        self._ignored: set[str] = set()
        self.num_unknown_features = 0
        if sparse_features is not None:
            self._sparse = [self._sparse_name(item) for item in sparse_features]
        if dense is not None:
            self._dense = {}
            for name, width in dense.items():
                self._check_requested(name)
                self._dense[name] = (self._width(name, width), self._dtypes.get(name, np.dtype(np.float32)))
        names = [*(self._sparse or []), *(self._dense or {}), *self._reserved]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"feature names used twice (sparse, dense, label or line id fields): {twice}")
        # Features asked for by slot, which named FID features do not match without a feature list.
        by_slot = self.feature_list is None and self.variant_type != "instance"
        self._slot_requests = [n for n in self._sparse or () if by_slot and slot_from_name(n) is not None]

    # -- configuration helpers

    @staticmethod
    def _width(name: str, width: int, only: int | None = None) -> int:
        if not isinstance(width, int) or width < 1 or (only is not None and width != only):
            raise ValueError(f"{name!r} needs a width {only if only else '>= 1'}, got {width!r}")
        return width

    @staticmethod
    def _line_id_spec(fields: Sequence[str] | Mapping[str, int]) -> dict[str, Callable[[Sequence[LineId]], np.ndarray]]:
        widths = dict(fields) if isinstance(fields, Mapping) else {name: 1 for name in fields}
        columns = {}
        for name, width in widths.items():
            field_desc = LineId.DESCRIPTOR.fields_by_name.get(name)
            if field_desc is None:
                raise ValueError(f"LineId has no field {name!r}; it has {sorted(LineId.DESCRIPTOR.fields_by_name)}")
            if field_desc.cpp_type in (FieldDescriptor.CPPTYPE_STRING, FieldDescriptor.CPPTYPE_MESSAGE):
                raise ValueError(f"LineId field {name!r} holds strings, which a batch cannot")
            PBParser._width(name, width, None if field_desc.is_repeated else 1)
            columns[name] = _line_id_column(field_desc, width)
        return columns

    def _check_requested(self, name: str) -> None:
        fl = self.feature_list
        # An Instance's flat float list is no named feature, so no feature list has it.
        if self.variant_type == "instance" and name == "value":
            return
        if fl is not None and name not in fl and slot_from_name(name) not in fl:
            raise ValueError(f"feature {name!r} is not in the feature list")

    def _sparse_name(self, item: str | int) -> str:
        """The output name of a requested sparse feature; records its slot for Instance FIDs."""
        fl = self.feature_list
        if isinstance(item, int):
            if fl is not None and item not in fl:
                raise ValueError(f"no feature of the feature list has slot {item}")
            name, slot = (f"slot_{item}" if fl is None else fl[item].feature_name), item
        else:
            self._check_requested(item)
            name, slot = item, self._v1_slot(item)
        if self.variant_type == "instance" and slot is not None:
            if self._slot_names.get(slot, name) != name:
                raise ValueError(f"sparse features {self._slot_names[slot]!r} and {name!r} both have slot {slot}")
            self._slot_names[slot] = name
        return name

    def _v1_slot(self, name: str) -> int | None:
        """The slot of feature ``name``'s v1 FIDs (an Instance's flat ones), if it has v1 FIDs."""
        feature = self.feature_list.get(name) if self.feature_list is not None else None
        if feature is None:
            return slot_from_name(name)
        return feature.slot if (feature.feature_version or 1) == 1 else None

    def _slot_name(self, slot: int) -> str | None:
        """The feature of an Instance's v1 FIDs with ``slot``: requested, from the feature list, or
        ``slot_N``; ``None`` (counted, warned once) for a slot no v1 feature of the feature list has."""
        name = self._slot_names.get(slot)
        if name is not None:
            return name
        if self.feature_list is None:
            name = f"slot_{slot}"
        else:
            name = self.feature_list.name_of_slot(slot, fid_version=1)
            if name is None:
                self.num_unknown_features += 1
                self._ignore({f"slot_{slot}"}, f"no v1 feature of the feature list has slot {slot}")
                return None
        self._slot_names[slot] = name
        return name

    # -- messages -> records

    def _reads(self, name: str, examples: int = 1) -> bool:
        """Whether feature ``name`` of ``examples`` examples is read: not when a feature list is given
        and lacks it (Monolith's name mapper leaves such features out); that is counted and warned
        about once per name."""
        if not name:
            raise _BadRecord("a feature without a name")
        if self.feature_list is None or name in self._known or name in _RESERVED_NAMES:
            return True
        if name in self.feature_list:
            self._known.add(name)
            return True
        self.num_unknown_features += examples
        self._ignore({name}, "it is not in the feature list")
        return False

    def _named(self, record: _Record, name: str, feature: ExampleFeature) -> None:
        """Add a named ``monolith.io.proto.Feature`` of an Example (or one row of an ExampleBatch)
        that :meth:`_reads`."""
        if name == "__LINE_ID__":
            serialized = feature.bytes_list.value[0] if feature.bytes_list.value else b""
            try:
                record.line_id = LineId.FromString(serialized)
            except DecodeError as e:
                raise _BadRecord(f"cannot parse the __LINE_ID__ feature: {e}") from e
        elif name == "__LABEL__":
            record.labels = [*record.labels, *feature.float_list.value]
        elif name == "instance_weight" and self._labels:
            record.weight = feature.float_list.value[0] if feature.float_list.value else 1.0
        else:
            case = feature.WhichOneof("type")
            if case is None:
                return
            kind, shape = _EXAMPLE_CASES[case]
            value = getattr(feature, case)
            if shape == "scalar":
                values = [value]
            elif shape == "list":
                values = value.value
            else:
                values = [v for inner in value.list for v in inner.value]
            record.put(name, kind, values, case.startswith("fid_v1"))

    def _example(self, payload: bytes) -> list[_Record]:
        example = _parse_message(Example, payload)
        record = _Record(labels=example.label, line_id=example.line_id, weight=example.instance_weight)
        for named in example.named_feature:
            if self._reads(named.name):
                self._named(record, named.name, named.feature)
        return [record]

    def _example_batch(self, payload: bytes) -> list[_Record]:
        batch = _parse_message(ExampleBatch, payload)
        size = batch.batch_size
        # The sizes are checked before ``size`` records are made: batch_size is a word of the
        # message, and only a list of one value per example shows that it is real.
        if size < 0:
            raise _BadRecord(f"batch_size {size} is negative")
        individual = False
        for column in batch.named_feature_list:
            shared = column.type == SHARED
            individual |= not shared
            if not ((column.feature or not size) if shared else len(column.feature) == size):
                kind = "shared feature" if shared else "feature"
                raise _BadRecord(f"{kind} {column.name!r} has {len(column.feature)} values for batch_size {size}")
        if not individual and size > len(payload):
            raise _BadRecord(
                f"batch_size {size} exceeds the {len(payload)} bytes of an ExampleBatch without a feature of "
                "one value per example"
            )
        records = [_Record() for _ in range(size)]
        for column in batch.named_feature_list:
            if not self._reads(column.name, size):
                continue
            shared = column.type == SHARED
            for i, record in enumerate(records):
                self._named(record, column.name, column.feature[0 if shared else i])
        return records

    def _instance(self, payload: bytes) -> list[_Record]:
        instance = _parse_message(Instance, payload)
        weight = instance.instance_weight if instance.HasField("instance_weight") else 1.0
        record = _Record(labels=instance.label, line_id=instance.line_id, weight=weight)
        by_slot: dict[int, list[int]] = {}
        for fid in instance.fid:
            by_slot.setdefault(fid >> 54, []).append(fid)
        for slot, fids in by_slot.items():
            name = self._slot_name(slot)
            if name is not None:
                record.put(name, "fid", fids, True)
        if instance.value:
            record.put("value", "float", instance.value, False)
        for feature in instance.feature:
            if self._reads(feature.name):
                self._instance_feature(record, feature)
        return [record]

    @staticmethod
    def _instance_feature(record: _Record, feature: InstanceFeature) -> None:
        for field_name, kind, nested in _INSTANCE_FIELDS:
            values = getattr(feature, field_name)
            if len(values):
                flat = [v for inner in values for v in inner.value] if nested else values
                record.put(feature.name, kind, flat, False)
                return

    # -- records -> rows

    def _ignore(self, names: set[str], why: str) -> None:
        for name in sorted(names - self._ignored):
            logger.warning("feature %r is not read: %s", name, why)
        self._ignored |= names

    def _discover(self, records: list[_Record]) -> None:
        clash = "its name is that of the label, the instance weight or a LineId field"
        if self._sparse is None:
            names = {name for r in records for name in r.fids}
            self._sparse = sorted(names - self._reserved)
            self._sparse_discovered = True
            self._ignore(names & self._reserved, clash)
        if self._dense is None:
            self._dense_discovered = True
            widths: dict[str, set[int]] = {}
            ints: dict[str, bool] = {}
            for r in records:
                for name, (kind, values) in r.values.items():
                    if kind != "bytes":
                        widths.setdefault(name, set()).add(len(values))
                        ints[name] = ints.get(name, True) and kind == "int"
            # A numeric "label" feature is the label itself.
            self._ignore(widths.keys() & self._reserved - {"label"}, clash)
            self._dense = {}
            for name in sorted(widths.keys() - self._reserved - set(self._sparse)):
                if len(widths[name]) == 1 and min(widths[name]) > 0:
                    dtype = self._dtypes.get(name, np.dtype(np.int64 if ints[name] else np.float32))
                    self._dense[name] = (min(widths[name]), dtype)
                else:
                    self._ignore({name}, f"its records have {sorted(widths[name])} values, not one dense width")

    def _problem(self, record: _Record) -> str | None:
        """Why ``record`` does not fit the feature selection, or ``None``."""
        for name in self._sparse:
            if name in record.values:
                return f"feature {name!r} holds {record.values[name][0]} values, expected FIDs"
        if self._labels and record.values.get("label", ("float",))[0] == "bytes":
            return "feature 'label' holds bytes values, expected numbers"
        for name, (width, dtype) in self._dense.items():
            if name in record.fids:
                return f"feature {name!r} holds FIDs, expected {width} numbers"
            if name not in record.values:
                continue
            kind, values = record.values[name]
            if kind == "bytes" or (kind == "float" and dtype == np.int64):
                return f"feature {name!r} holds {kind} values, expected {dtype}"
            if len(values) != width:
                return f"feature {name!r} has {len(values)} values, expected {width}"
        return None

    def _frame_problem(self, records: list[_Record]) -> str | None:
        """Why the examples of one message do not fit the feature selection, or ``None``."""
        for k, record in enumerate(records):
            problem = self._problem(record)
            if problem is not None:
                batch = self.variant_type == "example_batch"
                return f"example {k} of the ExampleBatch: {problem}" if batch else problem
        return None

    def _warn_ignored(self, records: list[_Record]) -> None:
        """Warn once per feature that a selection taken from the data does not have."""
        if not (self._sparse_discovered or self._dense_discovered):
            return
        selected = {*self._sparse, *self._dense, *self._reserved}
        for r in records:
            new = set(r.fids) if self._sparse_discovered else set()
            if self._dense_discovered:
                new |= {name for name, (kind, _) in r.values.items() if kind != "bytes"}
            self._ignore(new - selected, "it first appears after the features were taken from the data")

    @staticmethod
    def _fid_column(records: list[_Record], name: str) -> Jagged:
        got = [r.fids.get(name, _NO_FIDS) for r in records]
        lengths = np.fromiter((len(fids) for fids, _ in got), dtype=np.int64, count=len(got))
        fids = np.fromiter(chain.from_iterable(fids for fids, _ in got), dtype=np.uint64).view(np.int64)
        v1 = np.repeat(np.fromiter((v1 for _, v1 in got), dtype=bool, count=len(got)), lengths)
        if v1.any():
            fids[v1] = _fids_v1_to_v2(fids[v1])
        return jagged(fids, lengths)

    def _rows(self, records: list[_Record]) -> Rows:
        n = len(records)
        sparse = {name: self._fid_column(records, name) for name in self._sparse}
        dense = {}
        if self._labels:
            label = np.full((n, self._label_width), INVALID_LABEL, dtype=np.float32)
            for i, r in enumerate(records):
                labels = r.values["label"][1] if "label" in r.values else r.labels
                k = min(len(labels), self._label_width)
                label[i, :k] = labels[:k]
            dense["label"] = label[:, 0] if self._label_width == 1 else label
        for name, (width, dtype) in self._dense.items():
            out = np.zeros((n, width), dtype=dtype)
            for i, r in enumerate(records):
                if name in r.values:
                    out[i] = r.values[name][1]
            dense[name] = out[:, 0] if width == 1 else out
        if self._weight:
            dense["instance_weight"] = np.array([r.weight if r.weight > 0 else 1.0 for r in records], dtype=np.float32)
        line_ids = [r.line_id if r.line_id is not None else LineId() for r in records]
        for name, column in self._line_id_columns.items():
            dense[name] = column(line_ids)
        return Rows(n, sparse, dense)

    def decode(self, frames: Sequence[tuple[P, bytes]]) -> tuple[Rows, list[tuple[P, str]]]:
        """Decode serialized messages given with their positions.

        Returns:
            The examples of the good messages, and (position, reason) for each bad one (an
            ``ExampleBatch`` is good or bad as a whole). Before any good message fixed the
            feature selection, the rows are empty and have no features.
        """
        convert = {"example": self._example, "example_batch": self._example_batch, "instance": self._instance}
        decoded: list[tuple[P, list[_Record]]] = []
        bad: list[tuple[P, str]] = []
        for position, payload in frames:
            try:
                decoded.append((position, convert[self.variant_type](payload)))
            except _BadRecord as e:
                bad.append((position, str(e)))
        records = [r for _, rs in decoded for r in rs]
        if self._sparse is None or self._dense is None:
            if not records:
                return Rows.empty(), bad
            self._discover(records)
        else:
            self._warn_ignored(records)
        good: list[_Record] = []
        for position, rs in decoded:
            problem = self._frame_problem(rs)
            if problem is None:
                good.extend(rs)
            else:
                bad.append((position, problem))
        if self._slot_requests:
            self._warn_slot_requests(good)
        return self._rows(good), bad

    def _warn_slot_requests(self, records: list[_Record]) -> None:
        """Warn (once per feature) when a feature asked for by slot (``3``, ``slot_3``, ``fc_slot_3``) is
        in none of ``records`` while they have FID features of other names: without a feature list a
        slot does not find a named feature, and the feature would be empty without a word."""
        names = {name for r in records for name in r.fids}
        missing = [n for n in self._slot_requests if n not in names]
        others = sorted(names - set(self._sparse or ()))
        if not (missing and others):
            return
        self._slot_requests = [n for n in self._slot_requests if n not in missing]
        warnings.warn(
            f"sparse features {missing} were asked for by slot and no example has them; these examples name "
            f"their FID features ({others[:8]}), which a slot does not find: ask for the names, or give the "
            "feature_list that maps the slots to them",
            UserWarning,
            stacklevel=2,
        )

    def parse(
        self,
        payloads: Iterable[bytes],
        *,
        has_header: bool = True,
        framing: Framing = Framing(),
        strict: bool = False,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    ) -> Batch:
        """One batch of the examples of Kafka ``payloads``.

        Args:
            has_header: each payload is a framed stream of records (Monolith's KafkaDataset);
                ``False``: each payload is one bare serialized message.
            framing: the header words of framed payloads.
            strict: raise on the first bad record instead of logging and skipping it.
            max_record_bytes: lengths above this are corrupt frames.

        Raises:
            ValueError: (``strict``) a bad record, naming the payload index and byte offset.
        """
        frames: list[tuple[tuple[int, int], bytes]] = []
        bad: list[tuple[tuple[int, int], str]] = []
        for i, payload in enumerate(payloads):
            if not has_header:
                frames.append(((i, 0), payload))
                continue
            try:
                for offset, _, message in read_frames(io.BufferedReader(io.BytesIO(payload)), framing, max_record_bytes):
                    frames.append(((i, offset), message))
            except FrameError as e:
                bad.append(((i, e.offset), e.reason))
        rows, more = self.decode(frames)
        for (i, offset), reason in sorted(bad + more):
            where = f"payload {i}, byte offset {offset}"
            if strict:
                raise ValueError(f"{where}: malformed record: {reason}")
            logger.warning("skipping malformed record at %s: %s", where, reason)
        return rows.to_batch()


def parse_pb_bytes(
    payloads: Iterable[bytes],
    variant_type: str = "example",
    *,
    has_header: bool = True,
    lagrangex_header: bool = False,
    has_sort_id: bool = False,
    kafka_dump: bool = False,
    kafka_dump_prefix: bool = False,
    strict: bool = False,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    **parser_options: Any,
) -> Batch:
    """One batch of the examples of Kafka ``payloads`` (see :meth:`PBParser.parse`).

    The defaults are those of Monolith's ``KafkaDataset``: framed payloads without sort ids.
    ``parser_options`` are :class:`PBParser`'s (``feature_list``, ``sparse_features``, ...). The
    features come from these payloads unless given: for a stream, keep one :class:`PBParser`.
    """
    framing = Framing(
        lagrangex_header=lagrangex_header,
        kafka_dump_prefix=kafka_dump_prefix,
        has_sort_id=has_sort_id,
        kafka_dump=kafka_dump,
    )
    parser = PBParser(variant_type, **parser_options)
    return parser.parse(
        payloads, has_header=has_header, framing=framing, strict=strict, max_record_bytes=max_record_bytes
    )


def parse_example_bytes(payloads: Iterable[bytes], **options: Any) -> Batch:
    """:func:`parse_pb_bytes` of ``Example`` payloads."""
    return parse_pb_bytes(payloads, "example", **options)


def parse_example_batch_bytes(payloads: Iterable[bytes], **options: Any) -> Batch:
    """:func:`parse_pb_bytes` of ``ExampleBatch`` payloads."""
    return parse_pb_bytes(payloads, "example_batch", **options)


def parse_instance_bytes(payloads: Iterable[bytes], **options: Any) -> Batch:
    """:func:`parse_pb_bytes` of ``Instance`` payloads."""
    return parse_pb_bytes(payloads, "instance", **options)
