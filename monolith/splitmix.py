"""splitmix64's finaliser: a bijection of uint64 in which every input bit flips about half the
output bits. The counter-based row initialisation and the sliding hash filter hash with it."""

from __future__ import annotations

import numba
import numpy as np

#: splitmix64's increment (2^64 / golden ratio), the step between successive counters.
GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_MASK64 = (1 << 64) - 1


@numba.njit(cache=True, inline="always")
def mix64(x: np.uint64) -> np.uint64:
    """The finaliser on a uint64, inside numba kernels."""
    x = (x ^ (x >> np.uint64(30))) * _MIX1
    x = (x ^ (x >> np.uint64(27))) * _MIX2
    return x ^ (x >> np.uint64(31))


def mix64_int(x: int) -> int:
    """The finaliser on a Python int (taken modulo 2^64), outside kernels."""
    x &= _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)
