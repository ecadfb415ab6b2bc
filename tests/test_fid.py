"""FID layout, Monolith's ExtractFid hashing and string hashing, checked against independent values."""

import struct

import numpy as np
import pytest
import torch
from cityhash import CityHash64

from monolith import fid as F


def _as_int64(u: int) -> int:
    """Reinterpret a uint64 bit pattern as int64, independently of the module under test."""
    return struct.unpack("<q", struct.pack("<Q", u))[0]


def _ref_extract(value: int, slot: int) -> int:
    return (CityHash64(struct.pack("<Q", value & (2**64 - 1))) & (2**49 - 1)) | (slot << 48)


def test_extract_fid_monolith_reference_vector():
    # From Monolith's extract_fid_test.py.
    assert F.extract_fid(185, 4) == 1153447759131936


def test_constants():
    assert (F.SLOT_BITS_V2, F.SIGNATURE_BITS_V2, F.MAX_SLOT_V2) == (15, 48, 32767)
    assert (F.SLOT_BITS_V1, F.SIGNATURE_BITS_V1, F.MAX_SLOT_V1) == (10, 54, 1023)


def test_cityhash_kernel_matches_package():
    rng = np.random.default_rng(0)
    values = rng.integers(-(2**63), 2**63 - 1, size=100_000, dtype=np.int64, endpoint=True)
    values[:6] = [0, 1, -1, 2**63 - 1, -(2**63), 185]
    full = np.uint64(2**64 - 1)
    got = F._cityhash64_masked(values.view(np.uint64), full, np.uint64(0))
    expected = np.array([CityHash64(struct.pack("<q", int(v))) for v in values], dtype=np.uint64)
    np.testing.assert_array_equal(got, expected)


def test_extract_fid_numpy_torch_scalar_agree_with_package():
    rng = np.random.default_rng(1)
    values = rng.integers(-(2**63), 2**63 - 1, size=(50, 40), dtype=np.int64, endpoint=True)
    values[0, :4] = [0, -1, 2**63 - 1, -(2**63)]
    expected = np.array([[_ref_extract(int(v), 321) for v in row] for row in values], dtype=np.int64)

    got_np = F.extract_fid(values, 321)
    assert isinstance(got_np, np.ndarray) and got_np.dtype == np.int64 and got_np.shape == values.shape
    np.testing.assert_array_equal(got_np, expected)

    got_t = F.extract_fid(torch.from_numpy(values), 321)
    assert isinstance(got_t, torch.Tensor) and got_t.dtype == torch.int64
    np.testing.assert_array_equal(got_t.numpy(), expected)

    # Non-contiguous input and scalars take the same path.
    np.testing.assert_array_equal(F.extract_fid(values.T, 321), expected.T)
    assert F.extract_fid(int(values[3, 5]), 321) == int(expected[3, 5])
    assert F.extract_fid(np.int64(values[3, 5]), 321) == int(expected[3, 5])


def test_extract_fid_uint64_and_int64_scalars_hash_alike():
    assert F.extract_fid(-1, 7) == F.extract_fid(2**64 - 1, 7) == _ref_extract(2**64 - 1, 7)
    with pytest.raises(ValueError, match=r"value 18446744073709551616 out of range"):
        F.extract_fid(2**64, 7)


def test_extract_fid_keeps_monolith_49_bit_mask():
    # Find a value whose hash has bit 48 set: Monolith ORs it into the slot's lowest bit.
    value = next(v for v in range(1000) if CityHash64(struct.pack("<Q", v)) >> 48 & 1)
    fid = F.extract_fid(value, 4)
    assert F.get_slot(fid) == 5
    assert fid == _ref_extract(value, 4)


@pytest.mark.parametrize("slot", [0, 1, 4, 511, 512, 32767])
def test_v2_round_trip_scalar(slot):
    signature = 0xABCDEF012345
    fid = F.make_fid(slot, signature)
    assert isinstance(fid, int)
    assert fid == slot * 2**48 + signature
    assert F.get_slot(fid) == slot
    assert F.get_signature(fid) == signature


def test_v2_make_fid_drops_high_signature_bits():
    assert F.make_fid(3, 2**48 + 5) == 3 * 2**48 + 5
    assert F.make_fid(3, 2**63 - 1) == 3 * 2**48 + 2**48 - 1


def test_v2_round_trip_numpy_and_torch():
    rng = np.random.default_rng(2)
    slots = rng.integers(0, 32767, size=1000, endpoint=True)
    sigs = rng.integers(0, 2**48, size=1000)
    expected = np.array([s * 2**48 + g for s, g in zip(slots.tolist(), sigs.tolist())], dtype=np.int64)

    fids = F.make_fid(slots, sigs)
    assert isinstance(fids, np.ndarray) and fids.dtype == np.int64
    np.testing.assert_array_equal(fids, expected)
    np.testing.assert_array_equal(F.get_slot(fids), slots)
    np.testing.assert_array_equal(F.get_signature(fids), sigs)

    tfids = F.make_fid(torch.from_numpy(slots), torch.from_numpy(sigs))
    assert isinstance(tfids, torch.Tensor) and tfids.dtype == torch.int64
    np.testing.assert_array_equal(tfids.numpy(), expected)
    np.testing.assert_array_equal(F.get_slot(tfids).numpy(), slots)
    np.testing.assert_array_equal(F.get_signature(tfids).numpy(), sigs)

    # A scalar slot broadcasts over an array of signatures.
    np.testing.assert_array_equal(F.make_fid(9, sigs), sigs + 9 * 2**48)
    np.testing.assert_array_equal(F.make_fid(9, torch.from_numpy(sigs)).numpy(), sigs + 9 * 2**48)


