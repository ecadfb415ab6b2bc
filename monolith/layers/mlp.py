"""``MLP``: Monolith's ``layers.MLP``, a stack of :class:`Dense` layers."""

from __future__ import annotations

import functools
import copy
from typing import Any, Sequence

import torch

import monolith.layers.activations as activations_lib
from monolith.layers.dense import Dense
from monolith.layers.layer import Layer

__all__ = ["BatchNormalization", "MLP", "extend_as_list", "layer_activations"]


def extend_as_list(value: Any, n: int) -> list[Any]:
    """Monolith's ``extend_as_list``: a list padded with None to ``n``, or ``n`` copies of a value."""
    if isinstance(value, (list, tuple)):
        return list(value) + [None] * (n - len(value))
    return [value if i == 0 else copy.deepcopy(value) for i in range(n)]


def layer_activations(activations: Any, n_layers: int) -> list[torch.nn.Module | None]:
    """Monolith's rule for a tower's activations: None is ReLU between layers; one activation applies
    between layers (never after the last); a list gives one per layer."""
    if activations is None:
        return [activations_lib.get("relu") for _ in range(n_layers - 1)] + [None]
    if isinstance(activations, (list, tuple)):
        if len(activations) != n_layers:
            raise ValueError(f"{len(activations)} activations for {n_layers} layers; give one per layer")
        return [activations_lib.get(act) for act in activations]
    return [activations_lib.get(activations) if i != n_layers - 1 else None for i in range(n_layers)]


class BatchNormalization(Layer):
    """Keras's ``BatchNormalization`` over the last axis (epsilon 1e-3), as Monolith's towers use it:
    batch statistics in training, moving ones (``momentum``) in eval; ``renorm`` is not supported."""

    def __init__(self, momentum: float = 0.99, renorm: bool = False, renorm_clipping: Any = None,
                 renorm_momentum: float = 0.99, epsilon: float = 1e-3, name: str | None = None) -> None:
        super().__init__(name)
        if renorm:
            raise ValueError("BatchNormalization renorm=True (batch renormalization) is not supported")
        self.momentum, self.renorm, self.renorm_clipping, self.renorm_momentum = (
            momentum, renorm, renorm_clipping, renorm_momentum)
        self.epsilon = epsilon
        self.norm = torch.nn.LazyBatchNorm1d(eps=epsilon, momentum=1.0 - momentum)

    def call(self, inputs: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return self.norm(inputs.reshape(-1, inputs.shape[-1])).reshape(inputs.shape)


class MLP(Layer):
    """Monolith's ``layers.MLP``: ``len(output_dims)`` :class:`Dense` layers.

    Each Dense uses ``initializers[i]`` (one initialiser for all, or a list; None is glorot-uniform),
    a zero bias, and Monolith's kernel norm (``use_weight_norm``, ``use_learnable_weight_norm``: on
    by default, as in Monolith). ``activations``: see :func:`layer_activations` (default ReLU
    between layers, none after the last). With ``enable_batch_normalization`` a batch norm comes
    before the first Dense and after every Dense but the last. Works on any ``[..., input_dim]``.

    Example::

        mlp = MLP(output_dims=[8, 1])
        mlp(torch.ones(4, 16)).shape   # torch.Size([4, 1])
    """

    def __init__(self, output_dims: Sequence[int], activations: Any = None, initializers: Any = None,
                 kernel_regularizer: Any = None, use_weight_norm: bool = True, use_learnable_weight_norm: bool = True,
                 use_bias: bool = True, bias_regularizer: Any = None, enable_batch_normalization: bool = False,
                 batch_normalization_momentum: float = 0.99, batch_normalization_renorm: bool = False,
                 batch_normalization_renorm_clipping: Any = None, batch_normalization_renorm_momentum: float = 0.99,
                 name: str | None = None) -> None:
        super().__init__(name)
        if not output_dims:
            raise ValueError(f"MLP output_dims must list at least one layer size, got {output_dims!r}")
        self.output_dims, self.activations, self.initializers = list(output_dims), activations, initializers
        self.kernel_regularizer, self.bias_regularizer = kernel_regularizer, bias_regularizer
        self.use_weight_norm, self.use_learnable_weight_norm, self.use_bias = (
            use_weight_norm, use_learnable_weight_norm, use_bias)
        self.enable_batch_normalization = enable_batch_normalization
        self.batch_normalization_momentum = batch_normalization_momentum
        self.batch_normalization_renorm = batch_normalization_renorm
        self.batch_normalization_renorm_clipping = batch_normalization_renorm_clipping
        self.batch_normalization_renorm_momentum = batch_normalization_renorm_momentum
        n_layers = len(self.output_dims)
        layer_inits = extend_as_list(initializers, n_layers)
        acts = layer_activations(activations, n_layers)

        batch_norm = functools.partial(BatchNormalization, batch_normalization_momentum, batch_normalization_renorm,
                                       batch_normalization_renorm_clipping, batch_normalization_renorm_momentum)

        stacked: list[torch.nn.Module] = [batch_norm(name="BatchNorm/in")] if enable_batch_normalization else []
        for i, dim in enumerate(self.output_dims):
            stacked.append(Dense(dim, use_bias=use_bias, kernel_initializer=layer_inits[i],
                                 bias_initializer="zeros", allow_kernel_norm=use_weight_norm,
                                 kernel_norm_trainable=use_learnable_weight_norm,
                                 kernel_regularizer=kernel_regularizer, bias_regularizer=bias_regularizer,
                                 name=f"dense_{i}"))
            if i != n_layers - 1 and enable_batch_normalization:
                stacked.append(batch_norm(name="BatchNorm/out"))
            if acts[i] is not None:
                stacked.append(acts[i])
        self._stacked_layers = torch.nn.ModuleList(stacked)

    def call(self, inputs: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        out = inputs
        for layer in self._stacked_layers:
            out = layer(out)
        return out

    def get_layer(self, index: int) -> torch.nn.Module:
        """The ``index``-th of the stacked layers (Dense, batch norm and activation layers in order)."""
        return self._stacked_layers[index]
