"""``Dense``: Monolith's ``layers.Dense``, ``y = activation(x W + b)`` with optional kernel norm."""

from __future__ import annotations

from typing import Any

import torch

import monolith.layers.activations as activations_lib
from monolith.layers.layer import Layer

__all__ = ["Dense", "l2_normalize"]


def l2_normalize(x: torch.Tensor, dim: int, epsilon: float = 1e-6) -> torch.Tensor:
    """TF's ``tf.nn.l2_normalize``: ``x / sqrt(max(sum(x²), epsilon))`` along ``dim``."""
    return x * torch.rsqrt(torch.clamp(x.square().sum(dim=dim, keepdim=True), min=epsilon))


class Dense(Layer):
    """Monolith's ``layers.Dense``: ``activation(x @ kernel + bias)`` over the last input dimension.

    The kernel is ``[input_dim, units]`` as in Keras, drawn from ``kernel_initializer``
    (glorot-uniform) with a zero bias, so a ported model starts where Monolith's starts
    (``torch.nn.Linear`` draws a kaiming-uniform weight and a non-zero bias). The input size is
    taken from the first call. With ``allow_kernel_norm`` the kernel used is each column
    l2-normalised (``tf.nn.l2_normalize``, epsilon 1e-6), times a trainable per-column norm
    initialised to the initial kernel's column norms when ``kernel_norm_trainable``.

    ``partitioner`` and ``optimizer`` are accepted for Monolith's signature: the kernel is one
    tensor, and the model's dense optimizer trains every parameter. With ``inactive_relu_monitor``
    and a ReLU activation, training calls keep ``inactive_relu_count_moving_avg`` (per unit, decay
    ``inactive_relu_monitor_decay``), the moving count of examples whose output is 0.

    Example::

        dense = Dense(units=4, activation="relu")
        dense(torch.ones(2, 3)).shape   # torch.Size([2, 4]); dense.kernel is [3, 4]
    """

    def __init__(self, units: int, activation: Any = None, use_bias: bool = True,
                 kernel_initializer: Any = "glorot_uniform", bias_initializer: Any = "zeros",
                 kernel_regularizer: Any = None, bias_regularizer: Any = None, allow_kernel_norm: bool = False,
                 kernel_norm_trainable: bool = False, partitioner: Any = None, inactive_relu_monitor: bool = False,
                 inactive_relu_monitor_decay: float = 0.1, optimizer: Any = None, name: str | None = None) -> None:
        super().__init__(name)
        if not isinstance(units, int) or units <= 0:
            raise ValueError(f"Dense units must be a positive int, got {units!r}")
        self.units, self.activation, self.use_bias = units, activation, use_bias
        self.kernel_initializer, self.bias_initializer = kernel_initializer or "glorot_uniform", bias_initializer
        self.kernel_regularizer, self.bias_regularizer = kernel_regularizer, bias_regularizer
        self.allow_kernel_norm, self.kernel_norm_trainable = allow_kernel_norm, kernel_norm_trainable
        self.partitioner, self.optimizer = partitioner, optimizer
        self.inactive_relu_monitor, self.inactive_relu_monitor_decay = inactive_relu_monitor, inactive_relu_monitor_decay
        self.activation_fn = activations_lib.get(activation)

    def build(self, inputs: torch.Tensor) -> None:
        if inputs.dim() < 2:
            raise ValueError(f"Dense {self.name!r} needs inputs of rank >= 2, got shape {tuple(inputs.shape)}")
        kernel = self.add_weight("kernel", (inputs.shape[-1], self.units), self.kernel_initializer, inputs,
                                 self.kernel_regularizer)
        if self.allow_kernel_norm and self.kernel_norm_trainable:
            norm = kernel.detach().norm(dim=0)
            self.add_weight("trainable_kernel_norm", norm.shape, lambda shape, dtype: norm.clone(), inputs)
        if self.use_bias:
            self.add_weight("bias", (self.units,), self.bias_initializer, inputs, self.bias_regularizer)
        if self.inactive_relu_monitor and isinstance(self.activation_fn, activations_lib.ReLU):
            self.register_buffer("inactive_relu_count_moving_avg",
                                 torch.zeros(self.units, device=inputs.device))

    def effective_kernel(self) -> torch.Tensor:
        """The kernel the layer multiplies by: the raw one, or its kernel-normed form."""
        if not self.allow_kernel_norm:
            return self.kernel
        kernel = l2_normalize(self.kernel, dim=0)
        return kernel * self.trainable_kernel_norm if self.kernel_norm_trainable else kernel

    def call(self, inputs: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        out = torch.matmul(inputs, self.effective_kernel())
        if self.use_bias:
            out = out + self.bias
        if self.activation_fn is not None:
            out = self.activation_fn(out)
        monitor = getattr(self, "inactive_relu_count_moving_avg", None)
        if monitor is not None and self.training:
            with torch.no_grad():
                inactive = (out.reshape(-1, self.units) == 0).sum(dim=0).to(monitor.dtype)
                monitor.mul_(1 - self.inactive_relu_monitor_decay).add_(self.inactive_relu_monitor_decay * inactive)
        return out
