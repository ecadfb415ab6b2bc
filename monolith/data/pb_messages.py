"""Monolith's protobuf message types by the ``variant_type`` names its datasets use."""

from __future__ import annotations

from google.protobuf.message import Message

from monolith.data.proto.example_pb2 import Example, ExampleBatch
from monolith.data.proto.proto_parser_pb2 import Instance

__all__ = ["MESSAGES", "variant_name"]

#: ``variant_type`` name -> message class.
MESSAGES: dict[str, type[Message]] = {"example": Example, "example_batch": ExampleBatch, "instance": Instance}


def variant_name(variant_type: str) -> str:
    """The name of ``variant_type`` in :data:`MESSAGES` (``"examplebatch"`` is ``"example_batch"``).

    Raises:
        ValueError: not a Monolith message type.
    """
    name = "example_batch" if variant_type == "examplebatch" else variant_type
    if name not in MESSAGES:
        raise ValueError(f"variant_type must be 'example', 'example_batch' or 'instance', got {variant_type!r}")
    return name
