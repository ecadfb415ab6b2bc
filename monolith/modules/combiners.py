"""Pool per-id embeddings into per-row outputs (Monolith's ``embedding_combiners``).

Every combiner takes

* ``embeddings`` -- float ``[total_ids, dim]``, one row per id, rows grouped by example in order
  (as a :class:`monolith.sparse.JaggedTensor`'s values are), possibly ``requires_grad``;
* ``lengths``    -- int ``[batch]``, ids per example, ``sum(lengths) == total_ids``;

and returns a tensor that autograd differentiates back to ``embeddings``. All work is vectorised:
each id's example index comes from ``repeat_interleave`` and rows are summed with ``index_add``.
"""

from __future__ import annotations

import abc

import torch

__all__ = ["Combiner", "PoolingCombiner", "ReduceSum", "ReduceMean", "FirstN", "make_combiner"]


def _row_ids(embeddings: torch.Tensor, lengths: torch.Tensor,
             combiner: str) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Validate the inputs; return each id's example index ``[total_ids]`` and ``lengths``, both
    int64 on ``embeddings``' device. The index is None when every example has exactly one id
    (Criteo-like slots), where sum and mean pool nothing and a copy is the whole work."""
    if embeddings.dim() != 2:
        raise ValueError(f"{combiner}: embeddings must be [total_ids, dim], got shape {tuple(embeddings.shape)}")
    if lengths.dim() != 1 or lengths.dtype == torch.bool or lengths.is_floating_point():
        raise ValueError(
            f"{combiner}: lengths must be a 1-D integer tensor, got {lengths.dtype} of shape {tuple(lengths.shape)}"
        )
    lengths = lengths.to(device=embeddings.device, dtype=torch.int64)
    # A batch's lengths are small: on the CPU numpy's reductions answer without torch's per-op dispatch.
    counts = lengths.numpy() if lengths.device.type == "cpu" else lengths
    total = int(counts.sum())
    low, high = (int(counts.min()), int(counts.max())) if lengths.numel() else (0, 0)
    if total != embeddings.shape[0] or low < 0:
        raise ValueError(
            f"{combiner}: lengths must be non-negative and sum to embeddings.shape[0]={embeddings.shape[0]}, "
            f"got sum {total}"
        )
    if total == lengths.numel() and (total == 0 or high == 1):
        return None, lengths  # one id per example: pooling is the identity
    batch = torch.arange(lengths.numel(), device=embeddings.device)
    return torch.repeat_interleave(batch, lengths, output_size=total), lengths


class Combiner(abc.ABC):
    """Base of the combiners; ``name`` is Monolith's config name, ``max_seq_length`` 0 unless sequence."""

    name: str = ""

    def __init__(self, max_seq_length: int = 0) -> None:
        self.max_seq_length = max_seq_length

    @abc.abstractmethod
    def __call__(self, embeddings: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Pool ``embeddings`` ``[total_ids, dim]`` by ``lengths`` ``[batch]``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_seq_length={self.max_seq_length})"


