"""Embedding tables sharded across ranks by FID, on torch.distributed collectives.

Every rank owns the FIDs with ``shard_of(fid, world_size) == rank``. A lookup sends each distinct
id of the local batch to its owner with ``all_to_all``, the owner answers with its rows, and the
rows come back the same way. Gradients travel the reverse way at apply time: each owner receives
the summed gradient of every id from every rank and applies one update per distinct id
(Monolith's sync training: unique ids, summed gradients).

The lookups of a step are routed together, as TorchRec's input distribution does: the ids of
every feature of every table travel in one exchange, the rows of all of them in a second, and at
apply time the gradients of all of them in a third, whatever the number of tables. Collectives run
in the same order on every rank, never inside autograd's backward, whose order is an
implementation detail.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from typing import Sequence

import numpy as np
import torch
import torch.distributed as dist

from monolith.modules.embedding_lookup import HashEmbedding, widen_to
from monolith.optim.clipping import squared_norm
from monolith.table.embedding_table import EmbeddingHashTable
from monolith.table.hash_map import KeyGrouper
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
    module: "ShardedHashEmbedding"
    inverse: torch.Tensor  # occurrence -> index of its distinct id
    send_order: torch.Tensor  # distinct ids sorted by owner
    send_counts: list[int]  # distinct ids sent to each rank
    recv_counts: list[int]  # ids received from each rank
    recv_ids: torch.Tensor  # ids this rank owns, as other ranks asked for them (by source rank)
    recv_times: torch.Tensor
    num_unique: int
    dim: int  # row width at lookup time
    grad: torch.Tensor | None = None  # summed per distinct id
    occurrence_grad: torch.Tensor | None = None  # per occurrence, for the global norm


def _split_rows(tensor: torch.Tensor, counts: list[int]) -> list[torch.Tensor]:
    return list(torch.split(tensor, counts))


def route_and_lookup(requests: Sequence[tuple["ShardedHashEmbedding", torch.Tensor, torch.Tensor | int | None]],
                     ) -> list[tuple[_Lookup, torch.Tensor]]:
    """Looks up ``(module, ids, req_time)`` requests in one id exchange and one row exchange.

    Returns, per request, its routing record and the rows of its ids (``[len(ids), dim]``). Every
    rank must pass requests for the same modules in the same order (their ids may differ).
    """
    if not requests:
        return []
    group, world = requests[0][0].group, requests[0][0].world_size
    routed = []
    for module, ids, req_time in requests:
        ids = ids.reshape(-1).to(torch.int64)
        groups, count = module.grouper.group(ids.numpy())
        inverse = torch.from_numpy(groups)
        unique = torch.empty(count, dtype=torch.int64).index_put_((inverse,), ids)  # in order of first appearance
        times = _times_per_unique(req_time, inverse, unique.numel())
        owners = shard_of(unique, world)
        send_order = torch.argsort(owners, stable=True)
        counts = torch.bincount(owners, minlength=world)
        routed.append((module, unique, inverse, times, send_order, counts))
    # counts[r, t]: distinct ids of request t for rank r; every rank learns what it will receive.
    send_counts = torch.stack([r[5] for r in routed], dim=1).contiguous()
    recv_counts = torch.empty_like(send_counts)
    dist.all_to_all_single(recv_counts.view(-1), send_counts.view(-1), group=group)
    send, recv = send_counts.tolist(), recv_counts.tolist()
    # Ids and times, grouped by destination rank, then by request.
    keyed = [_split_rows(torch.stack([u, t], dim=1)[o], send_counts[:, i].tolist())
             for i, (_, u, _, t, o, _) in enumerate(routed)]
    outgoing = torch.cat([keyed[i][r] for r in range(world) for i in range(len(routed))])
    incoming = _exchange(outgoing, [sum(row) for row in send], [sum(row) for row in recv], group)
    pieces = _split_rows(incoming, [c for row in recv for c in row])  # by source rank, then request
    records, answers = [], []
    for i, (module, unique, inverse, times, send_order, _) in enumerate(routed):
        mine = torch.cat([pieces[r * len(routed) + i] for r in range(world)])
        dim = module.table.dim
        rows = module.table.lookup(mine[:, 0])
        answers.append(_split_rows(rows, recv_counts[:, i].tolist()))
        records.append(_Lookup(next(_sequence), module, inverse, send_order, send_counts[:, i].tolist(),
                               recv_counts[:, i].tolist(), mine[:, 0], mine[:, 1], unique.numel(), dim))
        module.bytes_sent += outgoing.element_size() * 2 * unique.numel() + rows.numel() * 4
    # Rows, as one flat float buffer: by requesting rank, then request.
    flat = torch.cat([answers[i][r].reshape(-1) for r in range(world) for i in range(len(routed))])
    row_elems = [[recv[r][i] * rec.dim for i, rec in enumerate(records)] for r in range(world)]
    want_elems = [[send[r][i] * rec.dim for i, rec in enumerate(records)] for r in range(world)]
    returned = _exchange(flat, [sum(row) for row in row_elems], [sum(row) for row in want_elems], group)
    chunks = list(torch.split(returned, [e for row in want_elems for e in row]))
    out = []
    for i, record in enumerate(records):
        answered = torch.cat([chunks[r * len(records) + i].view(-1, record.dim) for r in range(world)])
        # answered[k] is the row of distinct id send_order[k]: gather each occurrence's row at once.
        position = torch.empty_like(record.send_order)
        position[record.send_order] = torch.arange(record.send_order.numel())
        out.append((record, answered[position[record.inverse]]))
    return out


def exchange_and_apply(records: Sequence[_Lookup], global_step: int, scale: float = 1.0) -> None:
    """Sends the gradients of ``records`` (every rank's, in the same order) to their owners in one
    exchange; each owner applies one summed update per distinct id to its tables."""
    if not records:
        return
    group, world = records[0].module.group, records[0].module.world_size
    outgoing, widths = [], []
    for record in records:
        dim = record.module.table.dim  # a slice added since the lookup widens the row
        grad = record.grad if record.grad is not None else torch.zeros((record.num_unique, dim))
        grad = widen_to(grad, dim)
        outgoing.append(_split_rows(grad[record.send_order], record.send_counts))
        widths.append(dim)
        record.module.bytes_sent += grad.numel() * 4
    flat = torch.cat([outgoing[i][r].reshape(-1) for r in range(world) for i in range(len(records))])
    send_elems = [[rec.send_counts[r] * w for rec, w in zip(records, widths)] for r in range(world)]
    recv_elems = [[rec.recv_counts[r] * w for rec, w in zip(records, widths)] for r in range(world)]
    received = _exchange(flat, [sum(row) for row in send_elems], [sum(row) for row in recv_elems], group)
    chunks = list(torch.split(received, [e for row in recv_elems for e in row]))
    by_module: dict[int, tuple[ShardedHashEmbedding, list, list, list]] = {}
    for i, record in enumerate(records):
        grads = torch.cat([chunks[r * len(records) + i].view(-1, widths[i]) for r in range(world)])
        _, ids, summed, times = by_module.setdefault(id(record.module), (record.module, [], [], []))
        ids.append(record.recv_ids)
        summed.append(grads)
        times.append(record.recv_times)
    for module, ids, grads, times in by_module.values():
        grads = torch.cat(grads)
        if scale != 1.0:
            grads = grads * scale
        module.table.apply_gradients(torch.cat(ids), grads, global_step, torch.cat(times).numpy(), dedup="sum")


class _ShardedLookup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, anchor, routed):  # noqa: D401 - autograd signature
        # The rows come inside a tuple, not as a tensor input: the output is this Function's own.
        ctx.record, rows = routed
        ctx.record.module._lookups.append(ctx.record)
        return rows

    @staticmethod
    def backward(ctx, grad):
        record: _Lookup = ctx.record
        # A feature's gradient is a column block of the concatenation's: strided, which makes
        # index_add_ and the norm several times slower than one copy.
        grad = grad.contiguous()
        record.occurrence_grad = grad
        summed = torch.zeros((record.num_unique, grad.shape[1]), dtype=grad.dtype)
        summed.index_add_(0, record.inverse, grad)
        record.grad = summed
        return None, None


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
        #: Deduplicates the ids of each lookup before they are routed.
        self.grouper = KeyGrouper()

    def forward(self, ids: torch.Tensor, req_time: torch.Tensor | int | None = None,
                routed: tuple[_Lookup, torch.Tensor] | None = None) -> torch.Tensor:
        """Rows of ``ids``; ``routed`` is this lookup already done by :func:`route_and_lookup`."""
        routed = routed if routed is not None else route_and_lookup([(self, ids, req_time)])[0]
        if torch.is_grad_enabled() and self.training:
            return _ShardedLookup.apply(self._anchor, routed)
        return routed[1]

    routes_lookups_together = True

    @staticmethod
    def lookup_together(requests: Sequence[tuple["ShardedHashEmbedding", torch.Tensor, torch.Tensor | None]],
                        ) -> list[tuple[_Lookup, torch.Tensor]]:
        """All lookups of a step routed together (see :func:`route_and_lookup`)."""
        return route_and_lookup(requests)

    @staticmethod
    def apply_gradients_together(modules: Sequence["ShardedHashEmbedding"], global_step: int, scale: float = 1.0,
                                 dedup: str = "sum") -> None:
        """Every module's pending gradients in one exchange (see :func:`exchange_and_apply`)."""
        records = []
        for module in modules:
            records.extend(module._lookups)
            module._lookups = []
        exchange_and_apply(sorted(records, key=lambda r: r.order), global_step, scale)

    def grad_squared_norm(self) -> float:
        """This rank's share of the squared global norm (per-occurrence gradients, before routing)."""
        return squared_norm(r.occurrence_grad for r in self._lookups if r.occurrence_grad is not None)

    def apply_gradients(self, global_step: int, scale: float = 1.0, dedup: str = "sum") -> None:
        """Sends this module's gradients to the owners, which apply the summed updates."""
        self.apply_gradients_together([self], global_step, scale, dedup)

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
