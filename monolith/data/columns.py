"""Column conversions shared by the readers: Arrow columns -> FIDs, numbers and hex ids, vectorised.

Parsing errors are located without per-value Python: a whole column is cast at once and only when
that fails is it bisected to find the unparsable entries (a few casts per bad value).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from monolith.data.base import Jagged, RowErrors, jagged
from monolith.fid import MAX_SLOT_V2, extract_fid, hash_string_fid

__all__ = ["check_slots", "invalid_utf8", "parse_column", "parse_hex", "sparse_fids", "cast_numeric"]

# A text token read as an int: up to 18 digits always fits int64; no "+" (Arrow's cast rejects it).
_INT_TOKEN = r"^-?[0-9]{1,18}$"
_HEX_TOKEN = r"^[0-9a-fA-F]{1,16}$"

_HEX_DIGIT = np.zeros(256, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX_DIGIT[_c] = _HEX_DIGIT[ord(chr(_c).upper())] = _i


def check_slots(slots: dict[str, int]) -> dict[str, int]:
    """Validate a feature -> slot mapping (v2 FIDs: slots ``0..32767``)."""
    for name, slot in slots.items():
        if not isinstance(slot, int) or not 0 <= slot <= MAX_SLOT_V2:
            raise ValueError(f"feature {name!r}: slot must be an int in 0..{MAX_SLOT_V2}, got {slot!r}")
    return slots


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t)


def _uncastable(values: pa.Array, to: pa.DataType, start: int, out: list[int]) -> None:
    """Append the positions (offset by ``start``) of the entries of ``values`` that don't cast to ``to``."""
    try:
        pc.cast(values, to)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        if len(values) == 1:
            out.append(start)
            return
        half = len(values) // 2
        _uncastable(values.slice(0, half), to, start, out)
        _uncastable(values.slice(half), to, start + half, out)


def invalid_utf8(values: pa.Array) -> np.ndarray:
    """The positions of the entries of a binary column ``[n]`` that are not valid UTF-8."""
    bad: list[int] = []
    _uncastable(values, pa.string(), 0, bad)
    return np.array(bad, dtype=np.int64)


def _cast(values: pa.Array, to: pa.DataType, where: str, what: str, errors: RowErrors, rows: np.ndarray) -> np.ndarray:
    """``values`` ``[n]`` as numpy of type ``to``, nulls as 0. An entry that does not cast reads as 0,
    and it or a float that is not finite in ``to`` (NaN, inf, beyond float32) is a problem of
    example ``rows[i]``."""
    try:
        cast = pc.cast(values, to)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        bad: list[int] = []
        _uncastable(values, to, 0, bad)
        errors.add(rows[bad], lambda k: f"{where}: expected {what}, got {values[bad[k]].as_py()!r}")
        mask = np.zeros(len(values), dtype=bool)
        mask[bad] = True
        cast = pc.cast(pc.if_else(pa.array(mask), pa.scalar(None, values.type), values), to)
    out = cast.fill_null(0).to_numpy(zero_copy_only=False)
    if pa.types.is_floating(to):
        # A model cannot learn from NaN or inf; a value too large for float32 casts to inf.
        infinite = np.flatnonzero(~np.isfinite(out))
        errors.add(rows[infinite], lambda k: f"{where}: expected a finite number, got {values[infinite[k]].as_py()!r}")
    return out