class PoolingCombiner(Combiner):
    """A combiner pooling each example's ids into one row (sum, mean).

    Pooling is linear in the embeddings, so a table lookup can pool inside its own autograd step
    (:meth:`pool`, and :meth:`per_id_grad` for its backward) without a per-id tensor in the graph.
    """

    def __call__(self, embeddings: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        pooled, _, _ = self.pool(embeddings, lengths)
        # One id per example pools nothing: a copy keeps the output apart from the input.
        return embeddings.clone(memory_format=torch.contiguous_format) if pooled is embeddings else pooled

    def pool(self, embeddings: torch.Tensor,
             lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """The pooled ``[batch, dim]`` (``embeddings`` themselves where every example has one id), each id's
        example index (None then) and ``lengths`` as int64: what :meth:`per_id_grad` takes."""
        rows, lengths = _row_ids(embeddings, lengths, self.name)
        return (embeddings if rows is None else self._pool(embeddings, rows, lengths)), rows, lengths

    @abc.abstractmethod
    def _pool(self, embeddings: torch.Tensor, rows: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Pools ``embeddings`` whose example indices are ``rows``."""

    @abc.abstractmethod
    def per_id_grad(self, grad: torch.Tensor, rows: torch.Tensor | None, lengths: torch.Tensor) -> torch.Tensor:
        """The gradient of each id ``[total_ids, dim]`` from that of the pooled output ``grad``
        (``rows`` and ``lengths`` as :meth:`pool` returned them)."""


class ReduceSum(PoolingCombiner):
    """Sum of each example's embeddings: ``[batch, dim]``; an example without ids gives zeros."""

    name = "reduce_sum"

    def _pool(self, embeddings: torch.Tensor, rows: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        out = embeddings.new_zeros(lengths.numel(), embeddings.shape[1])
        # Out-of-place index_add keeps autograd: grad of each id is its row's output grad.
        return out.index_add(0, rows, embeddings)

    def per_id_grad(self, grad: torch.Tensor, rows: torch.Tensor | None, lengths: torch.Tensor) -> torch.Tensor:
        return grad if rows is None else grad.index_select(0, rows)


class ReduceMean(PoolingCombiner):
    """Mean of each example's embeddings: ``[batch, dim]``; an example without ids gives zeros."""

    name = "reduce_mean"

    def _pool(self, embeddings: torch.Tensor, rows: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        sums = embeddings.new_zeros(lengths.numel(), embeddings.shape[1]).index_add(0, rows, embeddings)
        return sums / self._counts(lengths, embeddings.dtype)

    def per_id_grad(self, grad: torch.Tensor, rows: torch.Tensor | None, lengths: torch.Tensor) -> torch.Tensor:
        return grad if rows is None else (grad / self._counts(lengths, grad.dtype)).index_select(0, rows)

    @staticmethod
    def _counts(lengths: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        # Empty rows have a zero sum; dividing by 1 instead of 0 keeps them 0 rather than NaN.
        return lengths.to(dtype).clamp(min=1).unsqueeze(1)


class FirstN(Combiner):
    """Each example's first ``max_seq_length`` embeddings: ``[batch, max_seq_length, dim]``.

    Longer examples are cut at ``max_seq_length``; shorter ones are padded with zero rows.

    Raises:
        ValueError: ``max_seq_length <= 0``.
    """

    name = "first_n"

    def __init__(self, max_seq_length: int) -> None:
        if max_seq_length <= 0:
            raise ValueError(f"FirstN needs max_seq_length > 0, got {max_seq_length}")
        super().__init__(max_seq_length)

    def __call__(self, embeddings: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        rows, lengths = _row_ids(embeddings, lengths, self.name)
        if rows is None:
            rows = torch.arange(lengths.numel(), device=embeddings.device)
        n, dim = self.max_seq_length, embeddings.shape[1]
        starts = torch.cumsum(lengths, 0) - lengths
        pos = torch.arange(rows.numel(), device=rows.device) - starts[rows]
        keep = pos < n
        out = embeddings.new_zeros(lengths.numel() * n, dim)
        # Scatter kept ids to flat slot row * n + pos; the dropped ids get zero gradient.
        out = out.index_add(0, rows[keep] * n + pos[keep], embeddings[keep])
        return out.view(lengths.numel(), n, dim)


_COMBINERS = {c.name: c for c in (ReduceSum, ReduceMean, FirstN)}


def make_combiner(name: str, max_seq_length: int = 0) -> Combiner:
    """The combiner called ``name`` (``"reduce_sum"``, ``"reduce_mean"`` or ``"first_n"``).

    ``max_seq_length`` is used by ``"first_n"`` only, where it must be > 0.

    Raises:
        ValueError: unknown ``name`` (the message lists the valid ones), or ``first_n`` with
            ``max_seq_length <= 0``.
    """
    if name not in _COMBINERS:
        raise ValueError(f"unknown combiner {name!r}; valid names: {sorted(_COMBINERS)}")
    if name == FirstN.name:
        return FirstN(max_seq_length)
    return _COMBINERS[name]()
