"""Embedding tables sharded across ranks by FID, on torch.distributed collectives.

Every rank owns the FIDs with ``shard_of(fid, world_size) == rank``. A lookup sends each distinct
id of the local batch to its owner with ``all_to_all``, the owner answers with its rows, and the
rows come back the same way. Gradients travel the reverse way at apply time: each owner receives
the summed gradient of every id from every rank and applies one update per distinct id
(Monolith's sync training: unique ids, summed gradients).

The lookups of a step are routed together, as TorchRec's input distribution does: the ids of
every feature of every table travel in one exchange, the rows of all of them in a second, and at
apply time the gradients of all of them in a third, whatever the number of tables. The gradient
exchange (:func:`exchange_gradients`) is separate from the owners' update (:func:`apply_received`)
so the training loop can run it while the dense gradients are all-reduced. Collectives run in the
same order on every rank, never inside autograd's backward, whose order is an implementation
detail.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Sequence

import numpy as np
import torch
import torch.distributed as dist

from monolith.distributed.routing import plan_route, shard_of
from monolith.modules.combiners import Combiner
from monolith.modules.embedding_lookup import HashEmbedding, cat_or_only, times_per_id, widen_to
from monolith.optim.clipping import squared_norm
from monolith.table.embedding_table import EmbeddingHashTable, RowHint, sum_rows_by_group
from monolith.table.hash_map import KeyGrouper
from monolith.table.shards import merge_states, select_keys, with_own_filter

#: A request time that stands for none (a lookup without ids): older than any.
_NO_TIME = np.iinfo(np.int64).min


def _exchange(tensor: torch.Tensor, send_counts: list[int], recv_counts: list[int], group) -> torch.Tensor:
    """``all_to_all_single`` with per-rank row counts; rows keep their trailing shape."""
    out = torch.empty((sum(recv_counts), *tensor.shape[1:]), dtype=tensor.dtype)
    dist.all_to_all_single(out, tensor.contiguous(), recv_counts, send_counts, group=group)
    return out


@dataclasses.dataclass
class _Lookup:
    """One forward lookup: how its ids were routed, and its gradient once backward ran.

    The lookup's distinct ids are laid out by owner rank (:func:`plan_route`): ``send_counts[r]``
    of them for rank ``r``, in that order; rows come back and gradients go out in the same layout.
    """

    module: "ShardedHashEmbedding"
    positions: torch.Tensor  # occurrence -> its distinct id's place in the layout
    send_counts: list[int]  # distinct ids sent to each rank
    recv_counts: list[int]  # ids received from each rank
    recv_ids: torch.Tensor  # ids this rank owns, as other ranks asked for them (by source rank)
    recv_times: torch.Tensor
    recv_occurrences: torch.Tensor | None  # occurrences of each in its rank's batch (None: no filter)
    hint: RowHint  # where this rank's table found recv_ids
    num_unique: int
    dim: int  # row width at lookup time
    newest: list[int]  # newest request time of this lookup on each rank, by rank (_NO_TIME: it had no ids)
    registered: bool = False  # in its module's pending lookups (its gradient goes out with the step's)
    grad: torch.Tensor | None = None  # summed per distinct id, in the layout (None: backward never reached it)
    occurrence_grad: torch.Tensor | None = None  # per occurrence, for the global norm


def _split_rows(tensor: torch.Tensor, counts: list[int]) -> list[torch.Tensor]:
    return list(torch.split(tensor, counts))


def route_and_lookup(requests: Sequence[tuple["ShardedHashEmbedding", torch.Tensor, torch.Tensor | int | None]],
                     ) -> list[tuple[_Lookup, torch.Tensor]]:
    """Looks up ``(module, ids, req_time)`` requests in one id exchange and one row exchange.

    Returns, per request, its routing record and the rows of its ids (``[len(ids), dim]``). Every
    rank must pass requests for the same modules in the same order (their ids may differ, and may be
    none: a feature this rank's batch lacks still takes its place in the exchanges).

    Where autograd records and the module trains, each record joins its module's pending lookups
    at once, whether or not the model reads its rows: every rank's gradient exchange then carries
    the same lookups, and one that backward never reached is sent as unused (see
    :func:`exchange_gradients`). The count exchange also carries each rank's newest request time
    per request, which every owner's expiry clock advances to when the step is applied.
    """
    if not requests:
        return []
    group, world = requests[0][0].group, requests[0][0].world_size
    # Owners filter each id by its occurrences in every rank's batch: they travel with the ids
    # where a table filters (every rank decides alike: the same tables, the same configs).
    with_occurrences = any(module.table.filters_occurrences for module, _, _ in requests)
    routed = []
    # header[r, t] = (distinct ids of request t for rank r, this rank's newest request time of request t):
    # every rank learns what it will receive, and how new each rank's lookups are.
    send_header = np.empty((world, len(requests), 2), dtype=np.int64)
    for t, (module, ids, req_time) in enumerate(requests):
        keys = np.ascontiguousarray(ids.reshape(-1).numpy(), dtype=np.int64)
        groups, count = module.grouper.group(keys)
        times = _request_times(req_time, keys.size)
        keyed, counts, positions = plan_route(keys, groups, count, times, world, with_occurrences)
        routed.append((module, torch.from_numpy(keyed), torch.from_numpy(positions)))
        send_header[:, t, 0] = counts
        send_header[:, t, 1] = times.max() if keys.size else _NO_TIME
    recv_header = np.empty_like(send_header)
    dist.all_to_all_single(torch.from_numpy(recv_header).view(-1), torch.from_numpy(send_header).view(-1),
                           group=group)
    send, recv = send_header[:, :, 0].tolist(), recv_header[:, :, 0].tolist()
    peer_newest = recv_header[:, :, 1].T.tolist()  # by request, then rank
    # (id, time) pairs, grouped by destination rank, then by request.
    keyed = [_split_rows(r[1], [send[rank][i] for rank in range(world)]) for i, r in enumerate(routed)]
    outgoing = torch.cat([keyed[i][r] for r in range(world) for i in range(len(routed))])
    incoming = _exchange(outgoing, [sum(row) for row in send], [sum(row) for row in recv], group)
    pieces = _split_rows(incoming, [c for row in recv for c in row])  # by source rank, then request
    records, answers = [], []
    for i, (module, unique, positions) in enumerate(routed):
        mine = torch.cat([pieces[r * len(routed) + i] for r in range(world)])
        rows, hint = module.table.lookup_with_hint(mine[:, 0])
        answers.append(_split_rows(rows, [recv[r][i] for r in range(world)]))
        record = _Lookup(module, positions, [send[r][i] for r in range(world)],
                         [recv[r][i] for r in range(world)], mine[:, 0], mine[:, 1],
                         mine[:, 2] if with_occurrences else None, hint, unique.shape[0], module.table.dim,
                         peer_newest[i])
        if torch.is_grad_enabled() and module.training:
            module._register(record)
        records.append(record)
        module.bytes_sent += unique.numel() * unique.element_size() + rows.numel() * rows.element_size()
    # Rows, as one flat float buffer: by requesting rank, then request.
    flat = torch.cat([answers[i][r].reshape(-1) for r in range(world) for i in range(len(routed))])
    row_elems = [[recv[r][i] * rec.dim for i, rec in enumerate(records)] for r in range(world)]
    want_elems = [[send[r][i] * rec.dim for i, rec in enumerate(records)] for r in range(world)]
    returned = _exchange(flat, [sum(row) for row in row_elems], [sum(row) for row in want_elems], group)
    chunks = list(torch.split(returned, [e for row in want_elems for e in row]))
    out = []
    for i, record in enumerate(records):
        answered = torch.cat([chunks[r * len(records) + i].view(-1, record.dim) for r in range(world)])
        out.append((record, answered.index_select(0, record.positions)))
    return out


@dataclasses.dataclass
class _Received:
    """Summed gradients that ranks sent for ids this rank owns, waiting to be applied."""

    ids: torch.Tensor
    grads: torch.Tensor
    times: torch.Tensor
    occurrences: torch.Tensor | None
    hint: RowHint  # where this rank's table found the ids at lookup time
    newest: int  # newest request time of the lookup over the ranks that used it (_NO_TIME: none)

    def used_only(self, counts: list[int], used: list[bool]) -> "_Received":
        """Without the ids of the ranks (``counts[r]`` ids each, in rank order) that did not use the lookup."""
        keep = torch.from_numpy(np.repeat(np.array(used, dtype=np.bool_), counts))
        hint = None if self.hint is None else RowHint(self.hint.rows[keep.numpy()], self.hint.numbering,
                                                      self.hint.size)
        return _Received(self.ids[keep], self.grads[keep], self.times[keep],
                         None if self.occurrences is None else self.occurrences[keep], hint, self.newest)


def exchange_gradients(records: Sequence[_Lookup]) -> None:
    """Sends the gradients of ``records`` (every rank's, in the same order) to their owners in one
    exchange; each owner keeps what it received in its module until :func:`apply_received`.

    With them goes one flag per lookup: whether backward reached it on the sending rank. A lookup
    no backward reached (rows the model never read, a feature the batch lacks) still fills its
    place with zeros, but its owners apply nothing for it and its request times do not advance
    their expiry clocks, as one process that never looked it up.
    """
    if not records:
        return
    group, world = records[0].module.group, records[0].module.world_size
    outgoing, widths = [], []
    for record in records:
        dim = record.module.table.dim  # a slice added since the lookup widens the row
        grad = record.grad if record.grad is not None else torch.zeros((record.num_unique, dim))
        grad = widen_to(grad, dim)
        outgoing.append(_split_rows(grad, record.send_counts))
        widths.append(dim)
        record.module.bytes_sent += grad.numel() * grad.element_size()
    # To each rank: the gradients of every lookup, then the flags of every lookup.
    flags = torch.tensor([float(record.grad is not None) for record in records], dtype=torch.float32)
    flat = torch.cat([piece for r in range(world)
                      for piece in [outgoing[i][r].reshape(-1) for i in range(len(records))] + [flags]])
    send_elems = [[rec.send_counts[r] * w for rec, w in zip(records, widths)] + [len(records)] for r in range(world)]
    recv_elems = [[rec.recv_counts[r] * w for rec, w in zip(records, widths)] + [len(records)] for r in range(world)]
    received = _exchange(flat, [sum(row) for row in send_elems], [sum(row) for row in recv_elems], group)
    chunks = list(torch.split(received, [e for row in recv_elems for e in row]))
    per_rank = len(records) + 1
    used_by = torch.stack([chunks[r * per_rank + len(records)] for r in range(world)]).numpy() > 0.5  # [rank, lookup]
    used_by_all = used_by.all(axis=0).tolist()
    for i, record in enumerate(records):
        grads = torch.cat([chunks[r * per_rank + i].view(-1, widths[i]) for r in range(world)])
        if used_by_all[i]:
            got = _Received(record.recv_ids, grads, record.recv_times, record.recv_occurrences, record.hint,
                            max(record.newest))
        else:
            used = used_by[:, i].tolist()
            newest = max((t for t, u in zip(record.newest, used) if u), default=_NO_TIME)
            got = _Received(record.recv_ids, grads, record.recv_times, record.recv_occurrences, record.hint,
                            newest).used_only(record.recv_counts, used)
        record.module._received.append(got)


def apply_received(module: "ShardedHashEmbedding", global_step: int, scale: float = 1.0) -> None:
    """The owner's update: one per distinct id, with the gradients every rank sent for it summed.

    The shard's expiry clock advances to the newest request time of the step's lookups of this
    table on every rank, as one table updated with every rank's lookups would (the ids this shard
    owns alone may be older, or none).
    """
    received, module._received = module._received, []
    if not received:
        return
    newest = max(r.newest for r in received)
    received = [r for r in received if r.ids.numel()]
    if received:
        grads = cat_or_only([r.grads for r in received])
        if scale != 1.0:
            grads = grads * scale
        occurrences = [r.occurrences for r in received if r.occurrences is not None]
        module.table.apply_gradients(cat_or_only([r.ids for r in received]), grads, global_step,
                                     cat_or_only([r.times for r in received]).numpy(), dedup="sum",
                                     hint=RowHint.concat([r.hint for r in received]),
                                     occurrences=cat_or_only(occurrences) if occurrences else None)
    if newest != _NO_TIME:
        module.table.advance_clock(newest)


class _ShardedLookup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, anchor, routed):  # noqa: D401 - autograd signature
        # The rows come inside a tuple, not as a tensor input: the output is this Function's own.
        ctx.record, rows = routed
        ctx.record.module._register(ctx.record)  # routed outside autograd: it joins the step's lookups now
        return rows

    @staticmethod
    def backward(ctx, grad):
        record: _Lookup = ctx.record
        # A feature's gradient is a column block of the concatenation's: strided, which makes the
        # sum and the norm several times slower than one copy.
        grad = grad.detach().contiguous()
        record.occurrence_grad = grad
        # Summed per distinct id straight into the layout the owners expect.
        record.grad = torch.from_numpy(sum_rows_by_group(record.positions.numpy(), record.num_unique, grad.numpy()))
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
        self._received: list[_Received] = []
        self.bytes_sent = 0
        #: Deduplicates the ids of each lookup before they are routed.
        self.grouper = KeyGrouper()

    def forward(self, ids: torch.Tensor, req_time: torch.Tensor | int | None = None,
                lengths: torch.Tensor | None = None, combiner: Combiner | None = None,
                routed: tuple[_Lookup, torch.Tensor] | None = None) -> torch.Tensor:
        """Rows of ``ids`` (pooled by ``combiner`` with ``lengths``, as :meth:`HashEmbedding.forward`);
        ``routed`` is this lookup already done by :func:`route_and_lookup`."""
        if lengths is not None:
            return combiner(self.forward(ids, times_per_id(req_time, lengths), routed=routed), lengths)
        routed = routed if routed is not None else route_and_lookup([(self, ids, req_time)])[0]
        if torch.is_grad_enabled() and self.training:
            return _ShardedLookup.apply(self._anchor, routed)
        return routed[1]

    routes_lookups_together = True

    def _register(self, record: _Lookup) -> None:
        """Adds a lookup to those whose gradients go out with this step's (once)."""
        if not record.registered:
            record.registered = True
            self._lookups.append(record)

    @staticmethod
    def lookup_together(requests: Sequence[tuple["ShardedHashEmbedding", torch.Tensor, torch.Tensor | None]],
                        ) -> list[tuple[_Lookup, torch.Tensor]]:
        """All lookups of a step routed together (see :func:`route_and_lookup`)."""
        return route_and_lookup(requests)

    @staticmethod
    def exchange_gradients_together(modules: Sequence["ShardedHashEmbedding"]) -> None:
        """Every module's pending gradients to their owners in one exchange (see :func:`exchange_gradients`).

        Lookups go module by module, each module's in lookup order: the same order on every rank,
        whose modules and lookups are the same model's.
        """
        records = []
        for module in modules:
            records.extend(module._lookups)
            module._lookups = []
        exchange_gradients(records)

    @staticmethod
    def apply_gradients_together(modules: Sequence["ShardedHashEmbedding"], global_step: int, scale: float = 1.0,
                                 dedup: str = "sum") -> None:
        """Exchanges the gradients still pending, then each owner applies what it received (times ``scale``)."""
        ShardedHashEmbedding.exchange_gradients_together(modules)
        for module in modules:
            apply_received(module, global_step, scale)

    def grad_squared_norm(self) -> float:
        """This rank's share of the squared global norm (per-occurrence gradients, before routing)."""
        return squared_norm(r.occurrence_grad for r in self._lookups if r.occurrence_grad is not None)

    def apply_gradients(self, global_step: int, scale: float = 1.0, dedup: str = "sum") -> None:
        """Sends this module's gradients to the owners, which apply the summed updates."""
        self.apply_gradients_together([self], global_step, scale, dedup)

    def discard_gradients(self) -> None:
        self._lookups = []
        self._received = []


def _request_times(req_time, n: int) -> np.ndarray:
    """A lookup's request times for :func:`plan_route`: ``[n]`` per id, or ``[1]`` for all (now where none)."""
    if req_time is None:
        return np.array([int(time.time())], dtype=np.int64)
    times = np.asarray(req_time.numpy() if isinstance(req_time, torch.Tensor) else req_time, dtype=np.int64)
    times = times.reshape(-1)
    if times.size not in (1, n):
        raise ValueError(f"req_time must be one time or one per id ({n}), got {times.size} values")
    return times


def table_state_for_rank(states: list[dict[str, np.ndarray]], rank: int, world_size: int) -> dict[str, np.ndarray]:
    """Merges table shards written by any number of ranks and keeps the FIDs ``rank`` owns (and the
    sliding hash filter it wrote, when the number of ranks is the same)."""
    merged = merge_states(states)
    if world_size > 1:
        merged = select_keys(merged, lambda keys: shard_of(torch.from_numpy(keys), world_size).numpy() == rank)
    return with_own_filter(merged, states, rank, world_size)
