"""A Criteo-like synthetic click log with a known ground truth: :class:`SyntheticClickLog`.

Every id of every feature has a hidden weight, computed from ``(seed, feature, id)`` by a hash, so
no table is stored and tens of millions of distinct ids cost nothing. An example's true logit is

    bias + sum of the hidden weights of its ids (all features) + dense_weights . dense

and its label is drawn from ``Bernoulli(sigmoid(true_logit))``. ``Batch.dense["true_logit"]``
exposes the logit, so a test can compare a trained model's AUC with the ideal one.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence

import numba
import numpy as np
import torch

from monolith.fid import extract_fid
from monolith.sparse import Batch, KeyedJaggedTensor

__all__ = ["SyntheticClickLog"]

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S11 = np.uint64(11)
_TWO_POW_M53 = 1.0 / (1 << 53)
_U64 = (1 << 64) - 1

#: Resolution of the tabulated inverse CDF of the id popularity.
_ZIPF_POINTS = 1 << 16


@numba.njit(cache=True, inline="always")
def _mix64(x: np.uint64) -> np.uint64:
    """splitmix64's finaliser: a bijection of uint64 that scatters nearby inputs."""
    x = (x ^ (x >> _S30)) * _M1
    x = (x ^ (x >> _S27)) * _M2
    return x ^ (x >> _S31)


@numba.njit(cache=True, inline="always")
def _unit(h: np.uint64) -> float:
    """The top 53 bits of ``h`` as a float in [0, 1)."""
    return (h >> _S11) * _TWO_POW_M53


@numba.njit(cache=True)
def _draw_ids(
    lengths: np.ndarray,
    zipf_table: np.ndarray,
    vocab: int,
    new_id_rate: float,
    fresh_base: int,
    key: np.uint64,
    weight_key: np.uint64,
    weight_scale: float,
    logits: np.ndarray,
) -> np.ndarray:
    """Ids ``[sum(lengths)]`` (int64) of one feature; adds each id's hidden weight to its example's logit.

    Id ``i`` draws its uniforms from the splitmix64 stream of ``key`` at position ``i``. A fresh id
    (probability ``new_id_rate``) is ``vocab + fresh_base + i``; any other is a popularity rank
    ``floor(x) - 1`` in ``0..vocab-1`` with ``x`` read off ``zipf_table`` (linear interpolation).
    The weight is uniform in ``[-weight_scale, weight_scale)``, from a hash of the id.
    """
    ids = np.empty(lengths.sum(), dtype=np.int64)
    points = zipf_table.shape[0] - 1
    i = 0
    for row in range(lengths.shape[0]):
        for _ in range(lengths[row]):
            counter = key + np.uint64(i) * _GOLDEN
            if new_id_rate > 0.0 and _unit(_mix64(counter ^ _M2)) < new_id_rate:
                rank = vocab + fresh_base + i
            else:
                pos = _unit(_mix64(counter)) * points
                k = int(pos)
                x = zipf_table[k] + (zipf_table[k + 1] - zipf_table[k]) * (pos - k)
                rank = min(max(int(x) - 1, 0), vocab - 1)
            ids[i] = rank
            logits[row] += weight_scale * (2.0 * _unit(_mix64(np.uint64(rank) + weight_key)) - 1.0)
            i += 1
    return ids


@functools.lru_cache(maxsize=64)
def _zipf_table(vocab: int, zipf_a: float) -> np.ndarray:
    """Inverse CDF of the continuous power law ``p(x) ~ x**-zipf_a`` on ``[1, vocab + 1)`` at
    ``_ZIPF_POINTS + 1`` evenly spaced probabilities (``zipf_a = 0``: uniform)."""
    u = np.linspace(0.0, 1.0, _ZIPF_POINTS + 1)
    e = 1.0 - zipf_a
    if abs(e) < 1e-9:
        x = np.exp(u * math.log(vocab + 1.0))
    else:
        x = (1.0 + u * ((vocab + 1.0) ** e - 1.0)) ** (1.0 / e)
    x.flags.writeable = False  # shared by every caller through the cache
    return x


def _key(*parts: int) -> int:
    """A 64-bit hash of a few ints (splitmix64 steps), to derive independent per-feature keys."""
    h = 0
    for p in parts:
        h = ((h ^ (p & _U64)) + 0x9E3779B97F4A7C15) & _U64
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _U64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _U64
        h ^= h >> 31
    return h


