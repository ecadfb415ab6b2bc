"""``AddBias``: Monolith's ``layers.AddBias``, a learned bias over every non-batch element."""

from __future__ import annotations

from typing import Any

import torch

from monolith.layers.layer import Layer

__all__ = ["AddBias"]


class AddBias(Layer):
    """Monolith's ``layers.AddBias``: ``inputs + bias`` with ``bias`` shaped as ``inputs.shape[1:]``
    (zeros unless ``initializer`` says otherwise). Inputs are channels-last (Monolith's default
    ``data_format``); its ``channels_first`` reshaping is not supported.

    Example::

        AddBias()(torch.ones(2, 3)).shape   # torch.Size([2, 3]); bias is [3]
    """

    def __init__(self, initializer: Any = None, regularizer: Any = None, name: str | None = None) -> None:
        super().__init__(name)
        self.initializer, self.regularizer = initializer, regularizer

    def build(self, inputs: torch.Tensor) -> None:
        if inputs.dim() < 2:
            raise ValueError(f"AddBias needs inputs of rank >= 2, got shape {tuple(inputs.shape)}")
        self.add_weight("bias", inputs.shape[1:], self.initializer or "zeros", inputs, self.regularizer)

    def call(self, inputs: torch.Tensor, data_format: str = "channels_last", **kwargs: Any) -> torch.Tensor:
        if data_format != "channels_last":
            raise ValueError(f"AddBias data_format {data_format!r} is not supported; inputs are channels_last")
        return inputs + self.bias
