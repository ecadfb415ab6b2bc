"""Jagged (ragged) batches of sparse features, laid out like TorchRec's ``jagged_tensor``.

A *jagged* column holds a variable number of ids per example. It is stored flat:

* ``values``  -- 1-D, ``[total]``: every row's ids (int64 FIDs) or floats, concatenated row by row;
* ``lengths`` -- int64 ``[batch]``: how many of ``values`` belong to each row;
* ``offsets`` -- int64 ``[batch + 1]``: ``cumsum`` of ``lengths`` with a leading 0, so row ``b`` is
  ``values[offsets[b]:offsets[b + 1]]``.

:class:`KeyedJaggedTensor` packs several such columns (one per feature name) sharing one batch; its
``lengths`` are key-major, ``[len(keys) * batch]``: all rows of the first key, then the second, ...

Monolith's FIDs are uint64; values at or above ``2**63`` travel as their two's-complement int64.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

__all__ = ["JaggedTensor", "KeyedJaggedTensor", "KeyedTensor", "Batch"]


def _check_values(values: torch.Tensor, what: str) -> torch.Tensor:
    if not isinstance(values, torch.Tensor):
        raise TypeError(f"{what} values must be a torch.Tensor, got {type(values).__name__}")
    if values.dim() != 1:
        raise ValueError(f"{what} values must be 1-D, got shape {tuple(values.shape)}")
    if values.dtype == torch.bool or not (values.dtype == torch.int64 or values.is_floating_point()):
        raise ValueError(f"{what} values must be int64 (FIDs) or floating point, got {values.dtype}")
    return values


def _check_lengths(lengths: torch.Tensor, what: str) -> torch.Tensor:
    if not isinstance(lengths, torch.Tensor):
        raise TypeError(f"{what} lengths must be a torch.Tensor, got {type(lengths).__name__}")
    if lengths.dim() != 1:
        raise ValueError(f"{what} lengths must be 1-D, got shape {tuple(lengths.shape)}")
    if lengths.dtype == torch.bool or lengths.is_floating_point() or lengths.is_complex():
        raise ValueError(f"{what} lengths must be an integer tensor, got {lengths.dtype}")
    lengths = lengths.to(torch.int64)
    if lengths.numel() and int(lengths.min()) < 0:
        raise ValueError(f"{what} lengths must be non-negative, got min {int(lengths.min())}")
    return lengths


def _offsets(lengths: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(lengths.numel() + 1, dtype=torch.int64, device=lengths.device)
    torch.cumsum(lengths, 0, out=out[1:])
    return out


class JaggedTensor:
    """One jagged column: ``values`` ``[total]`` split into ``batch`` rows by ``lengths`` ``[batch]``.

    Raises:
        TypeError: ``values`` or ``lengths`` is not a tensor.
        ValueError: ``values`` is not 1-D int64/float, ``lengths`` is not 1-D integer, a length is
            negative, or ``sum(lengths) != len(values)``.
    """

    def __init__(self, values: torch.Tensor, lengths: torch.Tensor) -> None:
        values = _check_values(values, "JaggedTensor")
        lengths = _check_lengths(lengths, "JaggedTensor")
        if lengths.device != values.device:
            raise ValueError(f"JaggedTensor lengths are on {lengths.device} but values on {values.device}")
        total = int(lengths.sum())
        if total != values.numel():
            raise ValueError(f"JaggedTensor needs sum(lengths) == len(values), got {total} != {values.numel()}")
        self._values = values
        self._lengths = lengths
        self._offsets: torch.Tensor | None = None

    @classmethod
    def _trusted(cls, values: torch.Tensor, lengths: torch.Tensor) -> JaggedTensor:
        # Slices and device copies of a validated tensor are valid; skip the checks (and GPU syncs).
        jt = cls.__new__(cls)
        jt._values, jt._lengths, jt._offsets = values, lengths, None
        return jt

    @classmethod
    def from_lists(cls, rows: Sequence[Sequence[int | float]], dtype: torch.dtype = torch.int64) -> JaggedTensor:
        """Build from Python rows, e.g. ``[[1], [2, 3]]`` -> values ``[1, 2, 3]``, lengths ``[1, 2]``."""
        lengths = torch.tensor([len(r) for r in rows], dtype=torch.int64)
        values = torch.tensor(list(itertools.chain.from_iterable(rows)), dtype=dtype)
        return cls._trusted(values, lengths)

    def values(self) -> torch.Tensor:
        """The flat ids/floats, ``[total]``."""
        return self._values

    def lengths(self) -> torch.Tensor:
        """Ids per row, int64 ``[batch]``."""
        return self._lengths

    def offsets(self) -> torch.Tensor:
        """Row starts in :meth:`values`, int64 ``[batch + 1]`` (leading 0); computed once."""
        if self._offsets is None:
            self._offsets = _offsets(self._lengths)
        return self._offsets

    def batch_size(self) -> int:
        return self._lengths.numel()

    def __len__(self) -> int:
        return self._lengths.numel()

    def to_padded(self, n: int, padding_value: int | float = 0) -> torch.Tensor:
        """Dense ``[batch, n]``: each row's first ``n`` values, padded with ``padding_value``."""
        if n < 0:
            raise ValueError(f"to_padded needs n >= 0, got {n}")
        batch = self.batch_size()
        out = torch.full((batch, n), padding_value, dtype=self._values.dtype, device=self._values.device)
        row = torch.repeat_interleave(
            torch.arange(batch, device=self._lengths.device), self._lengths, output_size=self._values.numel()
        )
        pos = torch.arange(self._values.numel(), device=self._values.device) - self.offsets()[:-1][row]
        keep = pos < n
        out[row[keep], pos[keep]] = self._values[keep]
        return out

    def to_lists(self) -> list[list[int | float]]:
        """Python rows, the inverse of :meth:`from_lists`."""
        return [chunk.tolist() for chunk in torch.split(self._values, self._lengths.tolist())]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> JaggedTensor:
        return JaggedTensor._trusted(
            self._values.to(device, non_blocking=non_blocking), self._lengths.to(device, non_blocking=non_blocking)
        )

    def __repr__(self) -> str:
        return f"JaggedTensor(values={self._values}, lengths={self._lengths})"


