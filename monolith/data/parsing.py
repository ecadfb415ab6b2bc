"""Monolith's parse functions (``native_training/data/parsers.py``) over batches of messages.

``parse_examples`` / ``parse_instances`` take a batch of ``Example`` / ``Instance`` messages (the
list that ``Dataset.batch`` makes of a :class:`~monolith.data.messages.PBMessageDataset`, or
serialized bytes, e.g. Kafka payloads); ``parse_example_batch`` one ``ExampleBatch`` (or several).
They return one :class:`~monolith.sparse.Batch`, with Monolith's arguments:

* ``sparse_features`` (``fidv1_features`` by slot / ``fidv2_features`` by name for instances):
  jagged int64 FID features, empty where a message lacks them;
* ``dense_features`` with ``dense_feature_shapes`` (and ``dense_feature_types``, float32 or int64):
  ``[B]`` for shape 1, else ``[B, shape]``, zeros where a message lacks them; ``"label"`` is the
  label (INVALID_LABEL for missing values) and ``"instance_weight"`` the weight;
* ``extra_features`` with ``extra_feature_shapes``: ``LineId`` fields (``uid``, ``req_time``,
  ``actions`` ...).

The decoding is :class:`~monolith.data.pb_dataset.PBParser`'s (its module doc has the details: v1
FIDs converted to v2, bad messages skipped and logged, or raised with ``strict=True``). Differences
from Monolith: string dense features and string LineId fields cannot be in a batch (a clear
``ValueError``); ``label`` is always in the batch.

Asking for a feature by slot (``3``, ``"slot_3"``, ``"fc_slot_3"``) of Examples whose FID
features have names (``"uid"``) finds nothing without a feature list mapping the slot to its name;
instead of returning the empty feature silently, the parser warns (``UserWarning``), naming the
features the messages have (as :class:`~monolith.data.pb_dataset.PBDataset` does).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from google.protobuf.message import Message

from monolith.data.base import logger
from monolith.data.feature_list import FeatureList
from monolith.data.pb_dataset import PBParser
from monolith.sparse import Batch

__all__ = ["parse_example_batch", "parse_examples", "parse_instances"]

def _dtype(value: Any, name: str) -> np.dtype:
    if isinstance(value, torch.dtype):
        value = {torch.float32: np.float32, torch.int64: np.int64}.get(value, value)
    try:
        dtype = np.dtype(value)
    except TypeError:
        dtype = None
    if dtype not in (np.dtype(np.float32), np.dtype(np.int64)):
        raise ValueError(
            f"dense feature {name!r} has type {value!r}; a batch holds float32 or int64 tensors (string "
            "features cannot be batched: hash them into FIDs with monolith.fid.hash_string_fid)"
        )
    return dtype


def _widths(names: Sequence[str] | None, shapes: Sequence[int] | None, what: str) -> dict[str, int] | None:
    if names is None:
        return None
    names = list(names)
    shapes = [1] * len(names) if shapes is None else list(shapes)
    if len(shapes) != len(names):
        raise ValueError(f"{what}: {len(names)} names but {len(shapes)} shapes")
    bad = [s for s in shapes if not isinstance(s, int) or s < 1]
    if bad:
        raise ValueError(f"{what}: shapes must be ints >= 1, got {bad}")
    return dict(zip(names, shapes))


def _payloads(messages: Iterable[bytes | Message]) -> list[tuple[int, bytes]]:
    return [
        (i, m.SerializeToString() if isinstance(m, Message) else bytes(m)) for i, m in enumerate(messages)
    ]


def _parse(
    variant_type: str,
    messages: Iterable[bytes | Message],
    sparse_features: Sequence[str | int] | None,
    dense_features: Sequence[str] | None,
    dense_feature_shapes: Sequence[int] | None,
    dense_feature_types: Sequence[Any] | None,
    extra_features: Sequence[str] | None,
    extra_feature_shapes: Sequence[int] | None,
    feature_list: FeatureList | str | os.PathLike[str] | None,
    strict: bool,
) -> Batch:
    dense = _widths(dense_features, dense_feature_shapes, "dense_features")
    dtypes = {}
    if dense is not None and dense_feature_types is not None:
        if len(dense_feature_types) != len(dense):
            raise ValueError(f"dense_features: {len(dense)} names but {len(dense_feature_types)} types")
        dtypes = {name: _dtype(t, name) for name, t in zip(dense, dense_feature_types)}
    extra = _widths(extra_features, extra_feature_shapes, "extra_features") or {}
    parser = PBParser(
        variant_type,
        feature_list=feature_list,
        sparse_features=sparse_features,
        dense_features=dense,
        dense_dtypes=dtypes,
        line_id_fields=extra,
    )
    frames = _payloads(messages)
    rows, bad = parser.decode(frames)
    for index, reason in sorted(bad):
        if strict:
            raise ValueError(f"message {index} of the batch: malformed record: {reason}")
        logger.warning("skipping malformed message %d of the batch: %s", index, reason)
    return rows.to_batch()


def parse_examples(
    messages: Iterable[bytes | Message],
    sparse_features: Sequence[str | int] | None = None,
    dense_features: Sequence[str] | None = None,
    dense_feature_shapes: Sequence[int] | None = None,
    dense_feature_types: Sequence[Any] | None = None,
    extra_features: Sequence[str] | None = None,
    extra_feature_shapes: Sequence[int] | None = None,
    *,
    feature_list: FeatureList | str | os.PathLike[str] | None = None,
    strict: bool = False,
) -> Batch:
    """A batch of ``Example`` messages (or serialized ones) as one :class:`Batch` (see the module doc).

    Example::

        parse_examples(examples, sparse_features=["uid", "item"], dense_features=["label"],
                       dense_feature_shapes=[1], extra_features=["req_time"], extra_feature_shapes=[1])
        # Batch: uid, item jagged; label [B]; req_time int64 [B]
    """
    return _parse(
        "example", messages, sparse_features, dense_features, dense_feature_shapes, dense_feature_types,
        extra_features, extra_feature_shapes, feature_list, strict,
    )


def parse_instances(
    messages: Iterable[bytes | Message],
    fidv1_features: Sequence[int | str] | None = None,
    fidv2_features: Sequence[str] | None = None,
    dense_features: Sequence[str] | None = None,
    dense_feature_shapes: Sequence[int] | None = None,
    dense_feature_types: Sequence[Any] | None = None,
    extra_features: Sequence[str] | None = None,
    extra_feature_shapes: Sequence[int] | None = None,
    *,
    feature_list: FeatureList | str | os.PathLike[str] | None = None,
    strict: bool = False,
) -> Batch:
    """A batch of ``Instance`` messages as one :class:`Batch`: ``fidv1_features`` are slots of the
    flat v1 FIDs (named ``slot_{n}``, or by the feature list), ``fidv2_features`` names of the
    instance's named features (see the module doc)."""
    sparse = None
    if fidv1_features is not None or fidv2_features is not None:
        sparse = [*(fidv1_features or ()), *(fidv2_features or ())]
    return _parse(
        "instance", messages, sparse, dense_features, dense_feature_shapes, dense_feature_types,
        extra_features, extra_feature_shapes, feature_list, strict,
    )


def parse_example_batch(
    messages: bytes | Message | Iterable[bytes | Message],
    sparse_features: Sequence[str | int] | None = None,
    dense_features: Sequence[str] | None = None,
    dense_feature_shapes: Sequence[int] | None = None,
    dense_feature_types: Sequence[Any] | None = None,
    extra_features: Sequence[str] | None = None,
    extra_feature_shapes: Sequence[int] | None = None,
    *,
    feature_list: FeatureList | str | os.PathLike[str] | None = None,
    strict: bool = False,
) -> Batch:
    """One ``ExampleBatch`` (as Monolith's ``parse_example_batch``), or several in a row, as one
    :class:`Batch` of their examples; shared features are repeated for every example."""
    if isinstance(messages, (bytes, bytearray, Message)):
        messages = [messages]
    return _parse(
        "example_batch", messages, sparse_features, dense_features, dense_feature_shapes, dense_feature_types,
        extra_features, extra_feature_shapes, feature_list, strict,
    )

