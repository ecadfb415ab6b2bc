"""Monolith's ``layers.norms``: ``LayerNorm`` and ``GradNorm``."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from monolith.layers.layer import Layer

__all__ = ["GradNorm", "LayerNorm"]


class LayerNorm(Layer):
    """Monolith's ``layers.LayerNorm``: normalise over the last axis (epsilon 1e-6), then
    ``gamma * x + beta``; ``gamma`` from ``initializer`` (ones when None), ``beta`` zeros.

    Example::

        LayerNorm(initializer="ones")(torch.randn(4, 8)).shape   # torch.Size([4, 8])
    """

    def __init__(self, initializer: Any, regularizer: Any = None, name: str | None = None) -> None:
        super().__init__(name)
        self.initializer, self.regularizer = initializer, regularizer

    def build(self, inputs: torch.Tensor) -> None:
        self.add_weight("beta", (inputs.shape[-1],), "zeros", inputs, self.regularizer)
        self.add_weight("gamma", (inputs.shape[-1],), self.initializer or "ones", inputs, self.regularizer)

    def call(self, inputs: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        mean = inputs.mean(dim=-1, keepdim=True)
        variance = (inputs - mean).square().mean(dim=-1, keepdim=True)
        return (inputs - mean) * torch.rsqrt(variance + 1e-6) * self.gamma + self.beta


class GradNorm(Layer):
    """Monolith's ``layers.GradNorm`` (GradNorm, Chen et al. 2018): learns task weights that balance
    the gradient norms the task losses put on shared inputs.

    Called on ``(losses, shared_inputs)`` (one loss per ``loss_names``; the shared tensors, or one),
    returns ``(gnorm_loss, weighted_loss)``: with ``w = softmax(grad_norm_weights)`` (zeros at
    first) and ``g_i`` the norm of loss ``i``'s gradient on the shared inputs (concatenated on axis
    1; not differentiated through), ``gnorm_loss = scale * sum(|w_i g_i - mean_w|^loss_pow)`` where
    ``mean_w = sum(w g) / n`` (divided by ``mean_w + epsilon`` with ``relative_diff``) trains the
    weights, and ``weighted_loss = sum(losses * w)`` (weights held constant) trains the model.
    """

    def __init__(self, loss_names: Sequence[str], scale: float = 1.0, loss_pow: float = 2.0,
                 relative_diff: bool = False, epsilon: float = 1e-6, name: str | None = None) -> None:
        super().__init__(name)
        self.loss_names, self.scale, self.loss_pow = loss_names, scale, loss_pow
        self.relative_diff, self.epsilon = relative_diff, epsilon
        self.add_weight("grad_norm_weights", (len(loss_names),), "zeros")

    def get_weights(self) -> torch.Tensor:
        """The task weights, ``softmax(grad_norm_weights)``."""
        return torch.softmax(self.grad_norm_weights, dim=0)

    def call(self, inputs: tuple[Sequence[torch.Tensor], Any], **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        losses, shared_inputs = inputs
        if len(losses) != len(self.loss_names):
            raise ValueError(f"GradNorm got {len(losses)} losses for loss_names {list(self.loss_names)}")
        shared = list(shared_inputs) if isinstance(shared_inputs, (list, tuple)) else [shared_inputs]
        gnorms = []
        for loss in losses:
            grads = torch.autograd.grad(loss, shared, retain_graph=True, allow_unused=True)
            grads = [torch.zeros_like(s) if g is None else g for g, s in zip(grads, shared)]
            gnorms.append(torch.cat(grads, dim=1).square().sum().sqrt())
        gnorms_t = torch.stack(gnorms).detach()
        weights = self.get_weights()
        n = len(self.loss_names)
        wgnorms = gnorms_t * weights
        avgnorm = wgnorms.sum() / n
        grad_diff = (wgnorms - avgnorm).abs()
        if self.relative_diff:
            grad_diff = grad_diff / (avgnorm + self.epsilon)
        gnorm_loss = grad_diff.pow(self.loss_pow).sum() * self.scale
        weighted_loss = (torch.stack(list(losses)) * weights.detach()).sum()
        return gnorm_loss, weighted_loss