@pytest.mark.parametrize("slot", [0, 1, 511, 512, 700, 1023])
def test_v1_round_trip_scalar(slot):
    signature = 0x2BCDEF01234567
    fid = F.make_fid_v1(slot, signature)
    assert fid == _as_int64(slot * 2**54 + signature)
    assert (fid < 0) == (slot >= 512)
    assert F.get_slot_v1(fid) == slot
    assert F.get_signature_v1(fid) == signature
    # The uint64 spelling of the same FID decodes identically.
    assert F.get_slot_v1(fid & (2**64 - 1)) == slot
    assert F.get_signature_v1(fid & (2**64 - 1)) == signature


def test_v1_round_trip_numpy_and_torch():
    rng = np.random.default_rng(3)
    slots = rng.integers(0, 1023, size=1000, endpoint=True)
    slots[:2] = [0, 1023]
    sigs = rng.integers(0, 2**54, size=1000)
    expected = np.array([_as_int64(s * 2**54 + g) for s, g in zip(slots.tolist(), sigs.tolist())], dtype=np.int64)

    fids = F.make_fid_v1(slots, sigs)
    assert isinstance(fids, np.ndarray) and fids.dtype == np.int64
    np.testing.assert_array_equal(fids, expected)
    np.testing.assert_array_equal(F.get_slot_v1(fids), slots)
    np.testing.assert_array_equal(F.get_signature_v1(fids), sigs)
    # uint64 storage of the same FIDs decodes identically.
    np.testing.assert_array_equal(F.get_slot_v1(fids.view(np.uint64)), slots)

    tfids = F.make_fid_v1(torch.from_numpy(slots), torch.from_numpy(sigs))
    assert isinstance(tfids, torch.Tensor) and tfids.dtype == torch.int64
    np.testing.assert_array_equal(tfids.numpy(), expected)
    np.testing.assert_array_equal(F.get_slot_v1(tfids).numpy(), slots)
    np.testing.assert_array_equal(F.get_signature_v1(tfids).numpy(), sigs)


@pytest.mark.parametrize(
    ("make", "slot", "message"),
    [
        (F.make_fid, 40000, "slot 40000 out of range 0..32767"),
        (F.make_fid, -1, "slot -1 out of range 0..32767"),
        (F.make_fid_v1, 1024, "slot 1024 out of range 0..1023"),
        (F.make_fid_v1, -3, "slot -3 out of range 0..1023"),
    ],
)
def test_bad_slot_scalar(make, slot, message):
    with pytest.raises(ValueError, match=message):
        make(slot, 1)


def test_bad_slot_array_reports_first_bad_value():
    slots = np.array([1, 5, 40001, 40002, -1])
    with pytest.raises(ValueError, match="slot 40001 out of range 0..32767"):
        F.make_fid(slots, 1)
    with pytest.raises(ValueError, match="slot 2000 out of range 0..1023"):
        F.make_fid_v1(torch.tensor([3, 2000, 5000]), 1)
    with pytest.raises(ValueError, match="slot 32768 out of range 0..32767"):
        F.extract_fid(np.arange(3), 32768)
    with pytest.raises(ValueError, match="slot -2 out of range 0..32767"):
        F.hash_string_fid(["a"], -2)


def test_negative_signature():
    with pytest.raises(ValueError, match="signature -5 out of range 0.."):
        F.make_fid(1, -5)
    with pytest.raises(ValueError, match="signature -7 out of range 0.."):
        F.make_fid_v1(1, np.array([3, -7, -9]))
    with pytest.raises(ValueError, match="signature -9 out of range 0.."):
        F.make_fid(torch.tensor(2), torch.tensor([0, -9]))


def test_type_errors():
    with pytest.raises(TypeError):
        F.make_fid(np.array([1]), torch.tensor([1]))
    with pytest.raises(TypeError):
        F.get_slot(np.array([1.5]))
    with pytest.raises(TypeError):
        F.extract_fid(1.0, 3)


def test_hash_string_fid():
    mask = 2**48 - 1
    assert F.hash_string_fid("abc", 12) == (CityHash64(b"abc") & mask) | (12 << 48)
    assert F.hash_string_fid(b"abc", 12) == F.hash_string_fid("abc", 12)
    words = ["", "user_42", "naïve", "北京", "x" * 100]
    got = F.hash_string_fid(words, 32767)
    expected = np.array([(CityHash64(w.encode("utf-8")) & mask) | (32767 << 48) for w in words], dtype=np.int64)
    assert isinstance(got, np.ndarray) and got.dtype == np.int64
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(F.get_slot(got), 32767)
    assert F.hash_string_fid(iter([]), 1).shape == (0,)


def test_fid_to_int64_takes_int64_and_uint64_spellings():
    assert F.fid_to_int64(-(2**63)) == -(2**63) and F.fid_to_int64(2**63 - 1) == 2**63 - 1
    assert F.fid_to_int64(2**63) == -(2**63) and F.fid_to_int64(2**64 - 1) == -1
    for outside in (2**64, -(2**63) - 1):
        with pytest.raises(ValueError, match="does not fit in 64 bits"):
            F.fid_to_int64(outside)
