"""Feature-crossing layers: Monolith's ``GroupInt``, ``AllInt``, ``CDot``, ``CAN``, ``DCN`` and ``CIN``."""

from __future__ import annotations

from typing import Any, Sequence

import torch

import monolith.layers.activations as activations_lib
from monolith.layers.dense import Dense, l2_normalize
from monolith.layers.layer import Layer
from monolith.layers.mlp import MLP
from monolith.layers.utils import DCNType, merge_tensor_list
from monolith.mode_keys import ModeKeys

__all__ = ["AllInt", "CAN", "CDot", "CIN", "DCN", "GroupInt", "ffm"]


def ffm(left: torch.Tensor, right: torch.Tensor, dim_size: int, int_type: str = "multiply") -> torch.Tensor:
    """Monolith's FFM op: every (left field, right field) pair of ``dim_size`` embeddings, left-major.

    ``left`` ``[batch, n_left * dim_size]``, ``right`` ``[batch, n_right * dim_size]``; ``"multiply"``
    gives the element-wise products ``[batch, n_left * n_right * dim_size]``, ``"dot"`` their sums
    ``[batch, n_left * n_right]``.
    """
    if int_type not in ("multiply", "dot"):
        raise ValueError(f"ffm int_type must be multiply or dot, got {int_type!r}")
    batch = left.shape[0]
    products = left.reshape(batch, -1, 1, dim_size) * right.reshape(batch, 1, -1, dim_size)
    if int_type == "dot":
        return products.sum(dim=-1).reshape(batch, -1)
    return products.reshape(batch, -1)


class GroupInt(Layer):
    """Monolith's ``layers.GroupInt`` (field-aware interaction between two groups of fields).

    Called on ``(left_fields, right_fields)``, lists of ``[batch, dim]`` tensors; returns :func:`ffm`
    of the concatenated groups. With ``use_attention`` (``"multiply"`` only) each of the
    ``n_left * n_right`` products is scaled by an :class:`MLP` of ``attention_units`` (ending in 1)
    run on it. ``out_type`` is kept for Monolith's signature (the result is always concatenated).

    Example::

        GroupInt()(([torch.ones(2, 4)] * 3, [torch.ones(2, 4)] * 2)).shape   # torch.Size([2, 24])
    """

    def __init__(self, interaction_type: str = "multiply", use_attention: bool = False,
                 attention_units: list[int] | None = None, activation: Any = "relu", initializer: Any = None,
                 regularizer: Any = None, out_type: str = "concat", keep_list: bool = False,
                 name: str | None = None) -> None:
        super().__init__(name)
        if interaction_type not in ("multiply", "dot"):
            raise ValueError(f"GroupInt interaction_type must be multiply or dot, got {interaction_type!r}")
        if use_attention and (interaction_type != "multiply" or not attention_units or attention_units[-1] != 1):
            raise ValueError("GroupInt use_attention needs interaction_type='multiply' and attention_units "
                             f"ending in 1, got {interaction_type!r}, {attention_units!r}")
        self.interaction_type, self.use_attention, self.attention_units = interaction_type, use_attention, attention_units
        self.activation, self.initializer, self.regularizer = activation, initializer, regularizer
        self.out_type, self.keep_list = out_type, keep_list
        self.mlp = (MLP(attention_units, activations=activation, initializers=initializer or "glorot_normal",
                        kernel_regularizer=regularizer, name="groupint_attention_mlp") if use_attention else None)

    def call(self, inputs: tuple[Sequence[torch.Tensor], Sequence[torch.Tensor]], **kwargs: Any) -> Any:
        left_fields, right_fields = inputs
        dim = left_fields[0].shape[-1]
        out = ffm(torch.cat(list(left_fields), dim=1), torch.cat(list(right_fields), dim=1), dim,
                  self.interaction_type)
        if self.mlp is not None:
            stacked = out.reshape(out.shape[0], len(left_fields) * len(right_fields), dim)
            out = (stacked * self.mlp(stacked)).reshape(out.shape[0], -1)
        return [out] if self.keep_list else out


