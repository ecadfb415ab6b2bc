"""Monolith's input transforms (``native_training/data/feature_utils.py``) on ``Example`` / ``Instance`` messages.

In Monolith these are TF ops on a dataset of variants, one message each, before it is batched and
parsed; here they take and return the protobuf messages of such a dataset
(:class:`~monolith.data.messages.PBMessageDataset`), with Monolith's names, arguments and C++ kernel
semantics::

    ds = (PBMessageDataset(files, "instance")
          .filter(lambda m: filter_by_fids(m, select_slots=[2, 3], variant_type="instance"))
          .map(lambda m: add_label(m, config="1,2:3:1.0;4::0.5", negative_value=-1.0, new_sample_rate=1.0))
          .filter(lambda m: filter_by_label(m, label_threshold=[-100, -100]))
          .batch(256)
          .map(lambda ms: parse_instances(ms, fidv1_features=[2, 3], dense_features=["label"],
                                          dense_feature_shapes=[2])))

* **Filters** (``filter_by_fids``, ``filter_by_value``, ``filter_by_feature_value``,
  ``filter_by_label``, ``negative_sample``) return a ``bool``: keep the message.
* **Maps** (``add_action``, ``add_label``, ``scatter_label``, ``label_upper_bound``,
  ``label_normalization``, ``use_field_as_label``, ``multi_label_gen``) return a changed *copy*,
  as the kernels do, so a message held in memory (a list dataset repeated) is not changed twice.
* **Ragged transforms** on parsed features (``switch_slot``, ``feature_combine``, ``map_id``) take
  and return :class:`~monolith.sparse.JaggedTensor` s / tensors.
* **Instance reweighting** repeats each message by its most important action:
  :meth:`Dataset.instance_reweight <monolith.data.dataset.Dataset.instance_reweight>`, with the
  count of :func:`reweight_replicas`.

``variant_type`` (``"instance"`` or ``"example"``) is accepted as in Monolith and must match the
message. Sampling (``add_label``, ``negative_sample``) draws from ``rng`` (a
``numpy.random.Generator``) when given, else from a fresh OS-seeded generator per call, as
Monolith's kernels seed from the clock or ``random_device``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import torch
from google.protobuf.descriptor import FieldDescriptor

from monolith.data.proto.example_pb2 import Example, FilterValues
from monolith.data.proto.line_id_pb2 import LineId
from monolith.data.proto.proto_parser_pb2 import Instance
from monolith.fid import SIGNATURE_BITS_V1, SIGNATURE_BITS_V2
from monolith.fid_transforms import feature_combine, switch_slot

__all__ = [
    "INVALID_LABEL",
    "add_action",
    "add_label",
    "feature_combine",
    "filter_by_feature_value",
    "filter_by_fids",
    "filter_by_label",
    "filter_by_value",
    "label_normalization",
    "label_upper_bound",
    "map_id",
    "multi_label_gen",
    "negative_sample",
    "reweight_replicas",
    "scatter_label",
    "switch_slot",
    "use_field_as_label",
]

#: A label a task does not have (Monolith's ``INVALID_LABEL``, the lowest float32).
INVALID_LABEL = float(np.finfo(np.float32).min)

Message = TypeVar("Message", Example, Instance)

logger = logging.getLogger("monolith.data")

_COMPARE_OPS = ("gt", "ge", "eq", "lt", "le", "neq", "between")
_CONTAIN_OPS = ("in", "not-in")
_SET_OPS = ("all", "any", "diff")
_STRING_OPS = ("startswith", "endswith")
_INT_TYPES = (
    FieldDescriptor.CPPTYPE_INT32,
    FieldDescriptor.CPPTYPE_INT64,
    FieldDescriptor.CPPTYPE_UINT32,
    FieldDescriptor.CPPTYPE_UINT64,
)
_FLOAT_TYPES = (FieldDescriptor.CPPTYPE_FLOAT, FieldDescriptor.CPPTYPE_DOUBLE)


def _check_message(message: Any, variant_type: str) -> None:
    expected = {"instance": Instance, "example": Example}.get(variant_type)
    if expected is None:
        raise ValueError(f"variant_type must be 'instance' or 'example', got {variant_type!r}")
    if not isinstance(message, expected):
        raise TypeError(f"variant_type {variant_type!r} needs a {expected.__name__}, got {type(message).__name__}")


def _copy(message: Message) -> Message:
    out = type(message)()
    out.CopyFrom(message)
    return out


def _line_id_field(field_name: str) -> FieldDescriptor:
    field = LineId.DESCRIPTOR.fields_by_name.get(field_name)
    if field is None:
        raise ValueError(f"LineId has no field {field_name!r}; it has {sorted(LineId.DESCRIPTOR.fields_by_name)}")
    return field


# ---------------------------------------------------------------- relations


class _Relation:
    """``value op operand`` as Monolith's ``relational_utils.h`` and value filters evaluate it."""

    def __init__(self, op: str, operand: Any, kind: str, operand_filepath: str | None = None) -> None:
        valid = (*_COMPARE_OPS, *_CONTAIN_OPS, *_SET_OPS, *_STRING_OPS)
        if op not in valid:
            raise ValueError(f"op must be one of {valid}, got {op!r}")
        if (operand is None) == (not operand_filepath):
            raise ValueError("give exactly one of operand and operand_filepath")
        self.op, self.kind = op, kind
        if operand_filepath:
            if op not in _CONTAIN_OPS:
                raise ValueError(f"operand_filepath needs op 'in' or 'not-in', got {op!r}")
            operand = _filter_values(operand_filepath, kind)
        if op in _SET_OPS:
            if kind != "int":
                raise ValueError(f"op {op!r} compares int64 lists, not {kind} values")
            operand = [operand] if isinstance(operand, int) else list(operand)
        elif op in _STRING_OPS:
            if kind != "bytes":
                raise ValueError(f"op {op!r} compares strings, not {kind} values")
        operands = list(operand) if isinstance(operand, (list, tuple, set, frozenset)) else [operand]
        if op == "between" and len(operands) != 2:
            raise ValueError(f"op 'between' needs [low, high), got {operand!r}")
        self.operands = [self._convert(o) for o in operands]
        self.operand_set = frozenset(self.operands)

    def _convert(self, value: Any) -> Any:
        if self.kind == "float":
            return float(np.float32(value))
        if self.kind == "double":
            return float(value)
        if self.kind == "int":
            if not isinstance(value, (int, np.integer)):
                raise ValueError(f"an int64 field needs int operands, got {value!r}")
            return int(value)
        return value.encode() if isinstance(value, str) else bytes(value)

    def scalar(self, value: Any) -> bool:
        """The relation for one value."""
        op, ops = self.op, self.operands
        if self.kind == "bytes" and isinstance(value, str):
            value = value.encode()
        if op == "startswith":
            return any(value.startswith(o) for o in ops)
        if op == "endswith":
            return any(value.endswith(o) for o in ops)
        if op in _CONTAIN_OPS:
            return (value in self.operand_set) == (op == "in")
        if op in _SET_OPS:
            raise ValueError(f"op {op!r} needs a list field")
        return {
            "gt": lambda: value > ops[0],
            "ge": lambda: value >= ops[0],
            "eq": lambda: value == ops[0],
            "lt": lambda: value < ops[0],
            "le": lambda: value <= ops[0],
            "neq": lambda: value != ops[0],
            "between": lambda: ops[0] <= value < ops[1],
        }[op]()

    def values(self, values: Sequence[int]) -> bool:
        """A set op (``any``, ``all``, ``diff``) over a list of ints."""
        common = set(values) & self.operand_set
        if self.op == "any":
            return bool(common)
        if self.op == "all":
            return common == self.operand_set
        if self.op == "diff":
            return not common
        raise ValueError(f"op {self.op!r} compares one value, the field is a list")


