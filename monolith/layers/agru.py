"""Recurrent cells of DIEN: Monolith's ``AGRUCell`` (with its RNN loops) and Keras's ``GRUCell``."""

from __future__ import annotations

from typing import Any

import torch

import monolith.layers.activations as activations_lib
from monolith.layers.layer import Layer

__all__ = ["AGRUCell", "GRUCell", "dynamic_rnn_with_attention", "static_rnn_with_attention"]


class AGRUCell(Layer):
    """Monolith's ``layers.AGRUCell``, the attention GRU of DIEN.

    Called on ``(x, state, att_score)`` (``[batch, in]``, ``[batch, units]``, ``[batch, 1]`` or None);
    returns ``(new_h, new_h)``. Gates ``r, u = sigmoid([x, state] @ gates_kernel + gates_bias)``,
    candidate ``c = activation([x, r * state] @ candidate_kernel + candidate_bias)`` (tanh by
    default; biases start at one, kernels from ``initializer``, he-normal by default). Without a
    score ``new_h = (1 - u) * state + u * c``; ``"AGRU"``: ``(1 - a) * state + a * c``; ``"AUGRU"``:
    ``u' = (1 - a) * u``, ``new_h = u' * state + (1 - u') * c``.
    """

    def __init__(self, units: int, att_type: str = "AGRU", activation: Any = None, initializer: Any = None,
                 regularizer: Any = None, name: str | None = None) -> None:
        super().__init__(name)
        if att_type.upper() not in ("AGRU", "AUGRU"):
            raise ValueError(f"AGRUCell att_type must be AGRU or AUGRU, got {att_type!r}")
        self.units, self.att_type, self.activation = units, att_type, activation
        self.initializer, self.regularizer = initializer, regularizer
        self.activation_fn = activations_lib.get(activation) if activation is not None else activations_lib.Tanh()

    @property
    def state_size(self) -> int:
        return self.units

    @property
    def output_size(self) -> int:
        return self.units

    def build(self, inputs: tuple[torch.Tensor, torch.Tensor, Any]) -> None:
        x, state, _ = inputs
        if state.shape[-1] != self.units:
            raise ValueError(f"AGRUCell state has {state.shape[-1]} units, expected {self.units}")
        depth = x.shape[-1] + self.units
        init = self.initializer or "he_normal"
        self.add_weight("gates_kernel", (depth, 2 * self.units), init, x, self.regularizer)
        self.add_weight("gates_bias", (2 * self.units,), "ones", x, self.regularizer)
        self.add_weight("candidate_kernel", (depth, self.units), init, x, self.regularizer)
        self.add_weight("candidate_bias", (self.units,), "ones", x, self.regularizer)

    def call(self, inputs: tuple[torch.Tensor, torch.Tensor, Any], **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        x, state, att_score = inputs
        value = torch.sigmoid(torch.cat([x, state], dim=1) @ self.gates_kernel + self.gates_bias)
        r, u = torch.chunk(value, 2, dim=1)
        c = self.activation_fn(torch.cat([x, r * state], dim=1) @ self.candidate_kernel + self.candidate_bias)
        if att_score is None:
            new_h = (1.0 - u) * state + u * c
        elif self.att_type.upper() == "AUGRU":
            u = (1.0 - att_score) * u
            new_h = u * state + (1 - u) * c
        else:
            new_h = (1.0 - att_score) * state + att_score * c
        return new_h, new_h

    def zero_state(self, batch_size: int, dtype: torch.dtype = torch.float32,
                   device: torch.device | None = None) -> torch.Tensor:
        """The all-zero ``[batch_size, units]`` state."""
        return torch.zeros(batch_size, self.units, dtype=dtype, device=device)


def static_rnn_with_attention(cell: AGRUCell, inputs: torch.Tensor, att_scores: torch.Tensor,
                              init_state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Runs ``cell`` over ``inputs`` ``[batch, time, in]`` with ``att_scores`` ``[batch, time]``;
    returns the states ``[batch, time, units]`` and the last one (Monolith's; also its
    ``dynamic_rnn_with_attention``, the same loop in eager torch)."""
    if not isinstance(cell, AGRUCell):
        raise TypeError(f"the cell must be an AGRUCell, got {type(cell).__name__}")
    state = cell.zero_state(inputs.shape[0], inputs.dtype, inputs.device) if init_state is None else init_state
    outputs = []
    for time in range(inputs.shape[1]):
        _, state = cell((inputs[:, time], state, att_scores[:, time].reshape(-1, 1)))
        outputs.append(state)
    return torch.stack(outputs, dim=1), state


def dynamic_rnn_with_attention(cell: AGRUCell, inputs: torch.Tensor, att_scores: torch.Tensor,
                               parallel_iterations: int = 1, swap_memory: bool = True,
                               init_state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Monolith's ``dynamic_rnn_with_attention``: :func:`static_rnn_with_attention` (TF's while-loop
    options ``parallel_iterations`` and ``swap_memory`` have no eager counterpart)."""
    return static_rnn_with_attention(cell, inputs, att_scores, init_state)


class GRUCell(Layer):
    """Keras's ``GRUCell`` (TF 2.4 defaults: ``reset_after=True``, sigmoid recurrent activation,
    orthogonal recurrent kernel), which DIEN's interest extractor runs; gates ordered z, r, h.

    ``h' = z * h + (1 - z) * activation(x W_h + b_h + r * (h U_h + c_h))`` with
    ``z, r = sigmoid(x W + b + h U + c)``.
    """

    def __init__(self, units: int, activation: Any = "tanh", kernel_initializer: Any = "glorot_uniform",
                 bias_initializer: Any = "zeros", kernel_regularizer: Any = None, name: str | None = None) -> None:
        super().__init__(name)
        self.units, self.activation, self.kernel_initializer = units, activation, kernel_initializer
        self.bias_initializer, self.kernel_regularizer = bias_initializer, kernel_regularizer
        self.activation_fn = activations_lib.get(activation)

    def build(self, inputs: tuple[torch.Tensor, torch.Tensor]) -> None:
        x = inputs[0]
        self.add_weight("kernel", (x.shape[-1], 3 * self.units), self.kernel_initializer, x, self.kernel_regularizer)
        self.add_weight("recurrent_kernel", (self.units, 3 * self.units), "orthogonal", x)
        self.add_weight("bias", (2, 3 * self.units), self.bias_initializer, x)

    def call(self, inputs: tuple[torch.Tensor, torch.Tensor], **kwargs: Any) -> torch.Tensor:
        x, h = inputs
        x_z, x_r, x_h = torch.chunk(x @ self.kernel + self.bias[0], 3, dim=-1)
        h_z, h_r, h_h = torch.chunk(h @ self.recurrent_kernel + self.bias[1], 3, dim=-1)
        z = torch.sigmoid(x_z + h_z)
        r = torch.sigmoid(x_r + h_r)
        return z * h + (1 - z) * self.activation_fn(x_h + r * h_h)