class SyntheticClickLog:
    """An iterable of ``num_batches`` :class:`Batch` es of a Criteo-like click log with known truth.

    Each batch has sparse features ``C1..C{num_sparse}`` (slots ``1..num_sparse``, FIDs
    ``extract_fid(id, slot)``) and dense entries ``dense`` float32 ``[batch, num_dense]`` (standard
    normal), ``label`` float32 ``[batch]`` and ``true_logit`` float32 ``[batch]``. Batch ``i`` depends
    only on ``(seed, i)``: iterating twice gives the same data, and :meth:`batch` gives any one.

    Distinct-id knobs: ``vocab_sizes`` bounds the ids a feature repeats (ranks ``0..vocab-1``,
    Zipf-skewed by ``zipf_a``; ``zipf_a=0`` is uniform and touches the most ids), and
    ``new_id_rate`` is the fraction of ids that are brand new (never seen before or again), the
    stream of fresh ids real logs have. E.g. ``vocab_sizes=10**8, zipf_a=0`` or ``new_id_rate=0.5``
    reach tens of millions of distinct ids within a few million examples.

    Args:
        num_sparse: number of sparse features.
        num_dense: width of the dense features.
        vocab_sizes: ids per feature, one int for all or one per feature.
        zipf_a: Zipf exponent of the id popularity (``>= 0``).
        ids_per_feature: ``(lo, hi)``: each example has ``lo..hi`` ids (inclusive, uniform) per
            feature; an int ``n`` means ``(n, n)``.
        batch_size: examples per batch.
        num_batches: batches per pass; ``None`` for an endless stream.
        seed: fixes the hidden weights and the data.
        new_id_rate: fraction of ids drawn fresh.
        weight_scale: hidden id weights are uniform in ``[-weight_scale, weight_scale)``; default
            ``1.5 * sqrt(3 / num_sparse)``, which gives the single-id sparse part of the logit a
            standard deviation of about 1.5.
        dense_scale: the dense weights are ``N(0, dense_scale**2 / num_dense)``.
        bias: the logit's constant; the default ``-1.0`` gives a click rate near 0.3.
    """

    def __init__(
        self,
        num_sparse: int = 26,
        num_dense: int = 13,
        vocab_sizes: int | Sequence[int] = 1_000_000,
        zipf_a: float = 1.2,
        ids_per_feature: int | tuple[int, int] = (1, 1),
        batch_size: int = 4096,
        num_batches: int | None = 100,
        seed: int = 0,
        *,
        new_id_rate: float = 0.0,
        weight_scale: float | None = None,
        dense_scale: float = 0.5,
        bias: float = -1.0,
    ) -> None:
        vocab = [vocab_sizes] * num_sparse if isinstance(vocab_sizes, int) else list(vocab_sizes)
        if len(vocab) != num_sparse or min(vocab, default=1) < 1:
            raise ValueError(f"vocab_sizes needs {num_sparse} sizes >= 1, got {vocab_sizes}")
        lo, hi = (ids_per_feature, ids_per_feature) if isinstance(ids_per_feature, int) else ids_per_feature
        if not 0 <= lo <= hi:
            raise ValueError(f"ids_per_feature must be n >= 0 or (lo, hi) with 0 <= lo <= hi, got {ids_per_feature}")
        if zipf_a < 0 or not 0.0 <= new_id_rate <= 1.0 or batch_size < 1 or num_dense < 0 or num_sparse < 0:
            raise ValueError("need zipf_a >= 0, 0 <= new_id_rate <= 1, batch_size >= 1, num_sparse/num_dense >= 0")
        self.num_sparse, self.num_dense = num_sparse, num_dense
        self.vocab_sizes = vocab
        self.zipf_a = float(zipf_a)
        self.ids_per_feature = (lo, hi)
        self.batch_size, self.num_batches, self.seed = batch_size, num_batches, seed
        self.new_id_rate = float(new_id_rate)
        self.weight_scale = 1.5 * math.sqrt(3.0 / max(num_sparse, 1)) if weight_scale is None else weight_scale
        self.bias = bias
        self.feature_names = [f"C{i}" for i in range(1, num_sparse + 1)]
        #: Weights of the dense features, float64 ``[num_dense]``.
        self.dense_weights = np.random.default_rng([seed, 1 << 32]).normal(
            0.0, dense_scale / math.sqrt(max(num_dense, 1)), num_dense
        )

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("an endless SyntheticClickLog (num_batches=None) has no length")
        return self.num_batches

    def __iter__(self) -> Iterator[Batch]:
        index = 0
        while self.num_batches is None or index < self.num_batches:
            yield self.batch(index)
            index += 1

    def batch(self, index: int) -> Batch:
        """Batch number ``index`` (``>= 0``) of the stream."""
        rng = np.random.default_rng([self.seed, index])
        n = self.batch_size
        lo, hi = self.ids_per_feature
        dense = rng.standard_normal((n, self.num_dense), dtype=np.float32)
        logits = self.bias + (dense @ self.dense_weights.astype(np.float32)).astype(np.float64)
        values, lengths = [], []
        for f, vocab in enumerate(self.vocab_sizes):
            counts = np.full(n, lo, dtype=np.int64) if lo == hi else rng.integers(lo, hi + 1, n, dtype=np.int64)
            ids = _draw_ids(
                counts,
                _zipf_table(vocab, self.zipf_a),
                vocab,
                self.new_id_rate,
                # Room for the most ids any batch can have keeps the fresh ids of all batches apart.
                index * n * hi,
                np.uint64(_key(self.seed, index, f)),
                np.uint64(_key(self.seed, f)),
                self.weight_scale,
                logits,
            )
            values.append(extract_fid(ids, f + 1))
            lengths.append(counts)
        label = (rng.random(n) < 1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
        empty = np.empty(0, dtype=np.int64)
        sparse = KeyedJaggedTensor(
            self.feature_names,
            torch.from_numpy(np.concatenate(values) if values else empty),
            torch.from_numpy(np.concatenate(lengths) if lengths else empty),
            stride=n,
        )
        dense_out = {"dense": dense, "label": label, "true_logit": logits.astype(np.float32)}
        return Batch(sparse, {k: torch.from_numpy(v) for k, v in dense_out.items()})
