"""Monolith's loss/prediction heads (``native_model.get_sigmoid_loss_and_pred`` and friends).

Logits coming out of a model are *unbiased*: they predict the true click rate. Training examples are
biased -- negatives are down-sampled with rate ``sample_rate`` and, with ``fast_emit``
(``sample_bias``), positives are emitted again after an earlier negative -- so the loss is computed on
corrected logits (:class:`LogitCorrection`) while predictions keep using the raw ones.
"""

from __future__ import annotations

import math
from numbers import Real

import torch
import torch.nn.functional as F

from monolith.layers.logit_correction import LogitCorrection
from monolith.mode_keys import ModeKeys

__all__ = ["batch_softmax_loss", "get_sigmoid_loss_and_pred", "get_softmax_loss_and_pred"]


def get_sigmoid_loss_and_pred(
    name: str,
    logits: torch.Tensor,
    label: torch.Tensor | None,
    batch_size: int,
    sample_rate: torch.Tensor | float | None = 1.0,
    sample_bias: bool = False,
    mode: str = ModeKeys.TRAIN,
    instance_weight: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    logit_clip_threshold: float | None = None,
    predict_before_correction: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Binary sigmoid head: summed cross-entropy on corrected logits, and the predicted probability.

    Args:
        name: head name (kept for Monolith API compatibility; TF used it to name ops).
        logits: unbiased logits, any shape with ``batch`` elements; flattened to ``[batch]``.
        label: 0/1 labels with ``batch`` elements.
        batch_size: ignored -- the batch size is taken from ``logits`` as Monolith does.
        sample_rate: negative sampling rate: a float (same for every example), None (= 1.0), or a
            tensor (or array, list) with ``batch`` elements.
        sample_bias: whether examples carry fast-emit bias (see :class:`LogitCorrection`).
        mode: a :class:`ModeKeys` value; in ``PREDICT`` no loss is computed.
        instance_weight: optional per-example loss weights, ``batch`` elements.
        mask: optional boolean keep-mask, ``batch`` elements, applied to losses and weights before
            the sum.
        logit_clip_threshold: optional probability ``p`` in (0, 1); corrected logits are clipped to
            ``[-t, t]`` with ``t = log((1-p)/p)`` before the loss. For ``p > 0.5`` (``t < 0``) the
            bounds are ordered, so ``p`` and ``1 - p`` clip alike (TF's ``clip_by_value`` would
            instead set every logit to ``-t``).
        predict_before_correction: predict ``sigmoid(logits)`` (True) or ``sigmoid(corrected)``.

    Returns:
        ``(loss, pred)``: scalar summed loss (None in ``PREDICT``) and ``[batch]`` probabilities.

    Raises:
        ValueError: ``logit_clip_threshold`` not in (0, 1) or no ``label`` outside ``PREDICT``, a
            ``sample_rate`` of the wrong length, or an unknown ``mode``.
    """
    ModeKeys.check(mode)
    logits = logits.reshape(-1)
    batch_size = logits.shape[0]
    if mode == ModeKeys.PREDICT:  # no correction, no clipping (nor its check), as in Monolith
        return None, torch.sigmoid(logits)
    if logit_clip_threshold is not None and not 0 < logit_clip_threshold < 1:
        raise ValueError(f"logit_clip_threshold must satisfy 0 < p < 1, got {logit_clip_threshold}")
    if label is None:
        raise ValueError(f"get_sigmoid_loss_and_pred('{name}'): label is None in mode {mode!r}; "
                         f"only PREDICT needs no label")

    if sample_rate is None or isinstance(sample_rate, Real) and sample_rate == 1.0:
        sample_rate = None  # nothing sampled out: log(1) corrects nothing, so no correction op
    elif isinstance(sample_rate, Real):
        sample_rate = torch.full((batch_size,), float(sample_rate), dtype=logits.dtype, device=logits.device)
    else:
        sample_rate = torch.as_tensor(sample_rate, dtype=logits.dtype, device=logits.device).reshape(-1)
        if sample_rate.numel() != batch_size:
            raise ValueError(f"get_sigmoid_loss_and_pred('{name}'): sample_rate has {sample_rate.numel()} "
                             f"values for a batch of {batch_size}; give one float or one per example")
    logits_biased = LogitCorrection.get_sample_logits(logits, sample_rate, sample_bias)
    pred = torch.sigmoid(logits if predict_before_correction else logits_biased)

    if logit_clip_threshold is not None:
        threshold = math.log((1 - logit_clip_threshold) / logit_clip_threshold)
        # threshold < 0 for p > 0.5; clamp(min > max) would silently return max, so order the bounds.
        low, high = sorted((-threshold, threshold))
        logits_biased = logits_biased.clamp(low, high)

    losses = F.binary_cross_entropy_with_logits(
        logits_biased, label.reshape(-1).to(logits_biased.dtype), reduction="none"
    )
    if instance_weight is not None:
        instance_weight = instance_weight.reshape(-1)
    if mask is not None:
        mask = mask.reshape(-1).to(torch.bool)
        losses = losses[mask]
        if instance_weight is not None:
            instance_weight = instance_weight[mask]
    if instance_weight is not None:
        losses = losses * instance_weight
    return losses.sum(), pred


def get_softmax_loss_and_pred(
    name: str, logits: torch.Tensor, label: torch.Tensor, mode: str
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Multi-class softmax head.

    Args:
        name: head name (kept for Monolith API compatibility).
        logits: ``[batch, classes]``.
        label: one-hot or probability targets, ``[batch, classes]``.
        mode: a :class:`ModeKeys` value; in ``PREDICT`` no loss is computed.

    Returns:
        ``(loss, pred)``: per-example cross-entropy ``[batch]`` (unreduced, as Monolith returns
        TF's ``softmax_cross_entropy_with_logits``; None in ``PREDICT``) and int64 class ``[batch]``.

    Raises:
        ValueError: ``logits`` not 2-D, ``label`` shape differs from ``logits``, or unknown ``mode``.
    """
    ModeKeys.check(mode)
    if logits.dim() != 2:
        raise ValueError(f"softmax logits must be [batch, classes], got shape {tuple(logits.shape)}")
    # argmax of the softmax, as Monolith does: rounding in softmax can tie near-equal logits.
    pred = torch.argmax(torch.softmax(logits, dim=1), dim=1)
    if mode == ModeKeys.PREDICT:
        return None, pred
    if label.shape != logits.shape:
        raise ValueError(
            f"softmax label must have the logits' shape {tuple(logits.shape)} (one-hot/probabilities), "
            f"got {tuple(label.shape)}"
        )
    loss = -(label.to(logits.dtype) * torch.log_softmax(logits, dim=1)).sum(dim=1)
    return loss, pred


def batch_softmax_loss(query: torch.Tensor, item: torch.Tensor, item_step_interval: torch.Tensor, r: torch.Tensor,
                       normalize: bool = True, temperature: float = 1.0) -> torch.Tensor:
    """Monolith's in-batch sampled softmax for retrieval (``losses/batch_softmax_loss.py``).

    Each query's positive is the item of its own row; the other rows' items are its negatives,
    with the logQ correction of the sampling frequency ``1 / item_step_interval`` (the steps
    between an item's occurrences, e.g. the row of a :class:`~monolith.optim.BatchSoftmaxOptimizer`
    slice, read as at least 1: a first lookup holds 0).

    Args:
        query: ``[batch, k]`` query vectors.
        item: ``[batch, k]`` item vectors.
        item_step_interval: ``[batch]`` average global steps between the item's occurrences.
        r: ``[batch]`` weight of each query's interest in its item.
        normalize: L2-normalise query and item vectors first.
        temperature: divides the similarities (> 0).

    Returns:
        The summed loss, ``-sum(r * log(softmax of each row's similarities at its own item))``.
    """
    if temperature <= 0:
        raise ValueError(f"temperature should be positive, while got {temperature}")
    if normalize:
        query = F.normalize(query, dim=1)
        item = F.normalize(item, dim=1)
    similarity = query @ item.T / temperature
    frequency = 1 / torch.clamp(item_step_interval.reshape(-1).to(similarity.dtype), min=1.0)
    # Monolith exponentiates exp(s - log f) then normalises; log_softmax of the same logits is that
    # without overflow.
    corrected = similarity - torch.log(frequency)
    log_probability = torch.diagonal(torch.log_softmax(corrected, dim=1))
    return -(r.reshape(-1).to(similarity.dtype) * log_probability).sum()
