"""Feature-transforming layers: Monolith's ``AutoInt``, ``iRazor`` and ``SeNet``."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from monolith.layers.layer import Layer
from monolith.layers.mlp import MLP
from monolith.layers.utils import merge_tensor_list

__all__ = ["AutoInt", "SeNet", "iRazor"]


class AutoInt(Layer):
    """Monolith's ``layers.AutoInt``: ``layer_num`` rounds of ``x = softmax(x @ x^T) @ x`` on
    ``[batch, num_feat, emb]``, merged by ``out_type`` (``merge_tensor_list``).

    Example::

        AutoInt(layer_num=2)(torch.ones(3, 10, 8)).shape   # torch.Size([3, 80])
    """

    def __init__(self, layer_num: int = 1, out_type: str = "concat", keep_list: bool = False,
                 name: str | None = None) -> None:
        super().__init__(name)
        self.layer_num, self.out_type, self.keep_list = layer_num, out_type, keep_list

    def call(self, embeds: torch.Tensor, **kwargs: Any) -> Any:
        if embeds.dim() != 3:
            raise ValueError(f"AutoInt takes [batch, num_feat, emb] inputs, got shape {tuple(embeds.shape)}")
        x = embeds
        for _ in range(self.layer_num):
            x = torch.softmax(x @ x.transpose(1, 2), dim=-1) @ x
        return merge_tensor_list(x, merge_type=self.out_type, keep_list=self.keep_list)


class iRazor(Layer):  # noqa: N801 - Monolith's name
    """Monolith's ``layers.iRazor``: soft embedding-dimension search.

    ``nas_space`` lists increasing dimension boundaries (``[0, 2, 5, ..., emb]``); each feature has
    logits ``nas_weight`` over them (``[num_feat, len(nas_space)]``, from ``initializer``,
    glorot-uniform when None), and its embedding ``[batch, num_feat, emb]`` is scaled per dimension
    by ``softmax(logits / t) @ masks``, mask ``i`` covering dimensions ``nas_space[i-1]:nas_space[i]``.
    With ``feature_weight`` (one per feature), :attr:`losses` holds
    ``feature_weight @ (kept dimensions per feature)``. Merged by ``out_type``.
    """

    def __init__(self, nas_space: Sequence[int], t: float = 0.05, initializer: Any = None, regularizer: Any = None,
                 feature_weight: Any = None, out_type: str = "concat", keep_list: bool = False,
                 name: str | None = None) -> None:
        super().__init__(name)
        self.nas_space, self.t, self.initializer, self.regularizer = list(nas_space), t, initializer, regularizer
        self.feature_weight, self.out_type, self.keep_list = feature_weight, out_type, keep_list
        masks = torch.zeros(len(self.nas_space), max(self.nas_space))
        for i in range(1, len(self.nas_space)):
            masks[i, self.nas_space[i - 1]:self.nas_space[i]] = 1.0
        self.register_buffer("rigid_masks", masks)

    def build(self, embeds: torch.Tensor) -> None:
        self.add_weight("nas_weight", (embeds.shape[1], len(self.nas_space)), self.initializer or "glorot_uniform",
                        embeds, self.regularizer)
        self.rigid_masks = self.rigid_masks.to(embeds.device)

    def soft_masks(self) -> torch.Tensor:
        """Each feature's per-dimension scale, ``[num_feat, emb]``."""
        return torch.softmax(self.nas_weight / self.t, dim=1) @ self.rigid_masks

    @property
    def losses(self) -> list[torch.Tensor]:
        out = super().losses
        if self.built and self.feature_weight is not None:
            weight = torch.as_tensor(self.feature_weight, dtype=torch.float32,
                                     device=self.nas_weight.device).reshape(1, -1)
            out.append((weight @ self.soft_masks().sum(dim=1, keepdim=True)).sum())
        return out

    def call(self, embeds: torch.Tensor, **kwargs: Any) -> Any:
        if embeds.shape[-1] != max(self.nas_space):
            raise ValueError(f"iRazor embeddings have {embeds.shape[-1]} dims; nas_space ends at {max(self.nas_space)}")
        return merge_tensor_list(embeds * self.soft_masks(), merge_type=self.out_type, keep_list=self.keep_list)


class SeNet(Layer):
    """Monolith's ``layers.SeNet`` (squeeze-and-excitation over features).

    Each feature's embedding is averaged (squeeze, ``[batch, num_feature]``), an :class:`MLP`
    ``[cmp_dim, num_feature]`` (ReLU then sigmoid; identity when ``cmp_dim`` is None) gives one
    weight per feature, which scales the feature's embedding. Called on ``[batch, num_feature, emb]``
    or on a list of ``[batch, dim_i]`` features; merged by ``out_type``. ``on_gpu`` is kept for
    Monolith's signature (both of its paths compute the same).
    """

    def __init__(self, num_feature: int, cmp_dim: int | None, initializer: Any = None, regularizer: Any = None,
                 on_gpu: bool = False, out_type: str = "concat", keep_list: bool = False,
                 name: str | None = None) -> None:
        super().__init__(name)
        self.num_feature, self.cmp_dim, self.initializer, self.regularizer = num_feature, cmp_dim, initializer, regularizer
        self.on_gpu, self.out_type, self.keep_list = on_gpu, out_type, keep_list
        self.cmp_tower = (None if cmp_dim is None else
                          MLP([cmp_dim, num_feature], activations=["relu", "sigmoid"], initializers=initializer,
                              kernel_regularizer=regularizer, name="cmp_tower"))

    def call(self, inputs: Any, **kwargs: Any) -> Any:
        stacked = isinstance(inputs, torch.Tensor)
        if stacked:
            squeezed = inputs.mean(dim=2)
        else:
            squeezed = torch.cat([embed.mean(dim=1, keepdim=True) for embed in inputs], dim=1)
        num_feat = squeezed.shape[1]
        weight = squeezed if self.cmp_tower is None else self.cmp_tower(squeezed)
        if stacked:
            weighted = inputs * weight.reshape(-1, num_feat, 1)
        else:
            weighted = [embed * w for embed, w in zip(inputs, torch.split(weight, 1, dim=1))]
        return merge_tensor_list(weighted, merge_type=self.out_type, keep_list=self.keep_list, num_feature=num_feat)
