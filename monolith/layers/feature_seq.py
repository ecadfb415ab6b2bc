"""Sequence (user-behaviour) layers: Monolith's ``DIN``, ``DIEN`` and ``DMR_U2I``."""

from __future__ import annotations

from typing import Any

import torch

from monolith.layers.agru import AGRUCell, GRUCell, dynamic_rnn_with_attention
from monolith.layers.dense import Dense
from monolith.layers.initializers import HeUniform
from monolith.layers.layer import Layer
from monolith.layers.mlp import MLP

__all__ = ["DIEN", "DIN", "DMR_U2I"]


class DIN(Layer):
    """Monolith's ``layers.DIN`` (Deep Interest Network attention).

    Called on ``(queries [batch, H], keys [batch, T, H])`` (and ``mask=`` ``[batch, T]``, keys with
    ``mask >= 1`` kept): an :class:`MLP` of ``hidden_units`` (ending in 1; ``activation`` between
    layers, ReLU when None) scores ``[q, k, q - k, q * k]`` per key (divided by ``sqrt(H)`` with
    ``decay``); ``mode="sum"`` returns the score-weighted sum of the keys ``[batch, H]``, another
    mode the weighted keys ``[batch, T, H]``.
    """

    def __init__(self, hidden_units: list[int], activation: Any = None, initializer: Any = None,
                 regularizer: Any = None, mode: str = "sum", decay: bool = False, name: str | None = None) -> None:
        super().__init__(name)
        if not hidden_units or hidden_units[-1] != 1:
            raise ValueError(f"DIN hidden_units must end in 1, got {hidden_units!r}")
        self.hidden_units, self.activation, self.initializer, self.regularizer = (
            hidden_units, activation, initializer, regularizer)
        self.mode, self.decay = mode, decay
        self.dense_tower = MLP(hidden_units, activations=activation, initializers=initializer or "glorot_normal",
                               kernel_regularizer=regularizer, name="compress_tower")

    def call(self, inputs: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None = None,
             **kwargs: Any) -> torch.Tensor:
        queries, keys = inputs
        if queries.dim() != 2 or keys.dim() != 3:
            raise ValueError(f"DIN takes queries [batch, H] and keys [batch, T, H], got "
                             f"{tuple(queries.shape)} and {tuple(keys.shape)}")
        queries = queries.unsqueeze(1).expand_as(keys)
        weight = self.dense_tower(torch.cat([queries, keys, queries - keys, queries * keys], dim=-1))
        if self.decay:
            weight = weight / keys.shape[2] ** 0.5
        if mask is not None:
            weight = torch.where((mask >= 1).unsqueeze(2), weight, torch.zeros_like(weight))
        if self.mode == "sum":
            return (weight.transpose(1, 2) @ keys).squeeze(1)
        return keys * weight


class DIEN(Layer):
    """Monolith's ``layers.DIEN`` (Deep Interest Evolution Network).

    Called on ``(queries [batch, num_units], keys [batch, T, E])`` (a third item, a mask, is ignored
    as in Monolith): a Keras :class:`GRUCell` of ``num_units`` (``activation``, kernels from
    ``initializer``, zero biases) runs over the keys; attention ``softmax(outputs @ W queries)``
    (``W`` ``[num_units, num_units]``) weighs the steps of an :class:`AGRUCell` (type AGRU, as
    Monolith builds it whatever ``att_type``) over the GRU's outputs; returns its final state
    ``[batch, num_units]``.
    """

    def __init__(self, num_units: int, att_type: str = "AGRU", activation: Any = "relu", initializer: Any = HeUniform,
                 regularizer: Any = None, name: str | None = None) -> None:
        super().__init__(name)
        self.num_units, self.att_type, self.activation = num_units, att_type, activation
        self.initializer, self.regularizer = initializer, regularizer
        init = initializer or "glorot_normal"
        self.gru_cell = GRUCell(num_units, activation=activation, kernel_initializer=init, bias_initializer="zeros",
                                kernel_regularizer=regularizer, name="gru_cell")
        self.augru_cell = AGRUCell(num_units, activation=activation, att_type="AGRU", initializer=init,
                                   regularizer=regularizer, name="augru_cell")
        self.add_weight("attention_weight", (num_units, num_units), init, None, regularizer)

    def call(self, inputs: Any, keys: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        if isinstance(inputs, (list, tuple)):
            queries = inputs[0]
            keys = inputs[1] if len(inputs) >= 2 else keys
        else:
            queries = inputs
        if keys is None:
            raise ValueError("DIEN needs keys: call it on (queries, keys) or with keys=")
        state = torch.zeros(keys.shape[0], self.num_units, dtype=keys.dtype, device=keys.device)
        outputs = []
        for time in range(keys.shape[1]):
            state = self.gru_cell((keys[:, time], state))
            outputs.append(state)
        gru_outputs = torch.stack(outputs, dim=1)  # [batch, T, num_units]
        query_weight = (queries @ self.attention_weight.T).unsqueeze(2)
        scores = torch.softmax((gru_outputs @ query_weight).squeeze(2), dim=-1)
        _, final_state = dynamic_rnn_with_attention(self.augru_cell, gru_outputs, scores)
        return final_state


class DMR_U2I(Layer):  # noqa: N801 - Monolith's name
    """Monolith's ``layers.DMR_U2I`` (Deep Match to Rank, user-to-item network).

    Called on ``(items [batch, ie], user_seq [batch, T, ue])``: attention over the sequence from
    ``softmax((pos_emb + user_seq @ emb_weight + bias) @ z_weight)`` (``pos_emb`` ``[T, cmp_dim]``,
    ``z_weight`` ones), the attended user vector through a :class:`Dense` of ``ie`` units with
    ``activation`` (PReLU), times ``items``: ``[batch, ie]``.
    """

    def __init__(self, cmp_dim: int, activation: Any = "PReLU", initializer: Any = "glorot_uniform",
                 regularizer: Any = None, name: str | None = None) -> None:
        super().__init__(name)
        self.cmp_dim, self.activation, self.initializer, self.regularizer = cmp_dim, activation, initializer, regularizer

    def build(self, inputs: tuple[torch.Tensor, torch.Tensor]) -> None:
        items, user_seq = inputs
        if user_seq.dim() != 3 or items.dim() != 2 or items.shape[0] != user_seq.shape[0]:
            raise ValueError(f"DMR_U2I takes items [batch, ie] and user_seq [batch, T, ue], got "
                             f"{tuple(items.shape)} and {tuple(user_seq.shape)}")
        init = self.initializer or "glorot_normal"
        self.add_weight("pos_emb", (user_seq.shape[1], self.cmp_dim), init, items, self.regularizer)
        self.add_weight("emb_weight", (user_seq.shape[2], self.cmp_dim), init, items, self.regularizer)
        self.add_weight("z_weight", (self.cmp_dim, 1), "ones", items)
        self.add_weight("bias", (self.cmp_dim,), "zeros", items)
        self.linear = Dense(items.shape[1], activation=self.activation, kernel_initializer=init,
                            kernel_regularizer=self.regularizer, name="dense")

    def call(self, inputs: tuple[torch.Tensor, torch.Tensor], **kwargs: Any) -> torch.Tensor:
        items, user_seq = inputs
        comped = self.pos_emb + user_seq @ self.emb_weight + self.bias
        alpha = torch.softmax(comped @ self.z_weight, dim=1)  # [batch, T, 1]
        merged = (user_seq.transpose(1, 2) @ alpha).squeeze(-1)  # [batch, ue]
        return self.linear(merged) * items
