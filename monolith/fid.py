"""Feature IDs (FIDs): 64-bit integers with the slot in the high bits and a hashed signature below.

Monolith packs every sparse feature value into one FID. Two layouts exist:

* v2 (default): slot in bits 48..62 (15 bits), signature in bits 0..47.
* v1 (legacy): slot in bits 54..63 (10 bits), signature in bits 0..53.

Monolith treats FIDs as uint64 but stores them in int64 tensors; this module does the same, so a v1
FID whose slot is >= 512 has bit 63 set and reads as a negative int64. Every function accepts a
Python int, an integer numpy array or an integer torch tensor, and returns the same kind: a Python
int for scalars, an int64 array or tensor otherwise. Scalar FIDs may be given either as int64
(negative) or as uint64 (>= 2**63) values; results are always int64 values.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TypeVar

import numba
import numpy as np
import torch
from cityhash import CityHash64

SLOT_BITS_V2 = 15
SIGNATURE_BITS_V2 = 48
MAX_SLOT_V2 = (1 << SLOT_BITS_V2) - 1
SIGNATURE_MASK_V2 = (1 << SIGNATURE_BITS_V2) - 1

SLOT_BITS_V1 = 10
SIGNATURE_BITS_V1 = 54
MAX_SLOT_V1 = (1 << SLOT_BITS_V1) - 1
SIGNATURE_MASK_V1 = (1 << SIGNATURE_BITS_V1) - 1

#: Monolith's ExtractFid kernel keeps 49 hash bits, so bit 48 of the hash can OR into the slot's
#: lowest bit. Kept as is so FIDs match those produced by Monolith.
EXTRACT_FID_HASH_MASK = (1 << 49) - 1

#: ``hash_string_fid`` keeps exactly the 48 signature bits, so the slot is never altered.
STRING_HASH_MASK = SIGNATURE_MASK_V2

INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1
UINT64_MAX = (1 << 64) - 1

IntLike = int | np.ndarray | torch.Tensor
T = TypeVar("T", int, np.ndarray, torch.Tensor)

# CityHash64 constants and the multiplier HashLen0to16 uses for an 8-byte input (k2 + 2 * len).
_K2 = np.uint64(0x9AE16A3B2F90404F)
_MUL8 = np.uint64(0x9AE16A3B2F90404F + 16)
_U37 = np.uint64(37)
_U27 = np.uint64(27)
_U25 = np.uint64(25)
_U39 = np.uint64(39)
_U47 = np.uint64(47)


@numba.njit(cache=True)
def _cityhash64_masked(values: np.ndarray, mask: np.uint64, tag: np.uint64) -> np.ndarray:
    """``(CityHash64(8 little-endian bytes of v) & mask) | tag`` for each uint64 ``v``.

    CityHash64 of an 8-byte string takes the ``HashLen0to16`` branch with ``a = v + k2``, ``b = v``.
    Reading the bytes little-endian yields ``v`` itself, so no byte handling is needed.
    """
    out = np.empty(values.shape[0], dtype=np.uint64)
    for i in range(values.shape[0]):
        b = values[i]
        a = b + _K2
        c = ((b >> _U37) | (b << _U27)) * _MUL8 + a
        d = (((a >> _U25) | (a << _U39)) + b) * _MUL8
        # HashLen16(c, d, mul)
        x = (c ^ d) * _MUL8
        x ^= x >> _U47
        y = (d ^ x) * _MUL8
        y ^= y >> _U47
        y *= _MUL8
        out[i] = (y & mask) | tag
    return out


def _normalize(x: IntLike, name: str) -> IntLike:
    """Return ``x`` as a Python int, an int64 numpy array or an int64 torch tensor."""
    if isinstance(x, torch.Tensor):
        if torch.is_floating_point(x) or torch.is_complex(x) or x.dtype == torch.bool:
            raise TypeError(f"{name} must have an integer dtype, got {x.dtype}")
        return x.to(torch.int64)
    if isinstance(x, np.ndarray):
        if x.dtype.kind not in "iu":
            raise TypeError(f"{name} must have an integer dtype, got {x.dtype}")
        # uint64 FIDs wrap to their int64 bit pattern, which is the storage this module uses.
        return x.astype(np.int64, copy=False)
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        return int(x)
    raise TypeError(f"{name} must be an int, an integer numpy array or an integer torch tensor, got {type(x).__name__}")


def _check_range(x: IntLike, name: str, lo: int, hi: int) -> None:
    """Raise ValueError naming the first element of ``x`` outside ``lo..hi``."""
    if isinstance(x, int):
        if not lo <= x <= hi:
            raise ValueError(f"{name} {x} out of range {lo}..{hi}")
        return
    bad = (x < lo) | (x > hi)
    if bad.any():
        raise ValueError(f"{name} {int(x[bad][0])} out of range {lo}..{hi}")


def _check_same_kind(slot: IntLike, signature: IntLike) -> None:
    """Reject mixing numpy and torch, whose operators would silently pick one of them."""
    kinds = {type(v) for v in (slot, signature) if not isinstance(v, int)}
    if len(kinds) > 1:
        raise TypeError("slot and signature must not mix numpy arrays and torch tensors")


def _normalize_fid(fid: IntLike) -> IntLike:
    fid = _normalize(fid, "fid")
    if isinstance(fid, int):
        _check_range(fid, "fid", INT64_MIN, UINT64_MAX)
    return fid


_SLOT_NAME = re.compile(r"(?:fc_)?slot_(\d+)")


def slot_from_name(name: str) -> int | None:
    """``N`` of a ``slot_N`` or ``fc_slot_N`` feature name (Monolith's names for bare slots), else ``None``."""
    match = _SLOT_NAME.fullmatch(name)
    return int(match.group(1)) if match else None


def fid_to_int64(value: int) -> int:
    """A FID given as a Python int of int64 or uint64 range (``-2**63 .. 2**64-1``) as its int64
    value: uint64 FIDs at or above ``2**63`` become their two's complement.

    Raises:
        ValueError: ``value`` does not fit in 64 bits.
    """
    if not INT64_MIN <= value <= UINT64_MAX:
        raise ValueError(f"FID {value!r} does not fit in 64 bits (int64 or uint64: -2**63..2**64-1)")
    return value - (1 << 64) if value > INT64_MAX else value


def make_fid(slot: IntLike, signature: IntLike) -> IntLike:
    """Pack a v2 FID: ``(slot << 48) | (signature & (2**48 - 1))``.

    ``slot`` must lie in ``0..MAX_SLOT_V2`` and ``signature`` must be non-negative; signature bits
    above bit 47 are dropped. Either argument may be an array (broadcast against the other).

    Example:
        >>> make_fid(4, 123)
        1125899906842747
    """
    slot, signature = _normalize(slot, "slot"), _normalize(signature, "signature")
    _check_same_kind(slot, signature)
    _check_range(slot, "slot", 0, MAX_SLOT_V2)
    _check_range(signature, "signature", 0, INT64_MAX)
    return (slot << SIGNATURE_BITS_V2) | (signature & SIGNATURE_MASK_V2)


def get_slot(fid: T) -> T:
    """Slot of a v2 FID: ``fid >> 48 & 0x7fff``.

    Example:
        >>> get_slot(make_fid(4, 123))
        4
    """
    return (_normalize_fid(fid) >> SIGNATURE_BITS_V2) & MAX_SLOT_V2


def get_signature(fid: T) -> T:
    """Signature of a v2 FID: ``fid & (2**48 - 1)``.

    Example:
        >>> get_signature(make_fid(4, 123))
        123
    """
    return _normalize_fid(fid) & SIGNATURE_MASK_V2


def make_fid_v1(slot: IntLike, signature: IntLike) -> IntLike:
    """Pack a legacy v1 FID: ``(slot << 54) | (signature & (2**54 - 1))`` as uint64, stored as int64.

    ``slot`` must lie in ``0..MAX_SLOT_V1`` and ``signature`` must be non-negative; signature bits
    above bit 53 are dropped. Slots >= 512 set bit 63, so those FIDs are negative int64 values.

    Example:
        >>> make_fid_v1(3, 7)
        54043195528445959
        >>> make_fid_v1(1023, 0)
        -18014398509481984
    """
    slot, signature = _normalize(slot, "slot"), _normalize(signature, "signature")
    _check_same_kind(slot, signature)
    _check_range(slot, "slot", 0, MAX_SLOT_V1)
    _check_range(signature, "signature", 0, INT64_MAX)
    # Map slots 512..1023 to their two's-complement value (-512..-1) so the shifted slot is the
    # int64 bit pattern without overflowing int64 arithmetic in numpy or torch.
    signed_slot = slot - ((slot >> (SLOT_BITS_V1 - 1)) << SLOT_BITS_V1)
    return signed_slot * (1 << SIGNATURE_BITS_V1) | (signature & SIGNATURE_MASK_V1)


def get_slot_v1(fid: T) -> T:
    """Slot of a legacy v1 FID: its top 10 bits, i.e. ``uint64(fid) >> 54``.

    Example:
        >>> get_slot_v1(make_fid_v1(1023, 7))
        1023
    """
    # The mask undoes the sign extension of the arithmetic shift on int64 storage.
    return (_normalize_fid(fid) >> SIGNATURE_BITS_V1) & MAX_SLOT_V1


def get_signature_v1(fid: T) -> T:
    """Signature of a legacy v1 FID: ``fid & (2**54 - 1)``.

    Example:
        >>> get_signature_v1(make_fid_v1(1023, 7))
        7
    """
    return _normalize_fid(fid) & SIGNATURE_MASK_V1


def extract_fid(value: T, slot: int) -> T:
    """Hash raw int64 values into v2 FIDs exactly like Monolith's ``ExtractFid`` op.

    Computes ``(CityHash64(8 little-endian bytes of value) & (2**49 - 1)) | (slot << 48)``. The
    49-bit mask is Monolith's (see ``EXTRACT_FID_HASH_MASK``). Scalar values may be given in
    ``-2**63..2**64-1`` (int64 and uint64 with the same bits hash alike). Tensors are hashed on the
    CPU and the result is returned on the input's device.

    Example:
        >>> extract_fid(185, 4)
        1153447759131936
    """
    slot = _normalize(slot, "slot")
    if not isinstance(slot, int):
        raise TypeError("slot must be a scalar int")
    _check_range(slot, "slot", 0, MAX_SLOT_V2)
    value = _normalize(value, "value")
    mask, tag = np.uint64(EXTRACT_FID_HASH_MASK), np.uint64(slot << SIGNATURE_BITS_V2)
    if isinstance(value, int):
        _check_range(value, "value", INT64_MIN, UINT64_MAX)
        return int(_cityhash64_masked(np.array([value & UINT64_MAX], dtype=np.uint64), mask, tag)[0])
    if isinstance(value, torch.Tensor):
        fids = _extract_fid_numpy(value.detach().cpu().numpy(), mask, tag)
        return torch.from_numpy(fids).to(value.device)
    return _extract_fid_numpy(value, mask, tag)


def _extract_fid_numpy(values: np.ndarray, mask: np.uint64, tag: np.uint64) -> np.ndarray:
    flat = np.ascontiguousarray(values).reshape(-1).view(np.uint64)
    return _cityhash64_masked(flat, mask, tag).view(np.int64).reshape(values.shape)


def hash_string_fid(values: str | bytes | Iterable[str | bytes], slot: int) -> int | np.ndarray:
    """Hash raw categorical strings into v2 FIDs: ``(CityHash64(utf8) & (2**48 - 1)) | (slot << 48)``.

    Unlike ``extract_fid``, the hash is masked to exactly the 48 signature bits so it never changes
    the slot (``get_slot`` of the result is always ``slot``). A single ``str``/``bytes`` gives an
    int; any other iterable of them gives an int64 numpy array.

    Example:
        >>> hash_string_fid("abc", 4) == make_fid(4, 2640714258260161385 & (2**48 - 1))
        True
    """
    slot = _normalize(slot, "slot")
    if not isinstance(slot, int):
        raise TypeError("slot must be a scalar int")
    _check_range(slot, "slot", 0, MAX_SLOT_V2)
    tag = slot << SIGNATURE_BITS_V2
    if isinstance(values, (str, bytes)):
        return _hash_string(values) | tag
    hashes = np.fromiter((_hash_string(v) for v in values), dtype=np.int64)
    return hashes | tag


def _hash_string(value: str | bytes) -> int:
    if isinstance(value, str):
        value = value.encode("utf-8")
    elif not isinstance(value, bytes):
        raise TypeError(f"expected str or bytes, got {type(value).__name__}")
    return CityHash64(value) & STRING_HASH_MASK