def parse_column(
    strings: pa.Array,
    to: pa.DataType,
    where: str,
    errors: RowErrors,
    *,
    required: bool,
    what: str = "a number",
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """Parse a string column ``[n]`` into numpy ``[n]`` of type ``to``.

    An empty string is a missing value: 0, or a problem when ``required``. An unparsable one reads
    as 0 and is a problem: "WHERE: expected WHAT, got 'VALUE'"; so is a value that is not finite
    as a float ``to`` (``nan``, ``inf``, ``1e40`` for float32). Problems are charged to example
    ``rows[i]`` for entry ``i`` (default: example ``i``).
    """
    rows = np.arange(len(strings)) if rows is None else rows
    empty = pc.equal(strings, "")
    strings = pc.if_else(empty, pa.scalar(None, strings.type), strings)
    if required:
        errors.add(rows[empty.to_numpy(zero_copy_only=False)], lambda k: f"{where}: expected {what}, got ''")
    return _cast(strings, to, where, what, errors, rows)


def parse_hex(strings: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Parse hex strings of 1..16 digits into uint64 ``[num]``; also return the bad positions.

    Bad entries read as 0. Vectorised: left-pad every string to 16 digits, map each byte to its
    digit, pack digit pairs into bytes and read them as big-endian 64-bit ints.
    """
    ok = pc.match_substring_regex(strings, _HEX_TOKEN)
    padded = pc.utf8_lpad(pc.if_else(ok, strings, "0").cast(pa.string()), width=16, padding="0")
    n = len(padded)
    start = int(np.frombuffer(padded.buffers()[1], dtype=np.int32)[padded.offset])
    chars = np.frombuffer(padded.buffers()[2], dtype=np.uint8)[start : start + 16 * n].reshape(n, 16)
    digits = _HEX_DIGIT[chars]
    packed = np.ascontiguousarray((digits[:, 0::2] << 4) | digits[:, 1::2])
    values = packed.view(">u8").reshape(n).astype(np.uint64)
    return values, np.flatnonzero(~ok.to_numpy(zero_copy_only=False))


def cast_numeric(
    column: pa.Array, to: pa.DataType, where: str, errors: RowErrors, *, required: bool, what: str = "a number"
) -> np.ndarray:
    """A numeric (or bool) column ``[n]`` as numpy ``[n]`` of type ``to``.

    A null reads as 0, and is a problem ("WHERE is null") when ``required``. A value that ``to``
    cannot hold (a fraction or NaN for an integer type, an integer out of range) reads as 0 and is
    a problem of its example; so is a value that is not finite in a float ``to``.

    Raises:
        TypeError: the column is not numeric (naming ``where``).
    """
    t = column.type
    if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_decimal(t)):
        raise TypeError(f"{where} must be numeric, got {t}")
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if required and column.null_count:
        errors.add(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False)), lambda k: f"{where} is null")
    return _cast(column, to, where, what, errors, np.arange(len(column)))


def sparse_fids(column: pa.Array, slot: int, name: str, *, text: bool = False) -> Jagged:
    """FIDs of one sparse column ``[num]`` as (int64 FIDs ``[total]``, offsets ``[num + 1]``).

    A cell is an int, a string, or a list of them; null cells and null list elements give no FID.
    Ints become ``extract_fid(value, slot)``, strings ``hash_string_fid(value, slot)``. With
    ``text=True`` (values read from a text file) a string that is a base-10 integer of at most 18
    digits (optional '-') counts as that int, and the empty string as null.
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    t = column.type
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        lengths = pc.list_value_length(column).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        flat = pc.list_flatten(column)
    else:
        lengths = np.ones(len(column), dtype=np.int64)
        flat = column
    if pa.types.is_dictionary(flat.type):
        flat = flat.dictionary_decode()
    valid = flat.is_valid()
    if text and _is_text(flat.type):
        valid = pc.and_(valid, pc.not_equal(flat, "").fill_null(False))
    valid_np = valid.to_numpy(zero_copy_only=False)
    if not valid_np.all():
        owner = np.repeat(np.arange(len(lengths)), lengths)
        lengths = lengths - np.bincount(owner[~valid_np], minlength=len(lengths))
        flat = flat.filter(valid)
    return jagged(_fids(flat, slot, name, text), lengths)


def _fids(flat: pa.Array, slot: int, name: str, text: bool) -> np.ndarray:
    t = flat.type
    if pa.types.is_integer(t):
        return extract_fid(flat.to_numpy(zero_copy_only=False), slot)
    if not _is_text(t):
        raise TypeError(f"sparse column {name!r} must hold ints, strings or lists of them, got {t}")
    if not text:
        return hash_string_fid(flat.to_pylist(), slot)
    is_int = pc.match_substring_regex(flat, _INT_TOKEN).to_numpy(zero_copy_only=False)
    out = np.empty(len(flat), dtype=np.int64)
    ints = pc.cast(flat.filter(pa.array(is_int)), pa.int64()).to_numpy(zero_copy_only=False)
    out[is_int] = extract_fid(ints, slot)
    out[~is_int] = hash_string_fid(flat.filter(pa.array(~is_int)).to_pylist(), slot)
    return out
