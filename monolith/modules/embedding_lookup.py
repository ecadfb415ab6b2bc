"""The autograd bridge between torch models and :class:`EmbeddingHashTable`.

``loss.backward()`` never builds a dense gradient over a table: the backward pass of a lookup
hands the per-id gradient ``[n, dim]`` to its :class:`HashEmbedding`, which keeps it until the
training loop applies it (after clipping) with :meth:`HashEmbedding.apply_gradients`.

A :class:`HashEmbedding`'s ``state_dict()`` holds its whole table (ids, rows, optimizer slots,
occurrence counters, update times) as tensors, one entry per array of
:meth:`EmbeddingHashTable.state_dict`, so ``torch.save(model.state_dict())`` saves the tables too.
"""

from __future__ import annotations

import functools
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from monolith.modules.combiners import Combiner, PoolingCombiner
from monolith.optim.clipping import squared_norm
from monolith.table.embedding_table import DEFAULT_DEDUP, EmbeddingHashTable, RowHint


@dataclass
class PendingGradient:
    """Gradient of one lookup: ``grads[i]`` belongs to ``ids[i]``; ``order`` is the lookup's sequence;
    ``hint`` is where the lookup found the ids."""

    order: int
    ids: torch.Tensor
    grads: torch.Tensor
    req_time: torch.Tensor | int | None
    hint: RowHint | None = None


class _TableLookup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, anchor, module, ids, req_time, order):  # noqa: D401 - autograd signature
        ctx.module, ctx.ids, ctx.req_time, ctx.order = module, ids, req_time, order
        out, ctx.hint = module.table.lookup_with_hint(ids)
        return out

    @staticmethod
    def backward(ctx, grad):
        # Contiguous once here (a feature's gradient is often a strided column block of a
        # concatenation's): the norm and the table's kernels then read it in place.
        ctx.module.pending.append(PendingGradient(ctx.order, ctx.ids, grad.detach().contiguous(), ctx.req_time,
                                                  ctx.hint))
        return None, None, None, None, None


#: One feature's pooled lookup: ``(module, ids, lengths, combiner, req_time)``, ``req_time`` one time or one per
#: example (see :meth:`HashEmbedding.forward`).
PooledRequest = tuple["HashEmbedding", torch.Tensor, torch.Tensor, PoolingCombiner, "torch.Tensor | int | None"]


class _PooledTableLookups(torch.autograd.Function):
    """Table lookups and their pooling (sum or mean) as one autograd step, for any number of features and
    tables: the per-id rows never enter the graph; backward hands each table each id's share of its
    example's gradient (a feature whose embedding did not reach the loss gets none, as it would alone)."""

    @staticmethod
    def forward(ctx, anchor, lookups):  # noqa: D401 - autograd signature
        ctx.set_materialize_grads(False)
        outputs, ctx.lookups = [], []
        for module, ids, lengths, combiner, req_time, order in lookups:
            rows, hint = module.table.lookup_with_hint(ids)
            pooled, index, lengths = combiner.pool(rows, lengths)
            outputs.append(pooled)
            ctx.lookups.append((module, ids, index, lengths, combiner, req_time, order, hint))
        return tuple(outputs)

    @staticmethod
    def backward(ctx, *grads):
        for grad, (module, ids, index, lengths, combiner, req_time, order, hint) in zip(grads, ctx.lookups):
            if grad is None:
                continue
            per_id = combiner.per_id_grad(grad.detach(), index, lengths).contiguous()
            # One id per example (nothing was pooled): each example's time is its id's.
            one_each = index is None and ids.numel() == lengths.numel()
            times = req_time if one_each else times_per_id(req_time, lengths)
            module.pending.append(PendingGradient(order, ids, per_id, times, hint))
        return None, None


