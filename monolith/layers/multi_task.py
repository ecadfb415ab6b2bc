"""Multi-task layers: Monolith's ``MMoE`` and ``SNR``."""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from monolith.layers.layer import Layer
from monolith.layers.mlp import MLP
from monolith.layers.utils import one_or_pair
from monolith.mode_keys import ModeKeys

__all__ = ["MMoE", "SNR"]


class MMoE(Layer):
    """Monolith's ``layers.MMoE`` (Multi-gate Mixture-of-Experts).

    ``num_experts`` :class:`MLP` experts (``expert_output_dims``: one size list for all, or one per
    expert, all ending in the same size; activations and initialisers one for all or one per
    expert) and one softmax gate per task over the experts, a zero-initialised ``gate_weight``
    ``[gate_input_dim, num_experts * num_tasks]``. ``gate_type`` ``"topk"`` keeps each task's
    ``top_k`` gates (renormalised); ``"noise_topk"`` first adds ``N(0, 1) * softplus(x @ gate_noise)``.
    With top-k gates a call adds to :attr:`losses` the squared coefficient of variation of each
    task's expert importance (gates summed over the batch), a ``[num_tasks]`` tensor.

    Called on ``x`` (experts and gates read it) or ``(expert_input, gate_input)``; returns
    ``num_tasks`` tensors ``[batch, expert_output_dim]``.

    Example::

        mmoe = MMoE(num_tasks=2, expert_output_dims=[8, 4], expert_activations="relu", num_experts=3)
        [t.shape for t in mmoe(torch.ones(5, 16))]   # [torch.Size([5, 4]), torch.Size([5, 4])]
    """

    def __init__(self, num_tasks: int, expert_output_dims: Sequence[Any], expert_activations: Any,
                 expert_initializers: Any = "glorot_uniform", gate_type: str = "softmax", top_k: int = 1,
                 num_experts: int | None = None, kernel_regularizer: Any = None, use_weight_norm: bool = True,
                 use_learnable_weight_norm: bool = True, use_bias: bool = True, bias_regularizer: Any = None,
                 enable_batch_normalization: bool = False, batch_normalization_momentum: float = 0.99,
                 batch_normalization_renorm: bool = False, batch_normalization_renorm_clipping: Any = None,
                 batch_normalization_renorm_momentum: float = 0.99, name: str | None = None) -> None:
        super().__init__(name)
        if gate_type not in ("softmax", "topk", "noise_topk"):
            raise ValueError(f"MMoE gate_type must be softmax, topk or noise_topk, got {gate_type!r}")
        self.num_tasks, self.expert_output_dims = num_tasks, expert_output_dims
        self.expert_activations, self.expert_initializers = expert_activations, expert_initializers
        self.gate_type, self.top_k, self.num_experts = gate_type, top_k, num_experts
        self.kernel_regularizer, self.use_weight_norm = kernel_regularizer, use_weight_norm
        self.use_learnable_weight_norm, self.use_bias, self.bias_regularizer = (
            use_learnable_weight_norm, use_bias, bias_regularizer)
        self.enable_batch_normalization = enable_batch_normalization
        self.batch_normalization_momentum = batch_normalization_momentum
        self.batch_normalization_renorm = batch_normalization_renorm
        self.batch_normalization_renorm_clipping = batch_normalization_renorm_clipping
        self.batch_normalization_renorm_momentum = batch_normalization_renorm_momentum
        per_expert_dims = all(isinstance(dims, (list, tuple)) for dims in expert_output_dims)
        if num_experts is None:
            for candidate in (expert_output_dims if per_expert_dims else None, expert_activations,
                              expert_initializers):
                if isinstance(candidate, (list, tuple)):
                    num_experts = len(candidate)
                    break
            else:
                raise ValueError("MMoE num_experts not set, and no per-expert list to count them from")
        self._num_experts = num_experts
        dims = [list(d) for d in expert_output_dims] if per_expert_dims else [list(expert_output_dims)] * num_experts
        if len({d[-1] for d in dims}) != 1:
            raise ValueError(f"MMoE experts must end in the same size, got {expert_output_dims!r}")
        acts = self._per_expert(expert_activations, "expert_activations")
        inits = self._per_expert(expert_initializers, "expert_initializers")
        self.experts = torch.nn.ModuleList([
            MLP(dims[i], activations=acts[i], initializers=inits[i], kernel_regularizer=kernel_regularizer,
                use_weight_norm=use_weight_norm, use_learnable_weight_norm=use_learnable_weight_norm,
                use_bias=use_bias, bias_regularizer=bias_regularizer,
                enable_batch_normalization=enable_batch_normalization,
                batch_normalization_momentum=batch_normalization_momentum,
                batch_normalization_renorm=batch_normalization_renorm,
                batch_normalization_renorm_clipping=batch_normalization_renorm_clipping,
                batch_normalization_renorm_momentum=batch_normalization_renorm_momentum, name=f"expert_{i}")
            for i in range(num_experts)])

    def _per_expert(self, value: Any, what: str) -> list[Any]:
        if isinstance(value, (list, tuple)):
            if len(value) != self._num_experts:
                raise ValueError(f"MMoE {what} has {len(value)} entries for {self._num_experts} experts")
            return list(value)
        return [value] * self._num_experts

    def build(self, inputs: Any) -> None:
        gate_input = inputs[1] if isinstance(inputs, (list, tuple)) else inputs
        shape = (gate_input.shape[-1], self._num_experts * self.num_tasks)
        self.add_weight("gate_weight", shape, "zeros", gate_input)
        if self.gate_type == "noise_topk":
            self.add_weight("gate_noise", shape, "glorot_normal", gate_input)

    def calc_gate(self, gate_input: torch.Tensor) -> torch.Tensor:
        """The gates, ``[batch, num_experts, num_tasks]``."""
        logit = gate_input @ self.gate_weight
        if self.gate_type == "noise_topk":
            logit = logit + torch.randn_like(logit) * torch.nn.functional.softplus(gate_input @ self.gate_noise)
        gates = torch.softmax(logit.reshape(-1, self.num_tasks, self._num_experts), dim=2)
        if self.gate_type in ("topk", "noise_topk"):
            threshold = torch.topk(gates, self.top_k, dim=2).values.min(dim=2, keepdim=True).values
            gates = torch.where(gates >= threshold, gates, torch.zeros_like(gates))
            gates = gates / gates.sum(dim=2, keepdim=True)
        return gates.transpose(1, 2)

    def call(self, inputs: Any, **kwargs: Any) -> list[torch.Tensor]:
        expert_input, gate_input = one_or_pair(inputs, "MMoE", "expert_input, gate_input")
        expert_outputs = torch.stack([expert(expert_input) for expert in self.experts], dim=2)
        gates = self.calc_gate(gate_input)
        if self.gate_type != "softmax":
            importance = gates.sum(dim=0)  # [num_experts, num_tasks]
            mean = importance.mean(dim=0)
            variance = (importance - mean).square().mean(dim=0)
            self.add_loss(variance / mean.square())
        return list(torch.unbind(expert_outputs @ gates, dim=2))