def _filter_values(path: str, kind: str) -> list[Any]:
    """The operands of a serialized ``FilterValues`` file (Monolith's ``operand_filepath``)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"operand_filepath not found: {path}")
    with open(path, "rb") as f:
        values = FilterValues.FromString(f.read())
    case = values.WhichOneof("type")
    expected = {"float": "float_list", "double": "float_list", "int": "int64_list", "bytes": "bytes_list"}[kind]
    if case != expected:
        raise ValueError(f"{path}: FilterValues holds {case}, the field needs {expected}")
    return list(getattr(values, case).value)


def _kind_of(field: FieldDescriptor) -> str:
    if field.cpp_type == FieldDescriptor.CPPTYPE_FLOAT:
        return "float"
    if field.cpp_type == FieldDescriptor.CPPTYPE_DOUBLE:
        return "double"
    if field.cpp_type in _INT_TYPES or field.cpp_type == FieldDescriptor.CPPTYPE_BOOL:
        return "int"
    if field.cpp_type == FieldDescriptor.CPPTYPE_STRING:
        return "bytes"
    raise ValueError(f"LineId field {field.name!r} is a message; it cannot be compared")


# ---------------------------------------------------------------- filters


def _fids_and_slots(message: Example | Instance) -> tuple[set[int], set[int]]:
    """The FIDs (uint64) and slots of ``message`` as Monolith's ``CollectFidIntoSet`` /
    ``CollectSlotIntoSet`` see them: an Instance's flat v1 FIDs (slots also from its named
    features' v2 FIDs); an Example's ``fid_v1_list`` / ``fid_v2_list`` features."""
    fids: set[int] = set()
    slots: set[int] = set()
    if isinstance(message, Instance):
        fids.update(message.fid)
        slots.update(f >> SIGNATURE_BITS_V1 for f in message.fid)
        for feature in message.feature:
            slots.update((f >> SIGNATURE_BITS_V2) & 0x7FFF for f in feature.fid)
        return fids, slots
    for named in message.named_feature:
        case = named.feature.WhichOneof("type")
        if case == "fid_v1_list":
            values = named.feature.fid_v1_list.value
            slots.update(f >> SIGNATURE_BITS_V1 for f in values)
        elif case == "fid_v2_list":
            values = named.feature.fid_v2_list.value
            slots.update((f >> SIGNATURE_BITS_V2) & 0x7FFF for f in values)
        else:
            continue
        fids.update(values)
    return fids, slots


def filter_by_fids(
    message: Example | Instance,
    filter_fids: Iterable[int] | None = None,
    has_fids: Iterable[int] | None = None,
    select_fids: Iterable[int] | None = None,
    has_actions: Iterable[int] | None = None,
    req_time_min: int = 0,
    select_slots: Iterable[int] | None = None,
    variant_type: str = "instance",
) -> bool:
    """Keep ``message`` (Monolith's ``filter_by_fids`` / ``IsInstanceOfInterest``) unless:
    its ``line_id.req_time < req_time_min``; it has any FID of ``filter_fids``; it has none of
    ``has_fids``; it lacks one of ``select_fids`` or of ``select_slots``; it has none of the
    ``has_actions`` (each check only when its list is non-empty). FIDs may be given as int64 or
    uint64."""
    _check_message(message, variant_type)
    select_slots = set(select_slots or ())
    if any(slot <= 0 for slot in select_slots):
        raise ValueError(f"select_slots must be positive, got {sorted(select_slots)}")
    as_u64 = lambda fids: {int(f) & 0xFFFFFFFFFFFFFFFF for f in fids or ()}  # noqa: E731
    filter_fids, has_fids, select_fids = as_u64(filter_fids), as_u64(has_fids), as_u64(select_fids)
    has_actions = set(has_actions or ())
    if message.line_id.req_time < req_time_min:
        return False
    fids, slots = _fids_and_slots(message)
    if filter_fids & fids:
        return False
    if has_fids and not has_fids & fids:
        return False
    if not select_fids <= fids or not select_slots <= slots:
        return False
    return not has_actions or bool(has_actions & set(message.line_id.actions))


def filter_by_value(
    message: Example | Instance,
    field_name: str,
    op: str,
    operand: Any,
    variant_type: str = "instance",
    keep_empty: bool = False,
    operand_filepath: str | None = None,
) -> bool:
    """Keep ``message`` when its ``line_id.<field_name> op operand`` holds (Monolith's
    ``filter_by_value``): ``gt``, ``ge``, ``eq``, ``lt``, ``le``, ``neq``, ``between`` (``[lo, hi)``),
    ``in`` / ``not-in`` (a list, or a ``FilterValues`` file), ``startswith`` / ``endswith`` for
    strings; a repeated field (``actions``) takes ``any``, ``all`` or ``diff`` against int operands,
    and an empty one is kept only with ``keep_empty``."""
    _check_message(message, variant_type)
    field = _line_id_field(field_name)
    relation = _Relation(op, operand, _kind_of(field), operand_filepath)
    value = getattr(message.line_id, field_name)
    if field.is_repeated:
        if relation.op not in _SET_OPS:
            raise ValueError(f"LineId field {field_name!r} is repeated: op must be one of {_SET_OPS}, got {op!r}")
        return relation.values(list(value)) if len(value) else keep_empty
    if relation.op in _SET_OPS:
        raise ValueError(f"op {op!r} needs a repeated LineId field; {field_name!r} holds one value")
    return relation.scalar(value)


_FEATURE_KINDS = {"int64": ("int", "int64_list"), "float": ("float", "float_list"),
                  "double": ("double", "double_list"), "bytes": ("bytes", "bytes_list")}


def filter_by_feature_value(
    message: Example,
    field_name: str,
    op: str,
    operand: Any,
    field_type: str,
    keep_empty: bool = False,
    operand_filepath: str | None = None,
) -> bool:
    """Keep an ``Example`` when its feature ``field_name`` satisfies ``op operand`` (Monolith's
    ``filter_by_feature_value``): the feature must hold a one-value list of ``field_type``
    (``int64``, ``float``, ``double``, ``bytes``), or, for ``any`` / ``all`` / ``diff``, an int64
    list. A missing feature, one of another type or of several values is dropped (logged); a
    missing one is kept with ``keep_empty``, as is an empty int64 list for a set op."""
    if not isinstance(message, Example):
        raise TypeError(f"filter_by_feature_value needs an Example, got {type(message).__name__}")
    if field_type not in _FEATURE_KINDS:
        raise ValueError(f"field_type must be one of {sorted(_FEATURE_KINDS)}, got {field_type!r}")
    kind, case_wanted = _FEATURE_KINDS[field_type]
    relation = _Relation(op, operand, kind, operand_filepath)
    feature = next((nf.feature for nf in reversed(message.named_feature) if nf.name == field_name), None)
    if feature is None:
        if not keep_empty:
            logger.debug("filter_by_feature_value: feature %r not found", field_name)
        return keep_empty
    case = feature.WhichOneof("type")
    if case != case_wanted:
        logger.warning("filter_by_feature_value: feature %r holds %s, field_type is %s", field_name, case, field_type)
        return keep_empty
    values = list(getattr(feature, case).value)
    if relation.op in _SET_OPS:
        return relation.values(values) if values else keep_empty
    if len(values) == 1:
        return relation.scalar(values[0])
    if len(values) > 1:
        logger.warning("filter_by_feature_value: feature %r has %d values, expected one", field_name, len(values))
    return keep_empty


def filter_by_label(
    message: Example | Instance,
    label_threshold: Sequence[float],
    filter_equal: bool = False,
    variant_type: str = "example",
) -> bool:
    """Keep ``message`` when some label ``i`` is above ``label_threshold[i]`` (or equal to it,
    unless ``filter_equal``); a message with fewer labels than thresholds is dropped."""
    _check_message(message, variant_type)
    if not label_threshold:
        raise ValueError("filter_by_label needs a non-empty label_threshold")
    labels = message.label
    if len(labels) < len(label_threshold):
        return False
    thresholds = np.asarray(label_threshold, dtype=np.float32)
    got = np.asarray(labels[: len(thresholds)], dtype=np.float32)
    return bool(np.any((got > thresholds) | ((got == thresholds) & (not filter_equal))))


def _uniform(rng: np.random.Generator | None) -> float:
    return float((rng or np.random.default_rng()).random())


def negative_sample(
    message: Example | Instance,
    drop_rate: float,
    label_index: int = 0,
    threshold: float = 0.0,
    variant_type: str = "instance",
    action_priority: str | None = None,
    per_action_drop_rate: str | None = None,
    *,
    rng: np.random.Generator | None = None,
) -> bool:
    """Drop a negative (``label[label_index] < threshold``) with probability ``drop_rate``, or,
    with ``action_priority`` (``"2,3,4"``, first most important) and ``per_action_drop_rate``
    (``"1:1.0,2:0.0"``), with the rate of its most important listed action that has one.
    Positives are always kept. As Monolith, the draw is in steps of 1/1000."""
    _check_message(message, variant_type)
    if message.label[label_index] >= threshold:
        return True
    rate = drop_rate
    if action_priority and per_action_drop_rate:
        priority = {int(a): i for i, a in enumerate(action_priority.strip().split(","))}
        rates = {int(a): float(r) for a, r in (item.strip().split(":") for item in per_action_drop_rate.split(","))}
        ranked = [a for a in message.line_id.actions if a in priority]
        if ranked:
            best = min(ranked, key=priority.__getitem__)
            if best > 0 and best in rates:
                rate = rates[best]
    draw = int((rng or np.random.default_rng()).integers(1000)) / 1000.0
    return draw >= rate


# ---------------------------------------------------------------- maps


def add_action(
    message: Message, field_name: str, op: str, operand: Any, action: int, variant_type: str = "example"
) -> Message:
    """A copy of ``message`` with ``action`` appended to ``line_id.actions`` when
    ``line_id.<field_name> op operand`` (``gt`` ... ``between``, ``in``); a repeated field adds nothing."""
    _check_message(message, variant_type)
    if op not in (*_COMPARE_OPS, "in"):
        raise ValueError(f"add_action op must be one of {(*_COMPARE_OPS, 'in')}, got {op!r}")
    field = _line_id_field(field_name)
    out = _copy(message)
    if field.is_repeated:
        return out
    if _Relation(op, operand, _kind_of(field)).scalar(getattr(out.line_id, field_name)):
        out.line_id.actions.append(action)
    return out


def _parse_label_config(config: str) -> list[tuple[set[int], set[int], float]]:
    tasks = []
    for task in config.split(";"):
        if not task:
            continue
        try:
            pos, neg, rate = task.split(":")
            tasks.append(({int(a) for a in pos.split(",") if a}, {int(a) for a in neg.split(",") if a}, float(rate)))
        except ValueError as e:
            raise ValueError(f"add_label config task {task!r} is not 'pos_actions:neg_actions:sample_rate'") from e
        if not tasks[-1][0]:
            raise ValueError(f"add_label config task {task!r} has no positive actions")
        if tasks[-1][0] & tasks[-1][1]:
            raise ValueError(f"add_label config task {task!r} has an action both positive and negative")
        if not 0 <= tasks[-1][2] <= 1:
            raise ValueError(f"add_label config task {task!r}: sample_rate must be in [0, 1]")
    if not tasks:
        raise ValueError("add_label needs a config, e.g. '1,2:3:1.0;4::0.5'")
    return tasks


def add_label(
    message: Message,
    config: str,
    negative_value: float,
    new_sample_rate: float,
    variant_type: str = "example",
    *,
    rng: np.random.Generator | None = None,
) -> Message:
    """A copy of ``message`` with one label appended per task of ``config``
    (``"pos_actions:neg_actions:sample_rate"`` tasks joined by ``;``, e.g. ``"1,2:3:1.0;4::0.5"``),
    Monolith's ``add_label``: a first label ``<= 0`` becomes :data:`INVALID_LABEL`; for each task,
    an action of ``pos_actions`` gives 1.0; otherwise, when the task has ``neg_actions`` and none of
    them occurs, INVALID_LABEL; else ``negative_value`` if kept by negative sampling (always at
    ``sample_rate`` 1, else with probability ``sample_rate``), INVALID_LABEL if not.
    ``line_id.sample_rate`` becomes ``new_sample_rate``. Follow it with :func:`filter_by_label`."""
    _check_message(message, variant_type)
    if not 0 < new_sample_rate <= 1:
        raise ValueError(f"new_sample_rate must be in (0, 1], got {new_sample_rate}")
    tasks = _parse_label_config(config)
    out = _copy(message)
    actions = set(out.line_id.actions)
    if len(out.label) and out.label[0] <= 0:
        out.label[0] = INVALID_LABEL
    for pos, neg, rate in tasks:
        if actions & pos:
            out.label.append(1.0)
        elif neg and not actions & neg:
            out.label.append(INVALID_LABEL)
        elif math.isclose(rate, 1.0, rel_tol=0, abs_tol=1e-6) or _uniform(rng) < rate:
            out.label.append(negative_value)
        else:
            out.label.append(INVALID_LABEL)
    out.line_id.sample_rate = new_sample_rate
    return out


def _resize_labels(message: Message, num: int, index: int | None, value: float) -> None:
    del message.label[:]
    message.label.extend([INVALID_LABEL] * num)
    if index is not None:
        message.label[index] = value


def scatter_label(message: Message, config: str, variant_type: str = "example") -> Message:
    """A copy of ``message`` whose labels become ``max index + 1`` values, all INVALID_LABEL but
    the one its ``line_id.chnid`` maps to in ``config`` (``"chnid:index,..."``, e.g.
    ``"100:3,200:1"``), which gets the first original label (INVALID_LABEL if it had none)."""
    _check_message(message, variant_type)
    try:
        mapping = {int(c): int(i) for c, i in (item.split(":") for item in config.split(","))}
    except ValueError as e:
        raise ValueError(f"scatter_label config must be 'chnid:index,...', got {config!r}") from e
    out = _copy(message)
    value = out.label[0] if len(out.label) else INVALID_LABEL
    _resize_labels(out, max(mapping.values()) + 1, mapping.get(out.line_id.chnid), value)
    return out


def label_upper_bound(message: Message, label_upper_bounds: Sequence[float], variant_type: str = "instance") -> Message:
    """A copy of ``message`` with label ``i`` capped at ``label_upper_bounds[i]``; a message with
    fewer labels than bounds is left as it is (logged)."""
    _check_message(message, variant_type)
    if not label_upper_bounds:
        raise ValueError("label_upper_bound needs a non-empty label_upper_bounds")
    out = _copy(message)
    if len(out.label) < len(label_upper_bounds):
        logger.warning("label_upper_bound: %d labels, fewer than %d bounds", len(out.label), len(label_upper_bounds))
        return out
    for i, bound in enumerate(label_upper_bounds):
        if out.label[i] > np.float32(bound):
            out.label[i] = bound
    return out


def _normalize_label(label: np.float32, method: str, value: np.float32) -> np.float32:
    one, zero = np.float32(1), np.float32(0)
    if method == "log":
        return np.float32(np.log(max(label + value, zero)))
    if method == "scale":
        return label / value
    if method == "scale2int":
        return np.float32(int(label / value))
    if method == "pow":
        return np.float32(np.power(label + one, value))
    if method == "repow":
        return np.float32(np.power(label, value)) if label > 0 else zero
    if method == "scalelog":
        return np.float32(np.log(max(label / value + one, zero)))
    raise ValueError(f"norm method must be log, scale, scale2int, pow, repow or scalelog, got {method!r}")


def label_normalization(
    message: Message, norm_methods: Sequence[str], norm_values: Sequence[float], variant_type: str = "instance"
) -> Message:
    """A copy of ``message`` with every label passed through the ``norm_methods`` in order, each
    with its ``norm_values`` entry (float32 arithmetic, as the kernel): ``log``
    (``log(max(l + v, 0))``), ``scale`` (``l / v``), ``scale2int`` (``int(l / v)``), ``pow``
    (``(l + 1) ** v``), ``repow`` (``l ** v`` for ``l > 0``, else 0), ``scalelog``
    (``log(max(l / v + 1, 0))``)."""
    _check_message(message, variant_type)
    if len(norm_methods) != len(norm_values):
        raise ValueError(f"norm_methods and norm_values differ in length: {len(norm_methods)} != {len(norm_values)}")
    out = _copy(message)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for i in range(len(out.label)):
            label = np.float32(out.label[i])
            for method, value in zip(norm_methods, norm_values):
                label = _normalize_label(label, method, np.float32(value))
            out.label[i] = float(label)
    return out


def use_field_as_label(
    message: Message,
    field_name: str,
    overwrite_invalid_value: bool = False,
    label_threshold: float = 7200,
    variant_type: str = "instance",
) -> Message:
    """A copy of ``message`` whose labels take the value of ``line_id.<field_name>``. With
    ``overwrite_invalid_value`` a value ``>= label_threshold`` counts as 0, and each label becomes
    the larger of itself and the value.

    (Monolith's kernel is not in its open source; this follows its op's documentation and the
    expected values of its ``feature_utils_test``.)"""
    _check_message(message, variant_type)
    field = _line_id_field(field_name)
    if field.is_repeated or _kind_of(field) == "bytes":
        raise ValueError(f"use_field_as_label needs a numeric LineId field, {field_name!r} is not one")
    value = float(getattr(message.line_id, field_name))
    out = _copy(message)
    if overwrite_invalid_value:
        if value >= label_threshold:
            value = 0.0
        for i in range(len(out.label)):
            out.label[i] = max(out.label[i], value)
    else:
        for i in range(len(out.label)):
            out.label[i] = value
    return out


def multi_label_gen(
    message: Message,
    head_to_index: Mapping[Any, int],
    head_field: str = "chnid",
    pos_actions: Sequence[int] | None = None,
    neg_actions: Sequence[int] | None = None,
    use_origin_label: bool = False,
    pos_label: float = 1.0,
    neg_label: float = 0.0,
    action_priority: str | None = None,
    task_num: int | None = None,
    variant_type: str = "example",
) -> Message:
    """A copy of ``message`` with ``task_num`` labels (default ``max index + 1``), all
    INVALID_LABEL but the one of its head (``str(line_id.<head_field>)`` looked up in
    ``head_to_index``), which gets: the first original label (``use_origin_label``), or
    ``pos_label`` / ``neg_label`` when its most important action (the first one listed in
    ``action_priority`` it has, else its first action) is in ``pos_actions`` / ``neg_actions``,
    else INVALID_LABEL."""
    _check_message(message, variant_type)
    pos_actions, neg_actions = list(pos_actions or ()), list(neg_actions or ())
    max_index = max(head_to_index.values())
    task_num = task_num or max_index + 1
    if max_index >= task_num:
        raise ValueError(f"head_to_index has index {max_index}, task_num is {task_num}")
    if use_origin_label and (pos_actions or neg_actions):
        raise ValueError("use_origin_label takes no pos_actions / neg_actions")
    if not use_origin_label and not pos_actions:
        raise ValueError("multi_label_gen needs pos_actions (or use_origin_label)")
    field = _line_id_field(head_field)
    if field.is_repeated or field.cpp_type not in (*_INT_TYPES, FieldDescriptor.CPPTYPE_STRING):
        raise ValueError(f"head_field must be an integer or string LineId field, got {head_field!r}")
    heads = {str(head): index for head, index in head_to_index.items()}
    out = _copy(message)
    value = INVALID_LABEL
    if use_origin_label:
        value = out.label[0] if len(out.label) else INVALID_LABEL
    elif out.line_id.actions:
        actions = list(out.line_id.actions)
        priority = {int(a): i for i, a in enumerate(action_priority.split(","))} if action_priority else {}
        ranked = [a for a in actions if a in priority]
        action = min(ranked, key=priority.__getitem__) if ranked and len(actions) > 1 else actions[0]
        if action in pos_actions:
            value = pos_label
        elif action in neg_actions:
            value = neg_label
    _resize_labels(out, task_num, heads.get(str(getattr(out.line_id, head_field))), value)
    return out


# ---------------------------------------------------------------- instance reweighting

_UNKNOWN_PRIORITY = 1000  # actions, none of them ranked
_NONEXIST_PRIORITY = 2000  # no actions


def _parse_reweight(action_priority: str, reweight: str) -> tuple[dict[int, int], dict[int, int], dict[int, int]]:
    priority = {int(a): i + 1 for i, a in enumerate(action_priority.strip().split(","))}
    weights, labels = {}, {}
    for item in reweight.strip().split(","):
        try:
            action, weight, label = (int(x) for x in item.strip().split(":"))
        except ValueError as e:
            raise ValueError(f"reweight item {item!r} is not 'action:weight:label'") from e
        weights[action], labels[action] = weight, label
    return priority, weights, labels


def reweight_replicas(
    message: Message, action_priority: str, reweight: str, variant_type: str = "example"
) -> tuple[int, Message]:
    """How many times Monolith's ``instance_reweight`` emits ``message``, and the message it emits.

    ``action_priority``: actions, most important first (``"2,7,0,1"``); ``reweight``:
    ``action:weight:label`` items. The most important ranked action of ``line_id.actions``
    relabels the first label; the count multiplies the weights of that action and of the unranked
    actions with one (1 with actions, before the weights); ``pre_actions`` (an earlier, fast
    emitted label) are weighed against the actions as in Monolith's ``CalReplicas``; a message
    without actions is emitted once, one whose pre-actions outrank its actions never.
    """
    _check_message(message, variant_type)
    priority, weights, labels = _parse_reweight(action_priority, reweight)
    out = _copy(message)
    if not len(out.label):
        logger.warning("instance_reweight: a message without a label is dropped")
        return 0, out

    def most_prior(actions: Sequence[int]) -> tuple[int, int]:
        if not actions:
            return _NONEXIST_PRIORITY, 0
        ranked = [(priority[a], a) for a in actions if a in priority]
        return min(ranked) if ranked else (_UNKNOWN_PRIORITY, 0)

    def label_of(actions: Sequence[int]) -> int | None:
        rank, action = most_prior(actions)
        return labels.get(action) if rank < _UNKNOWN_PRIORITY else None

    def count(actions: Sequence[int]) -> int:
        num = 1 if actions else 0
        _, best = most_prior(actions)
        for act in actions:
            if act in priority and act != best:
                continue
            if act in weights:
                num *= weights[act]
        return num

    pre, cur = list(out.line_id.pre_actions), list(out.line_id.actions)
    pre_rank, cur_rank = most_prior(pre)[0], most_prior(cur)[0]
    if pre_rank > cur_rank:
        cur_label = label_of(cur)
        if cur_label is not None:
            out.label[0] = cur_label
        pre_label = label_of(pre)
        if pre_label is None:
            return count(cur), out
        if pre_label != int(out.label[0]):
            return count(pre) + count(cur), out
        pre_cnt, cur_cnt = count(pre), count(cur)
        if pre_cnt > cur_cnt:
            out.label[0] = -out.label[0]
            return pre_cnt - cur_cnt, out
        return cur_cnt - pre_cnt, out
    if pre_rank == _NONEXIST_PRIORITY and cur_rank == _NONEXIST_PRIORITY:
        return 1, out
    return 0, out


# ---------------------------------------------------------------- ragged features


def map_id(tensor: torch.Tensor, map_dict: Mapping[int, int], default: int = -1) -> torch.Tensor:
    """Each value of ``tensor`` through ``map_dict``, ``default`` where it has none (Monolith's ``map_id``).

    Example::

        map_id(torch.tensor([123, 456, 789, 912]), {123: 0, 456: 1, 789: 2})  # tensor([0, 1, 2, -1])
    """
    if not map_dict:
        raise ValueError("map_id needs a non-empty map_dict")
    keys = np.array(sorted(map_dict), dtype=np.int64)
    targets = np.array([map_dict[k] for k in keys], dtype=np.int64)
    values = np.asarray(tensor.cpu().numpy(), dtype=np.int64)
    at = np.clip(np.searchsorted(keys, values), 0, len(keys) - 1)
    out = np.where(keys[at] == values, targets[at], default)
    return torch.from_numpy(out.astype(tensor.cpu().numpy().dtype)).to(tensor.device)
