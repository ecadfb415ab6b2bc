"""Monolith's ``layers.utils``: ``MergeType``, ``DCNType`` and ``merge_tensor_list``."""

from __future__ import annotations

import torch

__all__ = ["DCNType", "MergeType", "merge_tensor_list", "one_or_pair"]


class MergeType:
    """How feature-crossing layers return their features (Monolith's ``MergeType``)."""

    CONCAT = "concat"
    STACK = "stack"
    NONE = None


class DCNType:
    """The cross layer of :class:`~monolith.layers.feature_cross.DCN` (Monolith's ``DCNType``)."""

    Vector = "vector"
    Matrix = "matrix"
    Mixed = "mixed"


def merge_tensor_list(tensor_list: torch.Tensor | list[torch.Tensor], merge_type: str | None = "concat",
                      num_feature: int | None = None, axis: int = 1,
                      keep_list: bool = False) -> torch.Tensor | list[torch.Tensor]:
    """Monolith's ``merge_tensor_list``.

    One ``[batch, num_feat, emb]`` tensor: ``stack`` keeps it, ``concat`` reshapes it to
    ``[batch, num_feat * emb]``, None unstacks it along ``axis``. One ``[batch, num_feature * emb]``
    tensor with ``num_feature > 1``: ``stack`` reshapes it to ``[batch, num_feature, emb]``,
    ``concat`` keeps it, None splits it into the features. Several tensors: stacked or concatenated
    along ``axis`` (None keeps the list). ``keep_list`` wraps a single result in a list.
    """
    if isinstance(tensor_list, torch.Tensor):
        tensor_list = [tensor_list]
    tensor_list = list(tensor_list)
    if merge_type not in (MergeType.STACK, MergeType.CONCAT, MergeType.NONE):
        raise ValueError(f"merge_type must be 'stack', 'concat' or None, got {merge_type!r}")
    if len(tensor_list) == 1:
        tensor = tensor_list[0]
        if tensor.dim() == 3:
            if merge_type == MergeType.STACK:
                out = tensor
            elif merge_type == MergeType.CONCAT:
                out = tensor.reshape(tensor.shape[0], -1)
            else:
                return list(torch.unbind(tensor, dim=axis))
        elif tensor.dim() == 2 and num_feature is not None and num_feature > 1:
            stacked = tensor.reshape(tensor.shape[0], num_feature, tensor.shape[1] // num_feature)
            if merge_type == MergeType.STACK:
                out = stacked
            elif merge_type == MergeType.CONCAT:
                out = tensor
            else:
                return list(torch.unbind(stacked, dim=axis))
        elif tensor.dim() == 2:
            out = tensor
        else:
            raise ValueError(f"merge_tensor_list takes rank 2 or 3 tensors, got shape {tuple(tensor.shape)}")
        return [out] if keep_list else out
    if merge_type == MergeType.STACK:
        out = torch.stack(tensor_list, dim=axis)
    elif merge_type == MergeType.CONCAT:
        out = torch.cat(tensor_list, dim=axis)
    else:
        return tensor_list
    return [out] if keep_list else out


def one_or_pair(inputs: torch.Tensor | tuple | list, layer: str, names: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A two-tower layer's inputs: ``x`` (read by both towers) or a pair (``names`` says which, for errors)."""
    if not isinstance(inputs, (list, tuple)):
        return inputs, inputs
    if len(inputs) != 2:
        raise ValueError(f"{layer} takes x or ({names}), got {len(inputs)} inputs")
    return inputs[0], inputs[1]
