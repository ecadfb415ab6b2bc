"""``LHUCTower``: Monolith's ``layers.LHUCTower``, a dense tower gated by LHUC sub-towers."""

from __future__ import annotations

import functools
from typing import Any, Sequence

import torch

from monolith.layers.dense import Dense
from monolith.layers.mlp import MLP, BatchNormalization, extend_as_list, layer_activations
from monolith.layers.layer import Layer
from monolith.layers.utils import one_or_pair

__all__ = ["LHUCTower"]

# The MLP options an ``lhuc_<option>`` keyword overrides for the LHUC sub-towers.
_LHUC_OPTIONS = (
    "kernel_regularizer", "use_weight_norm", "use_learnable_weight_norm", "use_bias", "bias_regularizer",
    "enable_batch_normalization", "batch_normalization_momentum", "batch_normalization_renorm",
    "batch_normalization_renorm_clipping", "batch_normalization_renorm_momentum",
)


class LHUCTower(Layer):
    """Monolith's ``layers.LHUCTower`` (Learning Hidden Unit Contributions).

    Layer ``i`` is ``dense_i(x) * lhuc_i(lhuc_input)``: ``dense_i`` a :class:`Dense` of
    ``output_dims[i]`` (batch norm between layers with ``enable_batch_normalization``, then
    ``activations`` as :class:`MLP` reads them, but default ReLU before every layer's end but the
    last), ``lhuc_i`` an :class:`MLP` of ``lhuc_output_dims[i]`` (ReLU inside, ``2 * sigmoid`` at
    the end; its last size must be ``output_dims[i]``). ``lhuc_output_dims`` may be one list of
    hidden sizes shared by every layer (the layer's size is appended), per-layer lists, or None
    (``[output_dims[i]]``). Keywords ``lhuc_<option>`` (e.g. ``lhuc_use_bias=False``) set the LHUC
    towers' MLP options; otherwise they take the tower's.

    Called on ``x`` (both towers read it) or ``(dense_input, lhuc_input)``.

    Example::

        tower = LHUCTower(output_dims=[8, 1])
        tower((torch.ones(4, 16), torch.ones(4, 5))).shape   # torch.Size([4, 1])
    """

    def __init__(self, output_dims: Sequence[int], lhuc_output_dims: Sequence[Any] | None = None,
                 activations: Any = "relu", initializers: Any = None, use_bias: bool = True,
                 use_weight_norm: bool = True, use_learnable_weight_norm: bool = True, kernel_regularizer: Any = None,
                 bias_regularizer: Any = None, enable_batch_normalization: bool = False,
                 batch_normalization_momentum: float = 0.99, batch_normalization_renorm: bool = False,
                 batch_normalization_renorm_clipping: Any = None, batch_normalization_renorm_momentum: float = 0.99,
                 name: str | None = None, **lhuc_kwargs: Any) -> None:
        super().__init__(name)
        unknown = [k for k in lhuc_kwargs if k.removeprefix("lhuc_") not in _LHUC_OPTIONS or not k.startswith("lhuc_")]
        if unknown:
            raise TypeError(f"LHUCTower got unknown keyword arguments {unknown}; "
                            f"LHUC options are lhuc_ + one of {list(_LHUC_OPTIONS)}")
        self.output_dims, self.activations, self.initializers = list(output_dims), activations, initializers
        self.use_bias, self.use_weight_norm, self.use_learnable_weight_norm = (
            use_bias, use_weight_norm, use_learnable_weight_norm)
        self.kernel_regularizer, self.bias_regularizer = kernel_regularizer, bias_regularizer
        self.enable_batch_normalization = enable_batch_normalization
        self.batch_normalization_momentum = batch_normalization_momentum
        self.batch_normalization_renorm = batch_normalization_renorm
        self.batch_normalization_renorm_clipping = batch_normalization_renorm_clipping
        self.batch_normalization_renorm_momentum = batch_normalization_renorm_momentum
        self.lhuc_kwargs = dict(lhuc_kwargs)
        n_layers = len(self.output_dims)
        self.lhuc_output_dims = self._lhuc_dims(lhuc_output_dims)
        layer_inits = extend_as_list(initializers, n_layers)
        acts = layer_activations(activations, n_layers)

        batch_norm = functools.partial(BatchNormalization, batch_normalization_momentum, batch_normalization_renorm,
                                       batch_normalization_renorm_clipping, batch_normalization_renorm_momentum)

        self.extra_layers = torch.nn.ModuleList([batch_norm(name="batch_norm")] if enable_batch_normalization else [])
        dense_layers, lhuc_layers = [], []
        for i, dim in enumerate(self.output_dims):
            block: list[torch.nn.Module] = [Dense(
                dim, use_bias=use_bias, kernel_initializer=layer_inits[i], bias_initializer="zeros",
                allow_kernel_norm=use_weight_norm, kernel_norm_trainable=use_learnable_weight_norm,
                kernel_regularizer=kernel_regularizer, bias_regularizer=bias_regularizer,
                name=f"layer_{i + 1}/dense")]
            if i != n_layers - 1 and enable_batch_normalization:
                block.append(batch_norm(name=f"layer_{i + 1}/batch_norm"))
            if acts[i] is not None:
                block.append(acts[i])
            dense_layers.append(torch.nn.Sequential(*block))
            dims = self.lhuc_output_dims[i]
            lhuc_acts = ["relu"] * (len(dims) - 1) + ["sigmoid2"]
            options = {opt: self.lhuc_kwargs.get(f"lhuc_{opt}", getattr(self, opt)) for opt in _LHUC_OPTIONS}
            lhuc_layers.append(MLP(dims, activations=lhuc_acts, initializers=layer_inits[i],
                                   name=f"layer_{i + 1}/lhuc", **options))
        self.dense_layers = torch.nn.ModuleList(dense_layers)
        self.lhuc_layers = torch.nn.ModuleList(lhuc_layers)

    def _lhuc_dims(self, lhuc_output_dims: Sequence[Any] | None) -> list[list[int]]:
        if not lhuc_output_dims:
            return [[dim] for dim in self.output_dims]
        if all(isinstance(dims, (list, tuple)) for dims in lhuc_output_dims):
            for i, dims in enumerate(lhuc_output_dims):
                if dims[-1] != self.output_dims[i]:
                    raise ValueError(f"lhuc_output_dims[{i}] ends in {dims[-1]}; the last dim of an LHUC "
                                     f"tower must equal output_dims[{i}] = {self.output_dims[i]}")
            return [list(dims) for dims in lhuc_output_dims]
        if all(isinstance(dims, int) for dims in lhuc_output_dims):
            return [list(lhuc_output_dims) + [dim] for dim in self.output_dims]
        raise ValueError(f"lhuc_output_dims must be a list of ints or of int lists, got {lhuc_output_dims!r}")

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(self.lhuc_kwargs)  # as Monolith's: the lhuc_ keywords at the top level
        return config

    def call(self, inputs: Any, **kwargs: Any) -> torch.Tensor:
        dense_input, lhuc_input = one_or_pair(inputs, "LHUCTower", "dense_input, lhuc_input")
        out = dense_input
        for layer in self.extra_layers:
            out = layer(out)
        for layer, lhuc_layer in zip(self.dense_layers, self.lhuc_layers):
            out = layer(out) * lhuc_layer(lhuc_input)
        return out