class AllInt(Layer):
    """Monolith's ``layers.AllInt``: ``x @ (x^T @ kernel + bias)`` for ``x`` ``[batch, num_feat, emb]``,
    ``kernel`` ``[num_feat, cmp_dim]`` (glorot-normal unless ``initializer``), giving
    ``[batch, num_feat, cmp_dim]`` merged by ``out_type`` (``merge_tensor_list``).

    Example::

        AllInt(cmp_dim=4)(torch.ones(2, 10, 8)).shape   # torch.Size([2, 40])
    """

    def __init__(self, cmp_dim: int, initializer: Any = None, regularizer: Any = None, use_bias: bool = True,
                 out_type: str = "concat", keep_list: bool = False, name: str | None = None) -> None:
        super().__init__(name)
        self.cmp_dim, self.initializer, self.regularizer, self.use_bias = cmp_dim, initializer, regularizer, use_bias
        self.out_type, self.keep_list = out_type, keep_list

    def build(self, inputs: torch.Tensor) -> None:
        self.add_weight("allint_kernel", (inputs.shape[1], self.cmp_dim), self.initializer or "glorot_normal",
                        inputs, self.regularizer)
        if self.use_bias:
            self.add_weight("allint_bias", (self.cmp_dim,), "zeros", inputs)

    def call(self, embeddings: torch.Tensor, **kwargs: Any) -> Any:
        feature_comp = embeddings.transpose(1, 2) @ self.allint_kernel  # [batch, emb, cmp_dim]
        if self.use_bias:
            feature_comp = feature_comp + self.allint_bias
        return merge_tensor_list(embeddings @ feature_comp, merge_type=self.out_type, keep_list=self.keep_list)


