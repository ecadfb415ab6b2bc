"""Embedding layouts: which feature slices make up a named embedding output (Monolith's ``OutConfig``)."""

from __future__ import annotations

import dataclasses
from typing import Sequence

#: ``lookup_embedding_slice``'s ``out_type`` -> the layout's out type.
OUT_TYPES = {None: "none", "none": "none", "concat": "concat", "stack": "stack", "add_n": "addn", "addn": "addn"}


@dataclasses.dataclass(frozen=True)
class SliceLayout:
    """Columns ``[start, end)`` of feature ``feature_name``'s rows."""

    feature_name: str
    start: int
    end: int


@dataclasses.dataclass(frozen=True)
class OutConfig:
    """A named embedding output: its slices, how they are combined and the output shapes.

    Shapes have ``-1`` as their first (batch) dimension.
    """

    slice_configs: tuple[SliceLayout, ...]
    out_type: str
    shape: tuple[tuple[int, ...], ...]

    @classmethod
    def build(cls, slice_list: Sequence[tuple[str, object]], out_type: str | None,
              shape_list: Sequence[Sequence[int]]) -> "OutConfig":
        """From ``(feature_name, FeatureSlice)`` pairs, an out type and output shapes."""
        if out_type not in OUT_TYPES:
            raise ValueError(f"out_type {out_type!r} is not one of {sorted(k for k in OUT_TYPES if k)} or None")
        slices = tuple(SliceLayout(name, int(s.start), int(s.end)) for name, s in slice_list)
        shapes = tuple((-1, *(int(d) for d in list(shape)[1:])) for shape in shape_list)
        return cls(slices, OUT_TYPES[out_type], shapes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "OutConfig":
        return cls(tuple(SliceLayout(**s) for s in data["slice_configs"]), data["out_type"],
                   tuple(tuple(s) for s in data["shape"]))
