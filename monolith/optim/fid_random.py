"""Random numbers keyed by FID: a row's initial value depends on (seed, table, slice, FID) only.

A table creates rows in the order ids arrive, and under torch.distributed each rank creates only
the rows it owns; a generator drawn in creation order would give an id another vector in 1 process
than in N, and the i-th new row of every shard the same vector. :class:`FidRandom` is counter-based
instead: the ``j``-th number of a row is splitmix64's finaliser of a key mixed from the seed, the
stream (the slice) and the FID, plus ``j`` times the golden-ratio step, so it is the same whatever
else the table holds, in whatever order, on whichever rank.
"""

from __future__ import annotations

import numba
import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_MASK64 = (1 << 64) - 1


@numba.njit(cache=True, inline="always")
def _mix(x: np.uint64) -> np.uint64:
    x = (x ^ (x >> np.uint64(30))) * _MIX1
    x = (x ^ (x >> np.uint64(27))) * _MIX2
    return x ^ (x >> np.uint64(31))


@numba.njit(cache=True, nogil=True)
def _uniforms(key, fids, first, out):
    """``out[i, j]``: the ``(first + j)``-th uniform in [0, 1) of ``fids[i]`` under ``key``, float32
    from the top 24 bits (every float32 step of [0, 1) equally likely)."""
    scale = np.float32(1.0 / (1 << 24))
    for i in range(fids.size):
        row = _mix(key ^ _mix(np.uint64(fids[i]) + _GOLDEN))
        for j in range(out.shape[1]):
            x = _mix(row + np.uint64(first + j + 1) * _GOLDEN)
            out[i, j] = np.float32(x >> np.uint64(40)) * scale


class FidRandom:
    """Uniform numbers for the rows of ``fids``, row ``i`` a function of (``seed``, ``stream``,
    ``fids[i]``) alone; what :meth:`~monolith.optim.base.Initializer.initialize` draws from.

    Successive :meth:`random` calls continue each row's sequence, so an initializer may draw twice.

    Example::

        FidRandom(seed=0, stream=0, fids=np.array([7, 9])).random((2, 4))   # row of 7: the same in any table
    """

    def __init__(self, seed: int, stream: int, fids: np.ndarray) -> None:
        self.fids = np.ascontiguousarray(fids, dtype=np.int64)
        self._key = np.uint64(_mix_int(_mix_int(seed & _MASK64) ^ (stream & _MASK64)))
        self._drawn = 0

    def random(self, shape: tuple[int, ...], dtype: type = np.float32) -> np.ndarray:
        """Uniforms in [0, 1) of ``shape`` ``(len(fids), d)``: ``d`` more of each row's sequence."""
        if len(shape) != 2 or shape[0] != self.fids.size or np.dtype(dtype) != np.float32:
            raise ValueError(f"FidRandom.random draws float32 [{self.fids.size}, d] (one row per FID), "
                             f"got shape {tuple(shape)} of {np.dtype(dtype)}")
        out = np.empty(shape, dtype=np.float32)
        _uniforms(self._key, self.fids, self._drawn, out)
        self._drawn += shape[1]
        return out


def _mix_int(x: int) -> int:
    """splitmix64's finaliser on a Python int (for the key, once per draw source)."""
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)
