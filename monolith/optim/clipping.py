"""Global-norm gradient clipping over dense and sparse gradients (Monolith's ``clip_norm``)."""

from __future__ import annotations

from typing import Iterable

import torch


def squared_norm(tensors: Iterable[torch.Tensor]) -> float:
    """Sum of squares of every element of ``tensors`` (dense, or sparse COO: its summed rows)."""
    total = 0.0
    for tensor in tensors:
        tensor = tensor.detach()
        if tensor.is_sparse:  # e.g. nn.Embedding(sparse=True): the norm of the summed rows
            tensor = tensor.coalesce().values()
        total += float(torch.linalg.vector_norm(tensor)) ** 2
    return total


def clip_scales(norm: float, clip_norm: float | None, sparse_clip_norm: float | None) -> tuple[float, float]:
    """``(dense scale, sparse scale)`` bringing gradients of global ``norm`` within the clip norms
    (no clipping where ``clip_norm`` is None).

    ``sparse_clip_norm`` is the sparse gradients' own bound: ``clip_norm``, ramped up from 0 during
    Monolith's sparse norm warm-up; a bound of 0 zeroes the sparse gradients.
    """
    if clip_norm is None:
        return 1.0, 1.0
    return (clip_norm / max(norm, clip_norm),
            sparse_clip_norm / max(norm, sparse_clip_norm) if sparse_clip_norm > 0 else 0.0)
