"""Keras weight regularisers (``tf.keras.regularizers``): a penalty function of one weight."""

from __future__ import annotations

from collections.abc import Callable
from typing import Union

import torch

__all__ = ["L1", "L1L2", "L2", "Regularizer", "get"]

RegularizerLike = Union[str, "Regularizer", Callable[[torch.Tensor], torch.Tensor], None]


class Regularizer:
    """Base of the Keras regularisers: ``reg(weight) -> scalar penalty``."""

    def __call__(self, weight: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class L1L2(Regularizer):
    """``tf.keras.regularizers.L1L2(l1=0.0, l2=0.0)``: ``l1 * sum|w| + l2 * sum w²``."""

    def __init__(self, l1: float = 0.0, l2: float = 0.0) -> None:
        self.l1, self.l2 = l1, l2

    def __call__(self, weight: torch.Tensor) -> torch.Tensor:
        return self.l1 * weight.abs().sum() + self.l2 * weight.square().sum()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(l1={self.l1}, l2={self.l2})"


class L1(L1L2):
    """``tf.keras.regularizers.L1(l1=0.01)``."""

    def __init__(self, l1: float = 0.01) -> None:
        super().__init__(l1=l1)


class L2(L1L2):
    """``tf.keras.regularizers.L2(l2=0.01)``."""

    def __init__(self, l2: float = 0.01) -> None:
        super().__init__(l2=l2)


_BY_NAME = {"l1": L1, "l2": L2, "l1_l2": L1L2, "l1l2": L1L2}


def get(identifier: RegularizerLike) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """Keras's ``regularizers.get``: None, a name (``"l2"`` is ``L2(0.01)``) or a function of the weight."""
    if identifier is None:
        return None
    if isinstance(identifier, str):
        if identifier.lower() not in _BY_NAME:
            raise ValueError(f"unknown regularizer {identifier!r}; expected one of {sorted(_BY_NAME)}")
        return _BY_NAME[identifier.lower()]()
    if callable(identifier):
        return identifier
    raise TypeError(f"regularizer must be a name or a function of the weight, got {identifier!r}")