class HashEmbedding(torch.nn.Module):
    """An ``nn.Module`` view of an :class:`EmbeddingHashTable`.

    ``forward(ids)`` returns ``[len(ids), table.dim]``; where autograd is recording, its backward
    stores the per-id gradient in :attr:`pending` instead of producing a dense table gradient.

    Example::

        emb = HashEmbedding(table)                  # table.dim == 4
        out = emb(torch.tensor([3, 3, 8]))          # [3, 4]
        out.sum().backward()
        emb.apply_gradients(global_step=1)          # rows 3 and 8 updated by their optimizers
    """

    #: Whether a step's lookups are better done together, by ``lookup_together(requests)`` (sharded
    #: tables: one exchange for every feature); a local table looks each feature up by itself.
    routes_lookups_together = False

    def __init__(self, table: EmbeddingHashTable) -> None:
        super().__init__()
        self.table = table
        self.pending: list[PendingGradient] = []
        # Numbers this module's lookups: backward may reach them in any order, updates go in lookup order.
        self._lookups_recorded = 0
        # A leaf that requires grad so autograd records the lookup and calls its backward.
        self._anchor = torch.zeros(0, requires_grad=True)

    def forward(self, ids: torch.Tensor, req_time: torch.Tensor | int | None = None,
                lengths: torch.Tensor | None = None, combiner: Combiner | None = None) -> torch.Tensor:
        """Rows of ``ids`` ``[len(ids), dim]``, ``req_time`` one time or one per id (None: now).

        With ``lengths`` (ids per example) and a ``combiner``, the examples' pooled embeddings
        ``combiner(rows, lengths)`` instead, ``req_time`` then one time or one per example; sum and mean
        pool inside the lookup's own autograd step.
        """
        recording = torch.is_grad_enabled() and self.training
        if lengths is not None:
            if not isinstance(combiner, PoolingCombiner):
                return combiner(self.forward(ids, times_per_id(req_time, lengths)), lengths)
            if not recording:
                return combiner.pool(self.table.lookup(ids), lengths)[0]
            return self.lookup_pooled_together([(self, ids, lengths, combiner, req_time)])[0]
        if recording:
            self._lookups_recorded += 1
            return _TableLookup.apply(self._anchor, self, ids, req_time, self._lookups_recorded)
        return self.table.lookup(ids)

    @staticmethod
    def lookup_pooled_together(requests: Sequence[PooledRequest]) -> list[torch.Tensor]:
        """``module(ids, req_time, lengths=lengths, combiner=combiner)`` of each request, in one autograd step
        where every module records gradients (training, autograd on) and every combiner is a sum or mean;
        otherwise one by one."""
        if not all(torch.is_grad_enabled() and module.training and isinstance(combiner, PoolingCombiner)
                   for module, _, _, combiner, _ in requests):
            return [module(ids, req_time, lengths=lengths, combiner=combiner)
                    for module, ids, lengths, combiner, req_time in requests]
        lookups = []
        for module, ids, lengths, combiner, req_time in requests:
            module._lookups_recorded += 1
            lookups.append((module, ids, lengths, combiner, req_time, module._lookups_recorded))
        return list(_PooledTableLookups.apply(requests[0][0]._anchor, lookups))

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        for key, array in self.table.state_dict().items():
            # The table's arrays are fresh copies, but small ones (meta, rng) are read-only buffers.
            destination[prefix + key] = torch.from_numpy(array if array.flags.writeable else array.copy())

    def _load_from_state_dict(self, state_dict: dict, prefix: str, local_metadata: dict, strict: bool,
                              missing_keys: list, unexpected_keys: list, error_msgs: list) -> None:
        # The table's arrays are this module's own entries: names without a further "." under prefix.
        state = {key[len(prefix):]: value for key, value in state_dict.items()
                 if key.startswith(prefix) and "." not in key[len(prefix):]}
        if not state:
            missing_keys.append(prefix + "keys")
            return
        try:
            self.table.load_state_dict({k: v.detach().cpu().numpy() for k, v in state.items()},
                                       source=f"state_dict entries {prefix}*")
        except (ValueError, KeyError) as error:
            error_msgs.append(f"table '{self.table.name}': {error}")

    @staticmethod
    def exchange_gradients_together(modules: Sequence["HashEmbedding"]) -> None:
        """Sends pending gradients to the ranks that apply them (sharded tables); a local table has none to send."""

    @staticmethod
    def apply_gradients_together(modules: Sequence["HashEmbedding"], global_step: int, scale: float = 1.0,
                                 dedup: str = DEFAULT_DEDUP) -> None:
        """:meth:`apply_gradients` of every module (sharded tables exchange their gradients at once).

        With several torch threads and enough ids, the tables update on that many threads at once:
        each table's update touches only its own rows, state and random stream, and its kernels
        release the GIL, so the result is the same as one after the other.
        """
        threads = min(torch.get_num_threads(), len(modules))
        pending_ids = sum(p.ids.numel() for module in modules for p in module.pending)
        if threads <= 1 or pending_ids < _PARALLEL_MIN_IDS:
            for module in modules:
                module.apply_gradients(global_step, scale, dedup)
            return
        updates = [_update_pool(threads).submit(m.apply_gradients, global_step, scale, dedup) for m in modules]
        for update in updates:
            update.result()  # re-raises a table's error here

    def grad_squared_norm(self) -> float:
        """Sum of squares of the pending gradients (this table's share of the global norm)."""
        return squared_norm(p.grads for p in self.pending)

    def discard_gradients(self) -> None:
        """Drops the pending gradients (a step that is not applied)."""
        self.pending = []

    def apply_gradients(self, global_step: int, scale: float = 1.0, dedup: str = DEFAULT_DEDUP) -> None:
        """Applies the pending gradients (times ``scale``) in lookup order and clears them (``dedup``: see
        :meth:`EmbeddingHashTable.apply_gradients`)."""
        if not self.pending:
            return
        pending = sorted(self.pending, key=lambda p: p.order)
        self.pending = []
        ids = cat_or_only([p.ids.reshape(-1) for p in pending])
        grads = cat_or_only([widen_to(p.grads, self.table.dim) for p in pending])
        if scale != 1.0:
            grads = grads * scale
        hint = RowHint.concat([p.hint for p in pending])
        self.table.apply_gradients(ids, grads, global_step, _concat_times(pending), dedup, hint=hint)