class KeyedJaggedTensor:
    """Several jagged columns over one batch, keyed by feature name.

    Args:
        keys: feature names, unique, ``K`` of them.
        values: the columns' values concatenated key by key, 1-D int64 (FIDs) or float ``[total]``.
        lengths: key-major ids per (key, row), int64 ``[K * batch]``; ``lengths[k * batch + b]``.
        stride: the batch size; needed only when ``keys`` is empty, checked otherwise.

    Raises:
        ValueError: duplicate keys, ``len(lengths)`` not a multiple of ``K`` (or ``!= K * stride``),
            negative lengths, ``sum(lengths) != len(values)``, or bad dtypes/shapes as in
            :class:`JaggedTensor`.
    """

    def __init__(
        self, keys: Sequence[str], values: torch.Tensor, lengths: torch.Tensor, stride: int | None = None
    ) -> None:
        keys = list(keys)
        if len(set(keys)) != len(keys):
            dupes = sorted({k for k in keys if keys.count(k) > 1})
            raise ValueError(f"KeyedJaggedTensor keys must be unique, duplicated: {dupes}")
        values = _check_values(values, "KeyedJaggedTensor")
        lengths = _check_lengths(lengths, "KeyedJaggedTensor")
        if lengths.device != values.device:
            raise ValueError(f"KeyedJaggedTensor lengths are on {lengths.device} but values on {values.device}")
        if keys:
            if lengths.numel() % len(keys):
                raise ValueError(
                    f"KeyedJaggedTensor lengths must have len(keys) * batch entries, "
                    f"got {lengths.numel()} for {len(keys)} keys"
                )
            batch = lengths.numel() // len(keys)
            if stride is not None and stride != batch:
                raise ValueError(f"KeyedJaggedTensor stride={stride} but lengths imply batch {batch}")
        elif stride is None:
            raise ValueError("KeyedJaggedTensor with no keys needs an explicit stride (batch size)")
        elif lengths.numel():
            raise ValueError(f"KeyedJaggedTensor with no keys needs empty lengths, got {lengths.numel()}")
        else:
            batch = stride
        if batch < 0:
            raise ValueError(f"KeyedJaggedTensor stride must be >= 0, got {batch}")
        total = int(lengths.sum())
        if total != values.numel():
            raise ValueError(
                f"KeyedJaggedTensor needs sum(lengths) == len(values), got {total} != {values.numel()}"
            )
        self._init(keys, values, lengths, batch)

    def _init(self, keys: list[str], values: torch.Tensor, lengths: torch.Tensor, stride: int) -> None:
        self._keys = keys
        self._index = {k: i for i, k in enumerate(keys)}
        self._values = values
        self._lengths = lengths
        self._stride = stride
        self._offsets: torch.Tensor | None = None
        self._length_per_key: list[int] | None = None
        self._offset_per_key: list[int] | None = None

    @classmethod
    def _trusted(
        cls, keys: list[str], values: torch.Tensor, lengths: torch.Tensor, stride: int
    ) -> KeyedJaggedTensor:
        # Built from already-validated parts: skip the checks (and their GPU syncs).
        kjt = cls.__new__(cls)
        kjt._init(keys, values, lengths, stride)
        return kjt

    @classmethod
    def from_jagged_dict(cls, jts: Mapping[str, JaggedTensor], stride: int | None = None) -> KeyedJaggedTensor:
        """Pack ``{key: JaggedTensor}`` (equal batch sizes, equal value dtypes) in the dict's key order.

        ``stride`` is needed only for an empty dict.
        """
        if not jts:
            if stride is None:
                raise ValueError("from_jagged_dict of an empty dict needs an explicit stride (batch size)")
            return cls._trusted([], torch.empty(0, dtype=torch.int64), torch.empty(0, dtype=torch.int64), stride)
        keys = list(jts)
        batches = {k: jt.batch_size() for k, jt in jts.items()}
        batch = batches[keys[0]] if stride is None else stride
        if any(b != batch for b in batches.values()):
            raise ValueError(f"from_jagged_dict needs batch size {batch} for every key, got {batches}")
        dtypes = {k: jt.values().dtype for k, jt in jts.items()}
        if len(set(dtypes.values())) > 1:
            raise ValueError(f"from_jagged_dict needs one values dtype for every key, got {dtypes}")
        values = torch.cat([jt.values() for jt in jts.values()])
        lengths = torch.cat([jt.lengths() for jt in jts.values()])
        return cls._trusted(keys, values, lengths, batch)

    @classmethod
    def from_lists(
        cls, rows_by_key: Mapping[str, Sequence[Sequence[int]]], stride: int | None = None
    ) -> KeyedJaggedTensor:
        """Build from ``{key: [[fid, ...] per row]}``, e.g. ``{"a": [[1], [2, 3]], "b": [[], [4]]}``."""
        return cls.from_jagged_dict({k: JaggedTensor.from_lists(rows) for k, rows in rows_by_key.items()}, stride)

    def keys(self) -> list[str]:
        return list(self._keys)

    def values(self) -> torch.Tensor:
        """All keys' values, key after key, ``[total]``."""
        return self._values

    def lengths(self) -> torch.Tensor:
        """Key-major ids per (key, row), int64 ``[K * batch]``."""
        return self._lengths

    def offsets(self) -> torch.Tensor:
        """Starts of every (key, row) in :meth:`values`, int64 ``[K * batch + 1]``; computed once."""
        if self._offsets is None:
            self._offsets = _offsets(self._lengths)
        return self._offsets

    def stride(self) -> int:
        """The batch size."""
        return self._stride

    def length_per_key(self) -> list[int]:
        """Number of values of each key, ``[K]``."""
        if self._length_per_key is None:
            self._length_per_key = self._lengths.view(len(self._keys), self._stride).sum(1).tolist()
        return self._length_per_key

    def offset_per_key(self) -> list[int]:
        """Start of each key's values in :meth:`values`, ``[K + 1]`` with a leading 0."""
        if self._offset_per_key is None:
            self._offset_per_key = [0, *itertools.accumulate(self.length_per_key())]
        return self._offset_per_key

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def __len__(self) -> int:
        return len(self._keys)

    def __getitem__(self, key: str) -> JaggedTensor:
        try:
            i = self._index[key]
        except KeyError:
            raise KeyError(f"KeyedJaggedTensor has no key {key!r}; keys are {self._keys}") from None
        start, end = self.offset_per_key()[i], self.offset_per_key()[i + 1]
        return JaggedTensor._trusted(
            self._values[start:end], self._lengths[i * self._stride : (i + 1) * self._stride]
        )

    def to_dict(self) -> dict[str, JaggedTensor]:
        """``{key: JaggedTensor}`` in key order (views, no copies)."""
        return {k: self[k] for k in self._keys}

    def select(self, keys: Sequence[str]) -> KeyedJaggedTensor:
        """A new KJT with only ``keys``, in the given order."""
        return KeyedJaggedTensor.from_jagged_dict({k: self[k] for k in keys}, stride=self._stride)

    def split(self, segments: Sequence[int]) -> list[KeyedJaggedTensor]:
        """Cut the keys into consecutive groups of ``segments[i]`` keys each (``sum == K``)."""
        if any(s < 0 for s in segments) or sum(segments) != len(self._keys):
            raise ValueError(
                f"split needs non-negative segments summing to {len(self._keys)} keys, got {list(segments)}"
            )
        out = []
        key_start = 0
        for seg in segments:
            key_end = key_start + seg
            v0, v1 = self.offset_per_key()[key_start], self.offset_per_key()[key_end]
            out.append(
                KeyedJaggedTensor._trusted(
                    self._keys[key_start:key_end],
                    self._values[v0:v1],
                    self._lengths[key_start * self._stride : key_end * self._stride],
                    self._stride,
                )
            )
            key_start = key_end
        return out

    def to(self, device: torch.device | str, non_blocking: bool = False) -> KeyedJaggedTensor:
        return KeyedJaggedTensor._trusted(
            list(self._keys),
            self._values.to(device, non_blocking=non_blocking),
            self._lengths.to(device, non_blocking=non_blocking),
            self._stride,
        )

    def __repr__(self) -> str:
        return (
            f"KeyedJaggedTensor(keys={self._keys}, stride={self._stride}, "
            f"values={self._values}, lengths={self._lengths})"
        )