class SNR(Layer):
    """Monolith's ``layers.SNR`` (Sub-Network Routing, Ma et al. 2019) with hard-concrete gates.

    Called on a list of ``num_in_subnet`` tensors ``[batch, in_subnet_dim]``; returns
    ``num_out_subnet`` tensors ``[batch, out_subnet_dim]``. Each (in, out) route has a block
    ``in_subnet_dim x out_subnet_dim`` (``"trans"``: learned, from ``initializer``; ``"aver"``: the
    identity, which needs equal dims) scaled by a gate ``z = clip(s * (zeta - gamma) + gamma, 0,
    1)``, ``s`` a hard-concrete sample of ``sigmoid(log_alpha)`` (temperature ``beta``) while
    training in a mode other than PREDICT, else ``sigmoid(log_alpha)``; ``use_ste`` passes the clip's
    gradient straight through. :attr:`losses` holds the L0 penalty
    ``sum(sigmoid(log_alpha - beta * log(-gamma / zeta)))``.
    """

    def __init__(self, num_out_subnet: int, out_subnet_dim: int, snr_type: str = "trans", zeta: float = 1.1,
                 gamma: float = -0.1, beta: float = 0.5, use_ste: bool = False, mode: str = ModeKeys.TRAIN,
                 initializer: Any = "glorot_uniform", regularizer: Any = None, name: str | None = None) -> None:
        super().__init__(name)
        if snr_type not in ("trans", "aver"):
            raise ValueError(f"SNR snr_type must be trans or aver, got {snr_type!r}")
        self.num_out_subnet, self.out_subnet_dim, self.snr_type = num_out_subnet, out_subnet_dim, snr_type
        self.zeta, self.gamma, self.beta, self.use_ste, self.mode = zeta, gamma, beta, use_ste, mode
        self.initializer, self.regularizer = initializer, regularizer

    def build(self, inputs: Sequence[torch.Tensor]) -> None:
        if isinstance(inputs, torch.Tensor) or len({x.shape[-1] for x in inputs}) != 1:
            raise ValueError("SNR takes a list of sub-network outputs of one width")
        self.num_in_subnet, self.in_subnet_dim = len(inputs), inputs[0].shape[-1]
        num_route = self.num_in_subnet * self.num_out_subnet
        block_size = self.in_subnet_dim * self.out_subnet_dim
        self.add_weight("log_alpha", (num_route, 1), "zeros", inputs[0])
        if self.snr_type == "trans":
            self.add_weight("weight", (num_route, block_size), self.initializer, inputs[0], self.regularizer)
        else:
            if self.in_subnet_dim != self.out_subnet_dim:
                raise ValueError(f"SNR snr_type='aver' needs in_subnet_dim ({self.in_subnet_dim}) == "
                                 f"out_subnet_dim ({self.out_subnet_dim})")
            eye = torch.eye(self.in_subnet_dim, device=inputs[0].device).reshape(1, block_size)
            self.register_buffer("weight", eye.repeat(num_route, 1))

    def sample(self) -> torch.Tensor:
        """The route gates ``z``, ``[num_route, 1]``."""
        if self.mode != ModeKeys.PREDICT and self.training:
            u = torch.rand_like(self.log_alpha)
            s = torch.sigmoid((torch.log(u) - torch.log(1.0 - u) + self.log_alpha) / self.beta)
        else:
            s = torch.sigmoid(self.log_alpha)
        s = s * (self.zeta - self.gamma) + self.gamma
        clipped = torch.clamp(s, 0.0, 1.0)
        return s + (clipped - s).detach() if self.use_ste else clipped

    @property
    def losses(self) -> list[torch.Tensor]:
        out = super().losses
        if self.built:
            factor = self.beta * math.log(-self.gamma / self.zeta)
            out.append(torch.sigmoid(self.log_alpha - factor).sum())
        return out

    def call(self, inputs: Sequence[torch.Tensor], **kwargs: Any) -> list[torch.Tensor]:
        weight = (self.weight * self.sample()).reshape(
            self.num_in_subnet, self.num_out_subnet, self.in_subnet_dim, self.out_subnet_dim)
        weight = weight.permute(0, 2, 1, 3).reshape(self.num_in_subnet * self.in_subnet_dim,
                                                    self.num_out_subnet * self.out_subnet_dim)
        return list(torch.chunk(torch.cat(list(inputs), dim=1) @ weight, self.num_out_subnet, dim=1))
