"""What a served model accepts: Monolith's ``ServingInputReceiver``, as feature names and widths.

Monolith's receiver holds TF placeholders that parse serialized examples; a served PyTorch model
takes JSON instead, so the receiver only names the request's features: jagged FID features (a
list of FIDs per example) and dense float features (a row of fixed width per example).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import torch

from monolith.sparse import Batch, JaggedTensor, KeyedJaggedTensor

__all__ = ["ServingInputReceiver"]


@dataclasses.dataclass(frozen=True, init=False)
class ServingInputReceiver:
    """The features of a serving request; a model's ``serving_input_receiver_fn`` returns one.

    Args:
        sparse_features: names of the FID features (each example carries a list of FIDs); a dict
            (TensorFlow's ``ServingInputReceiver(features, ...)``) names them by its keys.
        dense_features: name -> width of the float features (each example carries one row).

    Raises:
        ValueError: a name is empty, not a string or repeated (also between sparse and dense), or a
            width is not a positive integer.

    Example::

        def serving_input_receiver_fn(self):
            return ServingInputReceiver(sparse_features=["uid", "mov"], dense_features={"ctx": 3})
    """

    sparse_features: list[str]
    dense_features: dict[str, int] = dataclasses.field(default_factory=dict)

    def __init__(self, sparse_features: Sequence[str] | Mapping[str, Any],
                 dense_features: Mapping[str, int] | None = None) -> None:
        if isinstance(sparse_features, Mapping):  # TensorFlow's features dict: its names (Monolith's dummy is {})
            sparse_features = list(sparse_features)
        if isinstance(sparse_features, str) or not isinstance(sparse_features, Sequence):
            raise ValueError(f"ServingInputReceiver: sparse_features must be a list of names, got {sparse_features!r}")
        dense_features = dict(dense_features or {})
        names = [*sparse_features, *dense_features]
        for name in names:
            if not isinstance(name, str) or not name:
                raise ValueError(f"ServingInputReceiver: feature names must be non-empty strings, got {name!r}")
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"ServingInputReceiver: features {repeated} are named more than once")
        for name, width in dense_features.items():
            if isinstance(width, bool) or not isinstance(width, int) or width < 1:
                raise ValueError(f"ServingInputReceiver: dense feature '{name}' needs a positive int width, "
                                 f"got {width!r}")
        object.__setattr__(self, "sparse_features", list(sparse_features))
        object.__setattr__(self, "dense_features", dense_features)

    @property
    def features(self) -> dict[str, JaggedTensor | torch.Tensor]:
        """One empty example of every feature, as Monolith's receiver exposes its tensors (the model
        dump describes the receiver from them)."""
        batch = self.example_batch(1)
        return {**batch.sparse.to_dict(), **batch.dense}

    def example_batch(self, batch_size: int) -> Batch:
        """A batch of ``batch_size`` examples without FIDs and with zero dense rows."""
        sparse = KeyedJaggedTensor(self.sparse_features, torch.empty(0, dtype=torch.int64),
                                   torch.zeros(len(self.sparse_features) * batch_size, dtype=torch.int64),
                                   stride=batch_size)
        return Batch(sparse, {name: torch.zeros(batch_size, width) for name, width in self.dense_features.items()})

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``signature.json``."""
        return {"sparse_features": list(self.sparse_features), "dense_features": dict(self.dense_features)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ServingInputReceiver":
        """The receiver :meth:`to_dict` recorded."""
        return cls(data["sparse_features"], data["dense_features"])