class CDot(Layer):
    """Monolith's ``layers.CDot`` (compressed dot-product crossing).

    On ``x`` ``[batch, num_feature, emb]``: project the fields, ``p = x^T @ project_weight``
    (``[batch, emb, project_dim]``); compress ``c = compress_tower(flatten(p))``, an :class:`MLP` of
    ``compress_units + [emb * project_dim]``; cross ``x @ reshape(c)``; return
    ``[flatten(crossed), c]``, ``[batch, (num_feature + emb) * project_dim]``.
    """

    def __init__(self, project_dim: int, compress_units: list[int], activation: Any = "relu",
                 initializer: Any = None, regularizer: Any = None, name: str | None = None) -> None:
        super().__init__(name)
        self.project_dim, self.compress_units = project_dim, compress_units
        self.activation, self.initializer, self.regularizer = activation, initializer, regularizer

    def build(self, inputs: torch.Tensor) -> None:
        if inputs.dim() != 3:
            raise ValueError(f"CDot takes [batch, num_feature, emb] inputs, got shape {tuple(inputs.shape)}")
        init = self.initializer or "glorot_normal"
        self.add_weight("project_weight", (inputs.shape[1], self.project_dim), init, inputs, self.regularizer)
        self.compress_tower = MLP(list(self.compress_units) + [inputs.shape[2] * self.project_dim],
                                  activations=self.activation, initializers=init,
                                  kernel_regularizer=self.regularizer, name="compress_tower").to(inputs.device)

    def call(self, inputs: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        batch, num_feature, emb = inputs.shape
        projected = inputs.transpose(1, 2) @ self.project_weight  # [batch, emb, project_dim]
        compressed = self.compress_tower(projected.reshape(batch, emb * self.project_dim))
        crossed = inputs @ compressed.reshape(batch, emb, self.project_dim)
        return torch.cat([crossed.reshape(batch, num_feature * self.project_dim), compressed], dim=1)


class CAN(Layer):
    """Monolith's ``layers.CAN`` (Co-Action Network): the item embedding is the parameters of a
    ``layer_num``-layer micro-MLP run on the user embedding.

    Called on ``(user_emb, item_emb)``; ``item_emb`` ``[batch, layer_num * (u * u + u)]`` for a user
    embedding size ``u``: each layer's ``[u, u]`` weight then ``[u]`` bias, ``activation`` after
    each. ``user_emb`` is ``[batch, num_feat, seq_len, u]`` (``is_seq``, ``is_stacked``: summed over
    the sequence), ``[batch, num_feat, u]`` (stacked), ``[batch, seq_len, u]`` (``is_seq``: summed)
    or ``[batch, u]``.
    """

    def __init__(self, layer_num: int = 2, activation: Any = "relu", is_seq: bool = False, is_stacked: bool = True,
                 name: str | None = None) -> None:
        super().__init__(name)
        self.layer_num, self.activation, self.is_seq, self.is_stacked = layer_num, activation, is_seq, is_stacked
        self.activation_fn = activations_lib.get(activation)

    def call(self, inputs: tuple[torch.Tensor, torch.Tensor], **kwargs: Any) -> torch.Tensor:
        user_emb, item_emb = inputs
        batch, u = user_emb.shape[0], user_emb.shape[-1]
        if item_emb.shape[-1] != (u * (u + 1)) * self.layer_num:
            raise ValueError(f"CAN item_emb width {item_emb.shape[-1]} != layer_num * (u * u + u) = "
                             f"{self.layer_num * u * (u + 1)} for user embedding size {u}")
        if self.is_seq and self.is_stacked:
            weight_shape, bias_shape = (batch, 1, u, u), (batch, 1, 1, u)
        else:
            weight_shape, bias_shape = (batch, u, u), (batch, 1, u)
        if not self.is_seq and not self.is_stacked:
            user_emb = user_emb.unsqueeze(1)
        params = torch.split(item_emb, [u * u, u] * self.layer_num, dim=1)
        for i in range(self.layer_num):
            user_emb = user_emb @ params[2 * i].reshape(weight_shape) + params[2 * i + 1].reshape(bias_shape)
            if self.activation_fn is not None:
                user_emb = self.activation_fn(user_emb)
        if self.is_seq:
            return user_emb.sum(dim=2 if self.is_stacked else 1)
        return user_emb if self.is_stacked else user_emb.squeeze(1)


class DCN(Layer):
    """Monolith's ``layers.DCN`` (Deep & Cross Network), ``layer_num`` cross layers on ``x0``:

    * ``vector``: ``x = x0 * (x @ w) + b + x`` (``w`` ``[dims, 1]``);
    * ``matrix`` (DCN-V2): ``x = x0 * (x @ W + b) + x``;
    * ``mixed`` (DCN-Mix): ``num_experts`` low-rank experts ``x0 * (tanh(tanh(x @ V) @ C) @ U^T + b)``
      combined with gates ``softmax(x @ G)`` -- over a size-1 axis, as Monolith computes them, so
      every gate is 1 and the experts are summed -- then ``+ x``.

    Weights come from ``initializer`` (glorot-normal), biases are zeros. With
    ``allow_kernel_norm`` every weight (biases too, as Monolith's) is its l2-normalised columns
    times a trainable norm started at the initial norms. With ``use_dropout``, training calls in
    mode TRAIN drop each layer's output with rate ``1 - keep_prob``.

    Example::

        DCN(layer_num=2, dcn_type="matrix")(torch.ones(4, 16)).shape   # torch.Size([4, 16])
    """

    def __init__(self, layer_num: int = 1, dcn_type: str = DCNType.Matrix, initializer: Any = None,
                 regularizer: Any = None, num_experts: int = 1, low_rank: int = 0, allow_kernel_norm: bool = False,
                 use_dropout: bool = False, keep_prob: float = 0.95, mode: str = ModeKeys.TRAIN,
                 name: str | None = None) -> None:
        super().__init__(name)
        if dcn_type not in (DCNType.Vector, DCNType.Matrix, DCNType.Mixed):
            raise ValueError(f"DCN dcn_type must be vector, matrix or mixed, got {dcn_type!r}")
        self.layer_num, self.dcn_type, self.initializer, self.regularizer = layer_num, dcn_type, initializer, regularizer
        self.num_experts, self.low_rank, self.allow_kernel_norm = num_experts, low_rank, allow_kernel_norm
        self.use_dropout, self.keep_prob, self.mode = use_dropout, keep_prob, mode

    def _add(self, name: str, shape: tuple[int, ...], like: torch.Tensor, initializer: Any = None,
             regularizer: Any = None) -> None:
        weight = self.add_weight(name, shape, initializer or self.initializer or "glorot_normal", like, regularizer)
        if self.allow_kernel_norm:
            norm = weight.detach().norm(dim=0)
            self.add_weight(f"{name}_trainable_norm", norm.shape, lambda shape, dtype: norm.clone(), like)

    def _get(self, name: str) -> torch.Tensor:
        weight = getattr(self, name)
        if not self.allow_kernel_norm:
            return weight
        return l2_normalize(weight, dim=0) * getattr(self, f"{name}_trainable_norm")

    def build(self, inputs: torch.Tensor) -> None:
        dims = inputs.shape[-1]
        for i in range(self.layer_num):
            if self.dcn_type == DCNType.Vector:
                self._add(f"kernel_{i}", (dims, 1), inputs, regularizer=self.regularizer)
            elif self.dcn_type == DCNType.Matrix:
                self._add(f"kernel_{i}", (dims, dims), inputs, regularizer=self.regularizer)
            else:
                for j in range(self.num_experts):
                    self._add(f"U_{i}_{j}", (dims, self.low_rank), inputs, regularizer=self.regularizer)
                    self._add(f"V_{i}_{j}", (dims, self.low_rank), inputs, regularizer=self.regularizer)
                    self._add(f"C_{i}_{j}", (self.low_rank, self.low_rank), inputs, regularizer=self.regularizer)
                    self._add(f"G_{i}_{j}", (dims, 1), inputs, regularizer=self.regularizer)
            self._add(f"bias_{i}", (1, dims), inputs, initializer="zeros")

    def call(self, inputs: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        x0 = xl = inputs
        for i in range(self.layer_num):
            bias = self._get(f"bias_{i}")
            if self.dcn_type == DCNType.Vector:
                xl = x0 * (xl @ self._get(f"kernel_{i}")) + bias + xl
            elif self.dcn_type == DCNType.Matrix:
                xl = x0 * (xl @ self._get(f"kernel_{i}") + bias) + xl
            else:
                outputs, gates = [], []
                for j in range(self.num_experts):
                    gates.append(xl @ self._get(f"G_{i}_{j}"))
                    v_x = torch.tanh(xl @ self._get(f"V_{i}_{j}"))
                    cv_x = torch.tanh(v_x @ self._get(f"C_{i}_{j}"))
                    outputs.append(x0 * (cv_x @ self._get(f"U_{i}_{j}").T + bias))
                gate = torch.softmax(torch.stack(gates, dim=-2), dim=-1)  # [..., num_experts, 1]
                xl = (torch.stack(outputs, dim=-1) @ gate).squeeze(-1) + xl
            if self.use_dropout and self.mode == ModeKeys.TRAIN and self.training:
                xl = torch.nn.functional.dropout(xl, p=1 - self.keep_prob)
        return xl


class CIN(Layer):
    """Monolith's ``layers.CIN`` (Compressed Interaction Network, xDeepFM).

    On ``x0`` ``[batch, num_feat, emb]``: layer ``k`` crosses the previous layer's ``h`` maps with
    the fields (``einsum('bdh,bdm->bdhm')`` over the embedding axis) and compresses them to
    ``hidden_uints[k]`` maps with a width-1 convolution (a :class:`Dense` on the last axis, with a
    zero bias; ``activation`` on every layer but the last); the output concatenates each layer's
    maps summed over the embedding axis, ``[batch, sum(hidden_uints)]``.
    """

    def __init__(self, hidden_uints: list[int], activation: Any = None, initializer: Any = "glorot_uniform",
                 regularizer: Any = None, name: str | None = None) -> None:
        super().__init__(name)
        self.hidden_uints, self.activation, self.initializer, self.regularizer = (
            hidden_uints, activation, initializer, regularizer)
        last = len(hidden_uints) - 1
        self.conv1d = torch.nn.ModuleList([
            Dense(units, activation=activation if i != last else None, kernel_initializer=initializer,
                  kernel_regularizer=regularizer, name=f"conv1d_{i}")
            for i, units in enumerate(hidden_uints)])

    def call(self, inputs: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        if inputs.dim() != 3:
            raise ValueError(f"CIN takes [batch, num_feat, emb] inputs, got shape {tuple(inputs.shape)}")
        batch, num_feat, emb = inputs.shape
        x0 = inputs.transpose(1, 2)  # [batch, emb, num_feat]
        xl, results = x0, []
        for conv in self.conv1d:
            zl = torch.einsum("bdh,bdm->bdhm", xl, x0).reshape(batch, emb, xl.shape[-1] * num_feat)
            xl = conv(zl)
            results.append(xl.sum(dim=1))
        return torch.cat(results, dim=1)