#: Fewer pending ids than this in a step are applied on the calling thread: handing tables to other
#: threads costs tens of microseconds, more than a small step's updates take.
_PARALLEL_MIN_IDS = 16384


@functools.lru_cache(maxsize=None)
def _update_pool(threads: int) -> ThreadPoolExecutor:
    """The process's pool of ``threads`` threads for table updates (made once per size, like torch's own pool)."""
    return ThreadPoolExecutor(threads, thread_name_prefix="monolith-table-update")


def widen_to(grad: torch.Tensor, dim: int) -> torch.Tensor:
    """Pads a gradient taken before a slice was added to the table's full row width."""
    if grad.shape[1] == dim:
        return grad
    return torch.nn.functional.pad(grad, (0, dim - grad.shape[1]))


def cat_or_only(tensors: list[torch.Tensor]) -> torch.Tensor:
    """``torch.cat(tensors)``, without the copy when there is only one (one lookup per table and step,
    the common case)."""
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


def times_per_id(req_time: torch.Tensor | int | None, lengths: torch.Tensor) -> torch.Tensor | int | None:
    """Request times per id from times per example (``req_time`` ``[batch]``, the example of
    ``lengths`` ids each); one time for all (an int, or None) stays as it is."""
    if not isinstance(req_time, torch.Tensor):
        return req_time
    times = req_time.reshape(-1).to(torch.int64)
    if times.device.type == "cpu":  # numpy repeats a batch's few hundred times at a fraction of torch's cost
        counts = lengths.numpy()
        if times.numel() == int(counts.sum()) and bool((counts == 1).all()):
            return times  # one id per example
        return torch.from_numpy(np.repeat(times.numpy(), counts))
    return torch.repeat_interleave(times, lengths)


def _concat_times(pending: list[PendingGradient]) -> np.ndarray | None:
    if all(p.req_time is None for p in pending):
        return None
    only = pending[0]
    if len(pending) == 1 and isinstance(only.req_time, torch.Tensor) and only.req_time.numel() == only.ids.numel():
        return only.req_time.reshape(-1).cpu().numpy()  # one lookup's times per id, read in place
    now = int(time.time())
    parts = []
    for p in pending:
        n = p.ids.numel()
        if p.req_time is None:
            parts.append(np.full(n, now, dtype=np.int64))
        elif isinstance(p.req_time, torch.Tensor) and p.req_time.numel() == n:
            parts.append(p.req_time.reshape(-1).cpu().numpy().astype(np.int64))
        else:
            parts.append(np.full(n, int(p.req_time), dtype=np.int64))
    return np.concatenate(parts)
