"""Embedding tables sharded across ranks by FID, on torch.distributed collectives.

Every rank owns the FIDs with ``shard_of(fid, world_size) == rank``. A lookup sends each distinct
id of the local batch to its owner with ``all_to_all``, the owner answers with its rows, and the
rows come back the same way. Gradients travel the reverse way at apply time: each owner receives
the summed gradient of every id from every rank and applies one update per distinct id
(Monolith's sync training: unique ids, summed gradients).

Collectives run in forward order on every rank. The gradient exchange happens in
:meth:`ShardedHashEmbedding.apply_gradients`, lookup by lookup in forward order, never inside
autograd's backward, whose order is an implementation detail.
"""

from __future__ import annotations

import dataclasses
import itertools
import time

import numpy as np
import torch
import torch.distributed as dist

from monolith.modules.embedding_lookup import HashEmbedding, widen_to
from monolith.optim.clipping import squared_norm
from monolith.table.embedding_table import EmbeddingHashTable
from monolith.table.shards import merge_states, select_keys

_GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15 as int64: torch multiplies int64 with wrap-around
_sequence = itertools.count()


def shard_of(ids: torch.Tensor, world_size: int) -> torch.Tensor:
    """Owner rank of each FID: a multiplicative hash of the id modulo ``world_size``."""
    mixed = (ids * _GOLDEN) >> 33  # the high bits depend on every bit of the id
    return torch.remainder(mixed & 0x7FFFFFFF, world_size)


def _exchange(tensor: torch.Tensor, send_counts: list[int], recv_counts: list[int], group) -> torch.Tensor:
    """``all_to_all_single`` with per-rank row counts; rows keep their trailing shape."""
    out = torch.empty((sum(recv_counts), *tensor.shape[1:]), dtype=tensor.dtype)
    dist.all_to_all_single(out, tensor.contiguous(), recv_counts, send_counts, group=group)
    return out


@dataclasses.dataclass
class _Lookup:
    """One forward lookup: how its ids were routed, and its gradient once backward ran."""

    order: int
    inverse: torch.Tensor  # occurrence -> index of its distinct id
    send_order: torch.Tensor  # distinct ids sorted by owner
    send_counts: list[int]
    recv_counts: list[int]
    recv_ids: torch.Tensor  # ids this rank owns, as other ranks asked for them
    recv_times: torch.Tensor
    num_unique: int
    grad: torch.Tensor | None = None  # summed per distinct id
    occurrence_grad: torch.Tensor | None = None  # per occurrence, for the global norm


class _ShardedLookup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, anchor, module, ids, req_time):  # noqa: D401 - autograd signature
        record, rows = module._route_and_lookup(ids, req_time)
        ctx.module, ctx.record = module, record
        module._lookups.append(record)
        return rows

    @staticmethod
    def backward(ctx, grad):
        record: _Lookup = ctx.record
        record.occurrence_grad = grad
        summed = torch.zeros((record.num_unique, grad.shape[1]), dtype=grad.dtype)
        summed.index_add_(0, record.inverse, grad)
        record.grad = summed
        return None, None, None, None


class ShardedHashEmbedding(HashEmbedding):
    """A :class:`HashEmbedding` whose table holds only this rank's shard of the FIDs.

    Args:
        table: this rank's shard.
        group: the process group (default: the world).
    """

    def __init__(self, table: EmbeddingHashTable, group=None) -> None:
        super().__init__(table)
        self.group = group
        self.world_size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self._lookups: list[_Lookup] = []
        self.bytes_sent = 0

    def forward(self, ids: torch.Tensor, req_time: torch.Tensor | int | None = None) -> torch.Tensor:
        if torch.is_grad_enabled() and self.training:
            return _ShardedLookup.apply(self._anchor, self, ids, req_time)
        return self._route_and_lookup(ids, req_time)[1]

    def _route_and_lookup(self, ids: torch.Tensor, req_time) -> tuple[_Lookup, torch.Tensor]:
        ids = ids.reshape(-1).to(torch.int64)
        unique, inverse = torch.unique(ids, return_inverse=True)
        times = _times_per_unique(req_time, inverse, unique.numel())
        owners = shard_of(unique, self.world_size)
        send_order = torch.argsort(owners, stable=True)
        send_counts = torch.bincount(owners, minlength=self.world_size)
        recv_counts = torch.empty_like(send_counts)
        dist.all_to_all_single(recv_counts, send_counts, group=self.group)
        send, recv = send_counts.tolist(), recv_counts.tolist()
        keyed = torch.stack([unique[send_order], times[send_order]], dim=1)
        received = _exchange(keyed, send, recv, self.group)
        rows = self.table.lookup(received[:, 0])
        answered = _exchange(rows, recv, send, self.group)
        unique_rows = torch.empty_like(answered)
        unique_rows[send_order] = answered
        self.bytes_sent += keyed.numel() * 8 + rows.numel() * 4 + send_counts.numel() * 8
        record = _Lookup(next(_sequence), inverse, send_order, send, recv, received[:, 0], received[:, 1],
                         unique.numel())
        return record, unique_rows[inverse]

    def grad_squared_norm(self) -> float:
        """This rank's share of the squared global norm (per-occurrence gradients, before routing)."""
        return squared_norm(r.occurrence_grad for r in self._lookups if r.occurrence_grad is not None)

    def apply_gradients(self, global_step: int, scale: float = 1.0, dedup: str = "sum") -> None:
        """Sends every lookup's gradient to the owners, which apply the summed updates."""
        lookups, self._lookups = self._lookups, []
        ids, grads, times = [], [], []
        for record in sorted(lookups, key=lambda r: r.order):
            grad = record.grad if record.grad is not None else torch.zeros((record.num_unique, self.table.dim))
            grad = widen_to(grad, self.table.dim)
            received = _exchange(grad[record.send_order], record.send_counts, record.recv_counts, self.group)
            self.bytes_sent += grad.numel() * 4
            ids.append(record.recv_ids)
            grads.append(received)
            times.append(record.recv_times)
        if not ids:
            return
        grads = torch.cat(grads)
        if scale != 1.0:
            grads = grads * scale
        self.table.apply_gradients(torch.cat(ids), grads, global_step, torch.cat(times).numpy(), dedup="sum")

    def discard_gradients(self) -> None:
        self._lookups = []


def _times_per_unique(req_time, inverse: torch.Tensor, num_unique: int) -> torch.Tensor:
    """Newest request time of each distinct id (now where the batch has none)."""
    if req_time is None:
        return torch.full((num_unique,), int(time.time()), dtype=torch.int64)
    per_id = torch.as_tensor(req_time, dtype=torch.int64).reshape(-1)
    if per_id.numel() == 1:
        return per_id.expand(num_unique).clone()
    latest = torch.zeros(num_unique, dtype=torch.int64)
    return latest.scatter_reduce_(0, inverse, per_id, reduce="amax", include_self=False)


def table_state_for_rank(states: list[dict[str, np.ndarray]], rank: int, world_size: int) -> dict[str, np.ndarray]:
    """Merges table shards written by any number of ranks and keeps the FIDs ``rank`` owns."""
    merged = merge_states(states)
    if world_size == 1:
        return merged
    return select_keys(merged, lambda keys: shard_of(torch.from_numpy(keys), world_size).numpy() == rank)