@dataclass
class Batch:
    """One training batch: jagged sparse features plus per-example dense tensors.

    ``dense`` holds e.g. dense features ``[batch, d]``, ``label`` ``[batch]``, ``req_time``,
    ``sample_rate``, line ids; every tensor's leading dimension must be the batch size.
    ``batch["name"]`` looks in ``sparse`` first (returning a :class:`JaggedTensor`), then in ``dense``,
    so a Monolith ``model_fn(features, mode)`` can read ``features["label"]`` unchanged.

    Raises:
        TypeError: a dense value is not a tensor.
        ValueError: a dense tensor is 0-D or its leading dimension differs from ``sparse.stride()``,
            or a name is both a sparse key and a dense key.
    """

    sparse: KeyedJaggedTensor
    dense: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        batch = self.sparse.stride()
        for name, t in self.dense.items():
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"Batch dense[{name!r}] must be a torch.Tensor, got {type(t).__name__}")
            if t.dim() == 0 or t.shape[0] != batch:
                raise ValueError(
                    f"Batch dense[{name!r}] must have leading dimension {batch} (the sparse batch size), "
                    f"got shape {tuple(t.shape)}"
                )
        clash = [k for k in self.dense if k in self.sparse]
        if clash:
            raise ValueError(f"Batch names {clash} are both sparse keys and dense keys")

    @property
    def batch_size(self) -> int:
        return self.sparse.stride()

    def __getitem__(self, name: str) -> JaggedTensor | torch.Tensor:
        if name in self.sparse:
            return self.sparse[name]
        try:
            return self.dense[name]
        except KeyError:
            raise KeyError(
                f"Batch has no feature {name!r}; sparse keys: {self.sparse.keys()}, dense keys: {list(self.dense)}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self.sparse or name in self.dense

    def keys(self) -> list[str]:
        """Sparse keys, then dense keys."""
        return [*self.sparse.keys(), *self.dense]

    def empty_like(self) -> Batch:
        """A batch of 0 examples with the same features (a rank with no data left joins collectives with it)."""
        sparse = KeyedJaggedTensor(
            self.sparse.keys(), self.sparse.values()[:0], torch.zeros(0, dtype=torch.int64), stride=0
        )
        return Batch(sparse, {k: v[:0] for k, v in self.dense.items()})

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return Batch(
            self.sparse.to(device, non_blocking=non_blocking),
            {k: v.to(device, non_blocking=non_blocking) for k, v in self.dense.items()},
        )


class KeyedTensor:
    """Dense per-key blocks side by side in one tensor (TorchRec's ``KeyedTensor``): what an
    :class:`~monolith.modules.EmbeddingBagCollection` returns, one pooled ``[batch, dim]`` block per feature.

    Args:
        keys: the block names, in column order.
        length_per_key: each block's width along ``key_dim``.
        values: the blocks concatenated along ``key_dim``.
        key_dim: the dimension the blocks lie along (1: ``[batch, sum(length_per_key)]``).
    """

    def __init__(self, keys: Sequence[str], length_per_key: Sequence[int], values: torch.Tensor,
                 key_dim: int = 1) -> None:
        keys, length_per_key = list(keys), [int(n) for n in length_per_key]
        if len(keys) != len(length_per_key):
            raise ValueError(f"KeyedTensor needs one length per key, got {len(keys)} keys and "
                             f"{len(length_per_key)} lengths")
        if values.dim() <= key_dim or values.shape[key_dim] != sum(length_per_key):
            raise ValueError(f"KeyedTensor values must be {sum(length_per_key)} wide along dim {key_dim}, "
                             f"got shape {tuple(values.shape)}")
        self._keys, self._length_per_key, self._values, self._key_dim = keys, length_per_key, values, key_dim
        self._offset_per_key = [0, *itertools.accumulate(length_per_key)]
        self._index = {k: i for i, k in enumerate(keys)}

    def keys(self) -> list[str]:
        return list(self._keys)

    def values(self) -> torch.Tensor:
        return self._values

    def key_dim(self) -> int:
        return self._key_dim

    def length_per_key(self) -> list[int]:
        return list(self._length_per_key)

    def offset_per_key(self) -> list[int]:
        """Start of each key's block along ``key_dim``, ``[K + 1]`` with a leading 0."""
        return list(self._offset_per_key)

    def __getitem__(self, key: str) -> torch.Tensor:
        try:
            i = self._index[key]
        except KeyError:
            raise KeyError(f"KeyedTensor has no key {key!r}; keys are {self._keys}") from None
        return self._values.narrow(self._key_dim, self._offset_per_key[i], self._length_per_key[i])

    def to_dict(self) -> dict[str, torch.Tensor]:
        """``{key: block}`` in key order (views, no copies)."""
        return {k: self[k] for k in self._keys}

    def __repr__(self) -> str:
        return f"KeyedTensor(keys={self._keys}, length_per_key={self._length_per_key}, values={self._values})"
