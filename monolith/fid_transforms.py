"""FID transforms of parsed sparse features: a feature's FIDs moved to another slot
(``switch_slot``, ``switch_slot_batch``) and crossed features (``feature_combine``), as Monolith's
``feature_utils`` ops do on ragged tensors; here on :class:`~monolith.sparse.JaggedTensor` s."""

from __future__ import annotations

from collections.abc import Mapping

import numba
import numpy as np
import torch

from monolith.fid import MAX_SLOT_V2, SIGNATURE_BITS_V2, SIGNATURE_MASK_V2
from monolith.sparse import Batch, JaggedTensor, KeyedJaggedTensor

__all__ = ["feature_combine", "switch_slot", "switch_slot_batch"]


def switch_slot_batch(batch: Batch, features: Mapping[str, tuple[bool, int]], variant_type: str = "example_batch",
                      suffix: str = "share") -> Batch:
    """Monolith's ``switch_slot_batch``: ``features`` maps name -> ``(inplace, slot)``; in place the
    feature's FIDs get ``slot``, otherwise a copy named ``{name}_{suffix}`` does.

    ``variant_type`` (the TF variant's message type) is accepted for Monolith's signature; a
    :class:`Batch` is already parsed.
    """
    if not isinstance(batch, Batch):
        raise TypeError(f"switch_slot_batch: features must be a Batch, got {type(batch).__name__}")
    jagged = batch.sparse.to_dict()
    for name, (inplace, slot) in features.items():
        if name not in jagged:
            raise KeyError(f"switch_slot_batch: feature '{name}' is not in the batch; sparse features: {list(jagged)}")
        jagged[name if inplace else f"{name}_{suffix}"] = switch_slot(jagged[name], slot)
    return Batch(KeyedJaggedTensor.from_jagged_dict(jagged, stride=batch.sparse.stride()), dict(batch.dense))


def switch_slot(jagged: JaggedTensor, slot: int) -> JaggedTensor:
    """The same FIDs with their slot bits replaced by ``slot`` (v2 layout)."""
    if not 0 <= slot <= MAX_SLOT_V2:
        raise ValueError(f"slot {slot} out of range 0..{MAX_SLOT_V2}")
    values = (jagged.values() & SIGNATURE_MASK_V2) | (slot << SIGNATURE_BITS_V2)
    return JaggedTensor(values, jagged.lengths())


@numba.njit(cache=True)
def _combine_fids(a: np.ndarray, b: np.ndarray, a_rows: np.ndarray, b_rows: np.ndarray,
                  out_rows: np.ndarray, slot: np.uint64) -> np.ndarray:
    out = np.empty(out_rows[-1], dtype=np.uint64)
    mask32 = np.uint64(0xFFFFFFFF)
    k = 0
    for row in range(len(a_rows) - 1):
        for i in range(a_rows[row], a_rows[row + 1]):
            x = a[i]
            for j in range(b_rows[row], b_rows[row + 1]):
                y = b[j]
                # The 128-bit signed product of the int64s x * y, as (hi, lo) uint64 words.
                x_lo, x_hi, y_lo, y_hi = x & mask32, x >> np.uint64(32), y & mask32, y >> np.uint64(32)
                p0, p1, p2, p3 = x_lo * y_lo, x_lo * y_hi, x_hi * y_lo, x_hi * y_hi
                mid = (p0 >> np.uint64(32)) + (p1 & mask32) + (p2 & mask32)
                lo = (p0 & mask32) | (mid << np.uint64(32))
                hi = p3 + (p1 >> np.uint64(32)) + (p2 >> np.uint64(32)) + (mid >> np.uint64(32))
                if x >> np.uint64(63):
                    hi -= y
                if y >> np.uint64(63):
                    hi -= x
                out[k] = (slot << np.uint64(SIGNATURE_BITS_V2)) | ((hi ^ lo) & np.uint64(SIGNATURE_MASK_V2))
                k += 1
    return out


def feature_combine(src1: JaggedTensor, src2: JaggedTensor, slot: int) -> JaggedTensor:
    """Cross features (Monolith's ``feature_combine``): row ``b`` gets one FID per pair of
    ``src1`` and ``src2`` FIDs of row ``b``, ``src1``-major; each is the XOR of the high and low
    64-bit words of the pair's 128-bit product, in ``slot`` (v2 layout).

    Monolith keeps 49 bits of the hash under the slot, so its bit 48 spills into the slot's
    lowest bit; here the slot is exactly ``slot``.

    Example::

        feature_combine(JaggedTensor.from_lists([[1, 2], [3]]), JaggedTensor.from_lists([[5], [7]]), 9)
        # lengths [2, 1]: (1*5, 2*5) and (3*7) in slot 9
    """
    if src1.batch_size() != src2.batch_size():
        raise ValueError(f"feature_combine: src1 has {src1.batch_size()} rows, src2 {src2.batch_size()}")
    if not 0 <= slot <= MAX_SLOT_V2:
        raise ValueError(f"slot {slot} out of range 0..{MAX_SLOT_V2}")
    lengths = src1.lengths() * src2.lengths()
    out_rows = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths.numpy(), out=out_rows[1:])
    values = _combine_fids(
        src1.values().numpy().view(np.uint64), src2.values().numpy().view(np.uint64),
        src1.offsets().numpy(), src2.offsets().numpy(), out_rows, np.uint64(slot),
    )
    return JaggedTensor(torch.from_numpy(values.view(np.int64)), lengths)
