"""``LogitCorrection``: Monolith's ``layers.LogitCorrection``, unbiased logits to the sampled distribution."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

import monolith.layers.activations as activations_lib
from monolith.layers.layer import Layer

__all__ = ["LogitCorrection"]


class LogitCorrection(Layer):
    """Map unbiased logits to the biased training distribution (Monolith's ``layers.LogitCorrection``).

    Called on ``(logits, sample_rate)`` (``sample_rate`` may be None; it broadcasts against ``logits``):

    ========================  ====================  ==========================================
    ``sample_rate``           ``sample_bias``       result
    ========================  ====================  ==========================================
    given                     False                 ``logits - log(sample_rate)``
    given                     True                  ``log_sigmoid(logits) - log(sample_rate)``
    None                      True                  ``log_sigmoid(logits)``
    None                      False                 ``logits``
    ========================  ====================  ==========================================

    Args:
        activation: applied to the corrected logits: a name (``"sigmoid"``), a module or a function;
            None for none.
        sample_bias: whether to correct for fast-emit sample bias.
        name: the layer's name.

    Example::

        LogitCorrection()((torch.tensor([0.5]), torch.tensor([0.1])))   # 0.5 - log(0.1)
    """

    def __init__(self, activation: Any = None, sample_bias: bool = False, name: str | None = None) -> None:
        super().__init__(name)
        self.activation, self.sample_bias = activation, sample_bias
        self.activation_fn = activations_lib.get(activation)

    def call(self, inputs: tuple[torch.Tensor, torch.Tensor | float | None], **kwargs: Any) -> torch.Tensor:
        logits, sample_rate = inputs
        corrected = self.get_sample_logits(logits, sample_rate, self.sample_bias)
        return corrected if self.activation_fn is None else self.activation_fn(corrected)

    @staticmethod
    def get_sample_logits(logits: torch.Tensor, sample_rate: torch.Tensor | float | None,
                          sample_bias: bool) -> torch.Tensor:
        """The table above; ``F.logsigmoid`` is Monolith's ``safe_log_sigmoid``."""
        corrected = F.logsigmoid(logits) if sample_bias else logits
        if sample_rate is None:
            return corrected
        return corrected - torch.log(torch.as_tensor(sample_rate, dtype=logits.dtype, device=logits.device))
