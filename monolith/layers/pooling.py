"""Pooling of a list of tensors: Monolith's ``SumPooling``, ``AvgPooling`` and ``MaxPooling``."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from monolith.layers.layer import Layer

__all__ = ["AvgPooling", "MaxPooling", "Pooling", "SumPooling"]


class Pooling(Layer):
    """Monolith's ``Pooling``: combines a non-empty list of same-shaped tensors element-wise; one
    tensor is returned as it is."""

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name)

    def call(self, vec_list: Sequence[torch.Tensor], **kwargs: Any) -> torch.Tensor:
        if isinstance(vec_list, torch.Tensor) or len(vec_list) == 0:
            raise ValueError(f"{type(self).__name__} takes a non-empty list of tensors, got {type(vec_list).__name__}"
                             f"{'' if isinstance(vec_list, torch.Tensor) else ' of length 0'}")
        if len(vec_list) == 1:
            return vec_list[0]
        return self.pool(torch.stack(list(vec_list)))

    def pool(self, stacked: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class SumPooling(Pooling):
    """Monolith's ``SumPooling``: the element-wise sum."""

    def pool(self, stacked: torch.Tensor) -> torch.Tensor:
        return stacked.sum(dim=0)


class AvgPooling(Pooling):
    """Monolith's ``AvgPooling``: the element-wise mean."""

    def pool(self, stacked: torch.Tensor) -> torch.Tensor:
        return stacked.sum(dim=0) / stacked.shape[0]


class MaxPooling(Pooling):
    """Monolith's ``MaxPooling``: the element-wise maximum."""

    def pool(self, stacked: torch.Tensor) -> torch.Tensor:
        return stacked.max(dim=0).values
