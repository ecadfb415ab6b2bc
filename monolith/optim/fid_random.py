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

from monolith.splitmix import GOLDEN, mix64, mix64_int


@numba.njit(cache=True, nogil=True)
def _uniforms(key, fids, first, out):
    """``out[i, j]``: the ``(first + j)``-th uniform in [0, 1) of ``fids[i]`` under ``key``, float32
    from the top 24 bits (every float32 step of [0, 1) equally likely)."""
    scale = np.float32(1.0 / (1 << 24))
    for i in range(fids.size):
        row = mix64(key ^ mix64(np.uint64(fids[i]) + GOLDEN))
        for j in range(out.shape[1]):
            x = mix64(row + np.uint64(first + j + 1) * GOLDEN)
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
        self._key = np.uint64(mix64_int(mix64_int(seed) ^ (stream & ((1 << 64) - 1))))
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

