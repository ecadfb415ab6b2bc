"""Serving an export: FID lookups, pooling and the dense program, with hot parameter updates.

:class:`ServingModel` holds each table of an export (:mod:`monolith.export`) as a FID map with
decompressed float32 rows, and its dense program. A prediction looks each feature's FIDs up once
(absent FIDs read zeros), pools every (feature, slice) the program takes with the feature's
combiner, as training does, and runs the program on the pooled embeddings and dense features.

A trainer pushes updates (:meth:`ServingModel.apply_update`) while requests are served. Updates
are applied one at a time; table reads and in-place writes take one lock (a read only while it
gathers rows), and new dense weights go into a new module, and a full update's tables into new
tables, that are swapped in under that lock, so every request sees one version of all parameters.
Update format, ``torch.save``-able and loadable with ``weights_only=True`` (dicts, ints, bools,
tensors)::

    {"version": int,                 # the trainer's global step when it took the update
     "base_version": int,            # optional: the version a delta builds on (see below)
     "full": bool,                   # optional (default False): a full snapshot of the sender's shard
     "rank": int, "world_size": int, # optional (default 0 and 1): the trainer process that sent it
     "tables": {name: {"ids": int64[n], "rows": float32[n, dim], "deleted": int64[m]}},
     "dense": model.dense_state_dict() or None,
     "stream": {"topic": str, "offsets": {partition: int}}}  # optional: what the trainer had trained

``stream`` makes what serving reflects observable: the next offset of each partition of the
trainer's stream after the last batch trained before the update was taken. Serving keeps, per
partition, the offset the last applied update reported (ranks read disjoint partitions; a trainer
restarted from an older checkpoint reports older offsets, and its full snapshot serves what they
trained), and the version of the last update that carried dense weights (:meth:`ServingModel.progress`; a
trainer pushes changed rows more often than the dense weights).

Rows arrive uncompressed and are stored as an export stores them (through the slices'
compressors), so serving precision does not depend on how a row got there.

**Shards.** Under torch.distributed each rank of the trainer pushes its own updates: rank ``r`` of
``world_size`` holds the FIDs of every table with ``shard_of(fid, world_size) == r``
(:func:`monolith.distributed.routing.shard_of`), and rank 0 also holds the dense weights; a single
process is rank 0 of 1 and holds everything. An update's ids and deleted ids must belong to its
rank's shard. Serving keeps, per rank of the world size the trainer pushes with, the version that
rank's shard is at: the export's step once loaded, then the version of the rank's last applied
update. Ranks push independently, several of them for the same version; :attr:`ServingModel.version`
is the newest version applied from any of them.

**Deltas** (``full`` false) carry the rows changed (and FIDs evicted) since the sender's previous
update, and are right only on top of the state that update left. A delta names it in
``base_version``: the version of the sender's previous applied update, or the step of the export
the trainer started from for its first. A delta whose base is not the version serving holds for the
sender's shard is refused with :class:`BaseVersionError` (HTTP 409 with ``"reason":
"base_version"`` and serving's versions), rather than served as a mix of versions: that happens
after serving restarted from an export (it holds the export's step again), after updates were lost,
or after a trainer of another world size pushed. The sender answers with a full update.

**Full updates** (``full`` true) hold every row of every table of the sender's shard and, from
rank 0, the dense weights (required there); ``deleted`` must be empty. Serving replaces its tables'
rows of that shard with them, so rows the trainer no longer has disappear, whatever serving held
before: ``base_version`` is not checked. The shard is then at the update's version.

**Staleness.** An update older than the version serving holds for the sender's shard is refused
with :class:`StaleUpdateError` (HTTP 409 with ``"reason": "stale"``), as is a delta without
``base_version`` (a hand-made one) older than the served version. Such a delta is otherwise applied
as given, but afterwards serving knows no shard's version: every later delta is refused until its
rank has sent a full update. A full update from a world size other than the previous updates' does
the same to the shards of other ranks.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import os
import re
import reprlib
import threading
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from monolith.data.base import Rows, jagged
from monolith.distributed.routing import shard_of
from monolith.export.format import (DENSE_STATE_PREFIX, EmbeddingInput, ExportSignature, LoadedTable, SIGNATURE_FILE,
                                    compress_rows, decompress_rows, load_table, program_factory)
from monolith.export.receiver import ServingInputReceiver
from monolith.fid import fid_to_int64
from monolith.modules.combiners import Combiner, FirstN, ReduceMean, make_combiner
from monolith.table.hash_map import FidMap

__all__ = ["BaseVersionError", "LOOKUP_IDS", "PROGRAM_EXAMPLES", "RequestError", "ServingModel", "StaleUpdateError",
           "decode_update", "encode_update", "parse_features", "per_example"]

#: A prediction looks rows up for at most this many FIDs of a feature at a time, and runs the
#: dense program on at most this many examples at a time.
LOOKUP_IDS = 1 << 14
PROGRAM_EXAMPLES = 4096
#: The most trainer processes an update may name.
MAX_WORLD_SIZE = 1 << 16
_UPDATE_FIELDS = ("version", "base_version", "full", "rank", "world_size", "tables", "dense", "stream")
_TABLE_UPDATE_FIELDS = ("ids", "rows", "deleted")


class RequestError(ValueError):
    """A malformed prediction request or update; the message names the offending field."""


class StaleUpdateError(RequestError):
    """An update older than the version serving holds for its sender's shard (or, for a delta without
    ``base_version``, than the served version).

    ``served_version`` is :attr:`ServingModel.version`; ``min_version`` the oldest version the update
    could have had (None where not known, e.g. raised by hand).
    """

    def __init__(self, message: str, served_version: int | None = None, min_version: int | None = None) -> None:
        super().__init__(message)
        self.served_version = served_version
        self.min_version = min_version


class BaseVersionError(RequestError):
    """A delta update whose ``base_version`` is not the version serving holds for its sender's shard:
    applying it would serve a mix of versions, so the sender must send a full update instead.

    ``served_version`` is :attr:`ServingModel.version`; ``base_version`` the version serving holds
    for the shard (None: unknown).
    """

    def __init__(self, message: str, served_version: int, base_version: int | None) -> None:
        super().__init__(message)
        self.served_version = served_version
        self.base_version = base_version


@dataclasses.dataclass
class _Update:
    """An update checked by :meth:`ServingModel.apply_update`, rows already at served precision."""

    version: int
    base: int | None
    full: bool
    rank: int
    world_size: int
    changes: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]  # name -> ids, rows, deleted
    dense: dict[str, torch.Tensor] | None
    stream: tuple[str, dict[int, int]] | None = None  # topic, next offset per partition


class _Table:
    """One served table: FID -> float32 row as serving stores it; absent FIDs read zeros.

    Rows sit densely in insertion order beside a :class:`FidMap`, as in the training table; removing
    FIDs compacts the rows and rebuilds the map. Not thread-safe: :class:`ServingModel` locks.
    """

    def __init__(self, name: str, slices: Sequence[Any], keys: np.ndarray, rows: np.ndarray,
                 capacity: int = 0) -> None:
        """A table of distinct ``keys`` and their ``rows`` (served precision), with room for
        ``capacity`` FIDs in all before it grows."""
        self.name = name
        self.slices = slices
        self.dim = sum(s.dim for s in slices)
        self._size = keys.size
        capacity = max(1, self._size, capacity)
        self._map = FidMap()
        self._map.rebuild(keys, room_for=capacity)
        # At least one row of storage, so a gather of absent ids always has a row to index.
        self._keys = np.zeros(capacity, dtype=np.int64)
        self._rows = np.zeros((capacity, self.dim), dtype=np.float32)
        self._keys[: self._size] = keys
        self._rows[: self._size] = rows

    @classmethod
    def loaded(cls, loaded: LoadedTable) -> "_Table":
        """The table of an export's table file."""
        return cls(loaded.name, loaded.slices, loaded.keys, loaded.rows)

    def replaced(self, ids: np.ndarray, rows: np.ndarray, rank: int, world_size: int) -> "_Table":
        """A new table: this one without the FIDs of shard ``rank`` of ``world_size``, then ``ids``
        (all of that shard) with ``rows`` (served precision) upserted. This table is left as it is."""
        keys = self._keys[: self._size]
        if world_size == 1:
            kept = np.zeros(0, dtype=np.int64)
        else:
            kept = np.flatnonzero(shard_of(torch.from_numpy(keys), world_size).numpy() != rank)
        table = _Table(self.name, self.slices, keys[kept], self._rows[kept], capacity=kept.size + ids.size)
        table.upsert(ids, rows)
        return table

    def __len__(self) -> int:
        return self._size

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """Rows of ``ids`` ``[n, dim]`` (a new array)."""
        found = self._map.find(ids)
        rows = self._rows[np.maximum(found, 0)]
        rows[found < 0] = 0.0
        return rows

    def as_served(self, rows: np.ndarray) -> np.ndarray:
        """Float32 ``rows`` after the round trip through the slices' compressors that an export makes."""
        return decompress_rows(compress_rows(rows, self.slices), self.slices)

    def upsert(self, ids: np.ndarray, rows: np.ndarray) -> None:
        """Sets the rows of ``ids`` (served precision already), inserting absent ids; a repeated id
        gets its last row."""
        found = self._map.find_or_insert(ids)
        self._size = len(self._map)
        if self._size > self._keys.size:
            capacity = max(self._size, 2 * self._keys.size)
            self._keys, self._rows = _grown(self._keys, capacity), _grown(self._rows, capacity)
        self._keys[found] = ids
        self._rows[found] = rows

    def delete(self, ids: np.ndarray) -> None:
        """Removes ``ids`` (absent ones are ignored)."""
        found = self._map.find(ids)
        found = found[found >= 0]
        if not found.size:
            return
        keep = np.ones(self._size, dtype=bool)
        keep[found] = False
        kept = np.flatnonzero(keep)
        self._keys[: kept.size] = self._keys[kept]
        self._rows[: kept.size] = self._rows[kept]
        self._size = kept.size
        self._map.rebuild(self._keys[: self._size])


class ServingModel:
    """An export loaded for serving; thread-safe, updatable while it serves.

    Use :meth:`load`. ``predict`` takes FID lists and dense rows per feature and returns every
    output per example; ``apply_update`` changes parameters in place (see the module docstring).

    Example::

        model = ServingModel.load("exports/")             # the newest export under the directory
        model.predict({"uid": [[11], [12]], "mov": [[5, 6], []]}, {"ctx": [[0.1, 0.2], [0.3, 0.4]]})
        # -> {"ctr": [0.52, 0.47]}
    """

    def __init__(self, path: str, signature: ExportSignature, tables: dict[str, _Table],
                 new_program: Callable[[], torch.nn.Module]) -> None:
        self.path = path
        self.signature = signature
        self._tables = tables
        self._new_program = new_program
        self._program = new_program()
        self._dense_spec = {name.removeprefix(DENSE_STATE_PREFIX): (tuple(t.shape), t.dtype)
                            for name, t in self._program.state_dict().items()}
        for e in signature.embeddings:
            if e.table not in tables or e.end > tables[e.table].dim:
                raise ValueError(f"{path}: input {e.name} reads columns [{e.start}, {e.end}) of table '{e.table}', "
                                 f"which the export does not hold")
        # Per feature, its inputs to the program and their combiners.
        self._feature_embeddings: dict[str, list[tuple[EmbeddingInput, Combiner]]] = {}
        for e in signature.embeddings:
            self._feature_embeddings.setdefault(e.feature, []).append((e, make_combiner(e.combiner, e.max_seq_length)))
        self._feature_tables = {e.feature: e.table for e in signature.embeddings}
        self._lock = threading.Lock()  # held by requests while they read, and by updates while they write
        self._update_lock = threading.Lock()  # one update at a time, from its checks to its last write
        self._version = signature.global_step
        self._dense_version = signature.global_step
        # (topic, next offset per partition) of the updates' streams, replaced whole so that
        # progress() reads it without waiting for an update being applied.
        self._stream: tuple[str, dict[int, int]] | None = None
        self._updated_at: float | None = None
        # The version each shard is at (module docstring): per rank of the world size that pushed
        # since the load (None: none yet); a rank not in _shard_versions is at the export's step,
        # or unknown once _shards_unknown.
        self._world_size: int | None = None
        self._shard_versions: dict[int, int] = {}
        self._shards_unknown = False

    @classmethod
    def load(cls, export_dir: str | os.PathLike) -> "ServingModel":
        """Loads the export in ``export_dir``, or the newest (highest step) export under it.

        Raises:
            FileNotFoundError: no export there.
            ValueError: a file of the export is unreadable (the message names it).
        """
        path = _export_path(os.fspath(export_dir))
        signature = ExportSignature.load(path)
        tables = {name: _Table.loaded(load_table(os.path.join(path, file)))
                  for name, file in signature.tables.items()}
        new_program = program_factory(os.path.join(path, signature.program_file), signature.program)
        return cls(path, signature, tables, new_program)

    # ------------------------------------------------------------------ state
    @property
    def receiver(self) -> ServingInputReceiver:
        return self.signature.receiver

    @property
    def outputs(self) -> list[str]:
        """Output names: the heads, then the extra outputs."""
        return list(self.signature.outputs)

    @property
    def version(self) -> int:
        """The export's global step, then the newest version of an applied update."""
        return self._version

    def shard_version(self, rank: int = 0, world_size: int = 1) -> int | None:
        """The version serving holds for shard ``rank`` of ``world_size`` (the ``base_version`` a
        delta from that rank must name), or None where it is not known (module docstring)."""
        with self._update_lock:
            return self._shard_version(rank, world_size)

    def _shard_version(self, rank: int, world_size: int) -> int | None:
        if self._world_size is not None and world_size != self._world_size:
            return None
        if rank in self._shard_versions:
            return self._shard_versions[rank]
        return None if self._shards_unknown else self.signature.global_step

    def progress(self) -> dict[str, Any]:
        """What the served parameters reflect of training: ``model_version`` (the trainer's global
        step at the newest applied update), ``dense_version`` (the version the dense weights are
        from) and ``stream``, the trainer's stream offsets those updates had trained up to
        (``{"topic": str, "offsets": {partition: next offset}}``, None before an update carried them)."""
        version, dense_version, stream = self._version, self._dense_version, self._stream
        if stream is not None:
            stream = {"topic": stream[0], "offsets": {str(p): o for p, o in sorted(stream[1].items())}}
        return {"model_version": version, "dense_version": dense_version, "stream": stream}

    @property
    def last_update_time(self) -> float | None:
        """Unix time of the last applied update (None before the first)."""
        return self._updated_at

    def table_sizes(self) -> dict[str, int]:
        """Number of FIDs in each table."""
        return {name: len(table) for name, table in self._tables.items()}

    def lookup(self, table: str, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """The float32 rows serving holds for ``ids`` in ``table`` (zeros for absent FIDs)."""
        if table not in self._tables:
            raise KeyError(f"no table '{table}'; tables: {sorted(self._tables)}")
        with self._lock:
            return self._tables[table].lookup(np.asarray(ids, dtype=np.int64).reshape(-1))

    # ------------------------------------------------------------------ prediction
    def predict(self, sparse: Mapping[str, list[list[int]]],
                dense: Mapping[str, list[list[float]]] | None = None) -> dict[str, list]:
        """Every output for every example: ``{output: [value per example]}``.

        Args:
            sparse: per receiver sparse feature, one list of FIDs per example (uint64 FIDs may
                come as their int64 two's complement).
            dense: per receiver dense feature, one row of its width per example.

        Raises:
            RequestError: an unknown or missing feature, a FID that is no integer (booleans
                included), a dense value that is no finite float32 number, a row of the wrong
                width, or features with different numbers of examples (the message names it).
        """
        return self.predict_versioned(sparse, dense)[0]

    def predict_versioned(self, sparse: Mapping[str, list[list[int]]],
                          dense: Mapping[str, list[list[float]]] | None = None) -> tuple[dict[str, list], int]:
        """:meth:`predict`, and the version of the parameters that made the prediction."""
        outputs, version = self.predict_rows(parse_features(self.receiver, sparse, dense))
        return {name: per_example(t) for name, t in outputs.items()}, version

    def predict_rows(self, rows: Rows) -> tuple[dict[str, torch.Tensor], int]:
        """Every output (a tensor with one row per example) for the examples of ``rows``, which
        hold the receiver's features (:mod:`monolith.serving.request` reads request bodies into
        them), and the version of the parameters that made the prediction.

        Examples go through the dense program :data:`PROGRAM_EXAMPLES` at a time, so that their
        pooled embeddings and activations stay bounded however many a request has.
        """
        if rows.num == 0:
            return {name: torch.zeros(0) for name in self.signature.outputs}, self._version
        if rows.num <= PROGRAM_EXAMPLES:
            with self._lock:
                pooled = self._pooled_rows(rows)
                program, version = self._program, self._version
            return self._run(program, pooled, rows), version
        # Updates wait until the last part is done: every part sees the same parameters.
        with self._lock:
            program, version = self._program, self._version
            parts = [self._run(program, self._pooled_rows(part), part)
                     for part in (rows.slice(start, min(start + PROGRAM_EXAMPLES, rows.num))
                                  for start in range(0, rows.num, PROGRAM_EXAMPLES))]
        return {name: torch.cat([part[name] for part in parts]) for name in self.signature.outputs}, version

    def _pooled_rows(self, rows: Rows) -> dict[str, dict[EmbeddingInput, torch.Tensor]]:
        """Every feature's pooled inputs for ``rows`` (the lock held)."""
        return {feature: self._pooled(feature, embeddings, *rows.sparse[feature])
                for feature, embeddings in self._feature_embeddings.items()}

    def _run(self, program: torch.nn.Module, pooled: dict[str, dict[EmbeddingInput, torch.Tensor]],
             rows: Rows) -> dict[str, torch.Tensor]:
        """The dense program's outputs for ``rows``, whose pooled inputs are ``pooled``."""
        inputs = [pooled[e.feature][e] for e in self.signature.embeddings]
        dense_inputs = [torch.from_numpy(rows.dense[name]) for name in self.receiver.dense_features]
        with torch.inference_mode():
            return dict(zip(self.signature.outputs, program(*inputs, *dense_inputs)))

    def _pooled(self, feature: str, embeddings: list[tuple[EmbeddingInput, Combiner]], ids: np.ndarray,
                offsets: np.ndarray) -> dict[EmbeddingInput, torch.Tensor]:
        """Each input of ``feature`` (an embedding of the signature and its combiner) pooled over
        the feature's examples (the lock held). Rows are looked up for examples holding at most
        :data:`LOOKUP_IDS` FIDs at a time, so that a request's memory does not grow with its FIDs
        times the table's width; an example with more is summed over parts of that many."""
        table = self._tables[self._feature_tables[feature]]
        lengths = np.diff(offsets)
        longest = max((c.max_seq_length for _, c in embeddings if isinstance(c, FirstN)), default=0)
        if longest and longest == min(c.max_seq_length for _, c in embeddings):  # every input a sequence
            keep = np.arange(ids.size) - np.repeat(offsets[:-1], lengths) < longest  # the ids read
            ids, lengths = ids[keep], np.minimum(lengths, longest)
            offsets = np.concatenate(([0], np.cumsum(lengths)))
        parts: list[list[torch.Tensor]] = []
        start = 0
        while start < lengths.size:
            stop = max(start + 1, int(np.searchsorted(offsets, offsets[start] + LOOKUP_IDS, side="right")) - 1)
            chunk = ids[offsets[start] : offsets[stop]]
            if chunk.size > LOOKUP_IDS:  # one example with more FIDs
                parts.append(self._pooled_long(table, embeddings, chunk))
            else:
                rows = torch.from_numpy(table.lookup(chunk))
                part_lengths = torch.from_numpy(lengths[start:stop])
                parts.append([combiner(rows[:, e.start : e.end], part_lengths) for e, combiner in embeddings])
            start = stop
        return {e: torch.cat(pooled) if len(parts) > 1 else pooled[0]
                for (e, _), pooled in zip(embeddings, zip(*parts))}

    @staticmethod
    def _pooled_long(table: _Table, embeddings: list[tuple[EmbeddingInput, Combiner]],
                     ids: np.ndarray) -> list[torch.Tensor]:
        """One example's inputs ``[1, ...]`` from its ``ids``, more than :data:`LOOKUP_IDS`: sums
        and means over parts of that many, a sequence from its first ids alone."""
        sums = {e: torch.zeros(1, e.end - e.start) for e, c in embeddings if not isinstance(c, FirstN)}
        for start in range(0, ids.size if sums else 0, LOOKUP_IDS):
            rows = torch.from_numpy(table.lookup(ids[start : start + LOOKUP_IDS]))
            for e, total in sums.items():
                total += rows[:, e.start : e.end].sum(0, keepdim=True)
        pooled = []
        for e, combiner in embeddings:
            if isinstance(combiner, FirstN):
                first = torch.from_numpy(table.lookup(ids[: combiner.max_seq_length]))
                pooled.append(combiner(first[:, e.start : e.end], torch.tensor([first.shape[0]])))
            else:
                pooled.append(sums[e] / ids.size if isinstance(combiner, ReduceMean) else sums[e])
        return pooled

    # ------------------------------------------------------------------ updates
    def apply_update(self, update: Mapping[str, Any]) -> int:
        """Applies a trainer's update (format and protocol in the module docstring) and returns the
        served version after it.

        A delta removes each table's ``deleted`` FIDs, then inserts or overwrites the rows of
        ``ids``; a full update replaces the rows of its sender's shard. ``dense`` (every weight of
        the model) replaces the dense weights. Requests served meanwhile see the parameters before
        or after the update, never a mix. Nothing is applied unless all of the update is valid.

        Raises:
            StaleUpdateError: ``version`` is older than the version of the sender's shard.
            BaseVersionError: a delta's ``base_version`` is not the version of the sender's shard.
            RequestError: a malformed update (the message names the field).
        """
        checked = self._check_update(update)
        program = None
        if checked.dense is not None:
            program = self._new_program()
            program.load_state_dict({DENSE_STATE_PREFIX + name: t for name, t in checked.dense.items()}, strict=True,
                                    assign=True)
        with self._update_lock:
            self._check_sequence(checked)
            # Updates are serialised, so the tables change only here: a full update builds its new
            # tables from the current ones while requests go on reading them, then swaps them in.
            replaced = {name: self._tables[name].replaced(ids, rows, checked.rank, checked.world_size)
                        for name, (ids, rows, _) in checked.changes.items()} if checked.full else {}
            with self._lock:
                if checked.full:
                    self._tables = {**self._tables, **replaced}
                else:
                    for name, (ids, rows, deleted) in checked.changes.items():
                        self._tables[name].delete(deleted)
                        self._tables[name].upsert(ids, rows)
                if program is not None:
                    self._program = program
                self._record_shard(checked)
                # A full update may take its shard back to an older version: the served version is
                # then the newest any shard is at.
                self._version = self._newest_shard_version() if checked.full else max(self._version, checked.version)
                self._updated_at = time.time()
                version = self._version
            if checked.dense is not None:
                self._dense_version = checked.version
            if checked.stream is not None:
                topic, offsets = checked.stream
                # Ranks read disjoint partitions; another stream's offsets do not compare with the old.
                kept = self._stream[1] if self._stream is not None and self._stream[0] == topic else {}
                self._stream = (topic, {**kept, **offsets})
        return version

    def _newest_shard_version(self) -> int:
        """The newest version a shard is at, after a full update (the update lock held)."""
        versions = list(self._shard_versions.values())
        if not self._shards_unknown and len(versions) < self._world_size:
            versions.append(self.signature.global_step)  # ranks that have not pushed: at the export's step
        return max(versions)

    def _record_shard(self, checked: _Update) -> None:
        """Notes the version the sender's shard is at after ``checked`` (the update lock held)."""
        if checked.base is None and not checked.full:
            # A hand-made delta: which shards it touched, and on top of what, is not known.
            self._shard_versions.clear()
            self._shards_unknown = True
            return
        if self._world_size is not None and checked.world_size != self._world_size:
            # A full update of another world size: the other ranks' shards overlap it partly.
            self._shard_versions.clear()
            self._shards_unknown = True
        self._world_size = checked.world_size
        self._shard_versions[checked.rank] = checked.version

    def _check_sequence(self, checked: _Update) -> None:
        """Refuses a stale update, and a delta that does not build on what serving holds.

        A full update is never refused for its version: whatever a push did to the shard's version
        (a huge one included), the trainer's next delta gets a base-version refusal, not a stale
        one, and the full snapshot it answers with gets through."""
        if checked.full:
            return
        held = self._shard_version(checked.rank, checked.world_size)
        if checked.base is not None and checked.base != held:
            holds = f"version {held}" if held is not None else "an unknown version"
            raise BaseVersionError(f"update builds on version {checked.base}, but serving holds {holds} for the "
                                   f"shard of rank {checked.rank} of {checked.world_size} (served version "
                                   f"{self._version}): send a full update", self._version, held)
        floor = held if checked.base is not None else self._version
        if checked.version < floor:
            if floor == self._version:
                message = f"update version {checked.version} is older than the served version {floor}"
            else:
                message = (f"update version {checked.version} is older than the version {floor} serving holds for "
                           f"the shard of rank {checked.rank} of {checked.world_size} (served version {self._version})")
            raise StaleUpdateError(message, served_version=self._version, min_version=floor)

    def _check_update(self, update: Any) -> _Update:
        if not isinstance(update, Mapping):
            raise RequestError(f"an update is a dict with {list(_UPDATE_FIELDS)}, got {type(update).__name__}")
        _no_unknown(update, _UPDATE_FIELDS, "update")
        version = _int_field(update, "version")
        base = _int_field(update, "base_version", None)
        for name, value in (("version", version), ("base_version", base)):
            if value is not None and not 0 <= value < 2**63:
                raise RequestError(f"update '{name}' must be in [0, 2**63), got {value}")
        full = update.get("full", False)
        if not isinstance(full, bool):
            raise RequestError(f"update 'full' must be a bool, got {full!r}")
        world_size = _int_field(update, "world_size", 1)
        rank = _int_field(update, "rank", 0)
        if not 1 <= world_size <= MAX_WORLD_SIZE or not 0 <= rank < world_size:
            raise RequestError(f"update 'rank' and 'world_size' must satisfy 0 <= rank < world_size <= "
                               f"{MAX_WORLD_SIZE}, got rank {rank} and world_size {world_size}")
        checked = _Update(version, base, full, rank, world_size, {}, None)
        with self._update_lock:  # refused early, before rows are converted; checked again when applied
            self._check_sequence(checked)
        # Only a missing 'tables' means no change: a falsy non-dict ([] or 0) is a malformed update.
        tables = update.get("tables")
        tables = {} if tables is None else tables
        if not isinstance(tables, Mapping):
            raise RequestError(f"update 'tables' must be a dict of table name -> changes, got {type(tables).__name__}")
        for name, change in tables.items():
            field = f"update tables['{name}']"
            if name not in self._tables:
                raise RequestError(f"{field}: no such table; tables: {sorted(self._tables)}")
            if not isinstance(change, Mapping):
                raise RequestError(f"{field} must be a dict with {list(_TABLE_UPDATE_FIELDS)}, "
                                   f"got {type(change).__name__}")
            _no_unknown(change, _TABLE_UPDATE_FIELDS, field)
            table = self._tables[name]
            ids = _id_array(change.get("ids"), f"{field}['ids']")
            rows = _row_array(change.get("rows"), f"{field}['rows']", ids.size, table.dim)
            _check_finite(rows, ids, f"{field}['rows']", "is not finite")
            served = table.as_served(rows)
            _check_finite(served, ids, f"{field}['rows']", "is beyond the range of the table's compressor")
            deleted = _id_array(change.get("deleted"), f"{field}['deleted']")
            if full and deleted.size:
                raise RequestError(f"{field}['deleted'] must be empty in a full update (it replaces the shard's rows)")
            if world_size > 1:
                for what, fids in (("ids", ids), ("deleted", deleted)):
                    foreign = fids[shard_of(torch.from_numpy(fids), world_size).numpy() != rank]
                    if foreign.size:
                        raise RequestError(f"{field}['{what}'] holds FIDs of other ranks' shards (e.g. "
                                           f"{foreign[0]}); rank {rank} of {world_size} may only send its own")
            checked.changes[name] = (ids, served, deleted)
        checked.dense = self._check_dense(update.get("dense"))
        checked.stream = _check_stream(update.get("stream"))
        if full:
            missing = sorted(set(self._tables) - set(checked.changes))
            if missing:
                raise RequestError(f"a full update must hold every table (all of the sender's rows): missing {missing}")
            if rank == 0 and checked.dense is None:
                raise RequestError("a full update from rank 0 must hold the dense weights ('dense')")
        return checked

    def _check_dense(self, dense: Any) -> dict[str, torch.Tensor] | None:
        if dense is None:
            return None
        if not isinstance(dense, Mapping):
            raise RequestError(f"update 'dense' must be the model's state dict or None, got {type(dense).__name__}")
        missing = sorted(set(self._dense_spec) - set(dense))
        unexpected = sorted(set(dense) - set(self._dense_spec), key=repr)  # keys of any type
        if missing or unexpected:
            raise RequestError(f"update 'dense' must hold every dense weight of the model: missing {missing}, "
                               f"unexpected {unexpected}")
        checked = {}
        for name, (shape, dtype) in self._dense_spec.items():
            value = dense[name]
            field = f"update dense['{name}']"
            if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape or value.dtype != dtype:
                got = f"{value.dtype} {list(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
                raise RequestError(f"{field} must be a {dtype} tensor of shape {list(shape)}, got {got}")
            # A sparse weight would load, then fail every prediction.
            if value.layout != torch.strided:
                raise RequestError(f"{field} must be a dense (strided) tensor, got layout {value.layout}")
            try:
                # A copy: the trainer goes on changing its tensors in place.
                checked[name] = value.detach().to("cpu", copy=True)
            except RuntimeError as error:  # tensors without data, e.g. on the meta device
                raise RequestError(f"{field} cannot be read: {_first_line(error)}") from None
            if checked[name].is_floating_point() and not bool(torch.isfinite(checked[name]).all()):
                raise RequestError(f"{field} is not finite: serving it would make every prediction fail")
        return checked


# --------------------------------------------------------------------------------------- helpers
def _check_stream(stream: Any) -> tuple[str, dict[int, int]] | None:
    """An update's ``stream`` as (topic, next offset per partition); None where it has none."""
    if stream is None:
        return None
    expected = "update 'stream' must be {'topic': str, 'offsets': {partition: offset}} with ints >= 0"
    if not isinstance(stream, Mapping) or set(stream) != {"topic", "offsets"}:
        raise RequestError(f"{expected}, got {reprlib.repr(stream)}")
    topic, offsets = stream["topic"], stream["offsets"]
    if not isinstance(topic, str) or not isinstance(offsets, Mapping):
        raise RequestError(f"{expected}, got {reprlib.repr(stream)}")
    checked = {}
    for partition, offset in offsets.items():
        partition = int(partition) if isinstance(partition, str) and partition.isdigit() else partition
        if (isinstance(partition, bool) or not isinstance(partition, int) or partition < 0
                or isinstance(offset, bool) or not isinstance(offset, int) or offset < 0):
            raise RequestError(f"{expected}, got offsets[{partition!r}] = {offset!r}")
        checked[partition] = offset
    return topic, checked


def _grown(array: np.ndarray, capacity: int) -> np.ndarray:
    """``array`` with zero rows appended up to ``capacity`` rows."""
    out = np.zeros((capacity, *array.shape[1:]), dtype=array.dtype)
    out[: array.shape[0]] = array
    return out


def _int_field(update: Mapping[str, Any], name: str, *default: Any) -> Any:
    """``update[name]``, an int (not a bool); ``default`` where it is missing or None, if given."""
    value = update.get(name)
    if value is None and default:
        return default[0]
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"update '{name}' must be an int, got {value!r}")
    return value


def _export_path(directory: str) -> str:
    """``directory`` if it holds an export, else its newest export (highest numeric subdirectory)."""
    if os.path.isfile(os.path.join(directory, SIGNATURE_FILE)):
        return directory
    steps = sorted((int(n) for n in _listdir(directory) if re.fullmatch(r"\d+", n)
                    and os.path.isfile(os.path.join(directory, n, SIGNATURE_FILE))), reverse=True)
    if not steps:
        raise FileNotFoundError(f"{directory}: no export ({SIGNATURE_FILE}) in it or in a <global_step> "
                                f"subdirectory")
    return os.path.join(directory, str(steps[0]))


def _listdir(directory: str) -> list[str]:
    try:
        return os.listdir(directory)
    except FileNotFoundError:
        raise FileNotFoundError(f"{directory}: no such export directory") from None


def _no_unknown(given: Mapping, known: Sequence[str], field: str) -> None:
    unknown = sorted(map(str, set(given) - set(known)))
    if unknown:
        raise RequestError(f"{field}: unknown field(s) {unknown}; the fields are {list(known)}")


def parse_features(receiver: ServingInputReceiver, sparse: Any, dense: Any) -> Rows:
    """The examples of ``sparse`` (per receiver sparse feature, one list of FIDs per example) and
    ``dense`` (per dense feature, one row of its width per example; None: none), checked as
    :meth:`ServingModel.predict` says.

    Raises:
        RequestError: as :meth:`ServingModel.predict`.
    """
    sparse = _features(sparse, "sparse", receiver.sparse_features)
    dense = _features({} if dense is None else dense, "dense", list(receiver.dense_features))
    sizes = {f"{kind}['{name}']": len(rows) for kind, given in (("sparse", sparse), ("dense", dense))
             for name, rows in given.items()}
    if len(set(sizes.values())) > 1:
        raise RequestError(f"features have different numbers of examples: {sizes}")
    return Rows(next(iter(sizes.values()), 0),
                {name: jagged(*_fids(rows, f"sparse['{name}']")) for name, rows in sparse.items()},
                {name: _dense_rows(dense[name], f"dense['{name}']", width)
                 for name, width in receiver.dense_features.items()})


def _features(given: Any, kind: str, names: list[str]) -> dict[str, Any]:
    """``given`` checked to map exactly the receiver's ``names`` to lists."""
    if not isinstance(given, Mapping):
        raise RequestError(f"'{kind}' must be an object of feature name -> rows, got {type(given).__name__}")
    unknown = [str(n) for n in given if n not in names]
    if unknown:
        raise RequestError(f"unknown {kind} feature(s) {unknown}; the model's {kind} features are {names}")
    for name in names:
        if name not in given:
            raise RequestError(f"{kind} feature '{name}' is missing; the model's {kind} features are {names}")
        if not isinstance(given[name], list):
            raise RequestError(f"{kind}['{name}'] must be a list with one entry per example, "
                               f"got {type(given[name]).__name__}")
    return dict(given)


def _fids(rows: list, field: str) -> tuple[np.ndarray, np.ndarray]:
    """Flat int64 FIDs and per-example lengths of ``[[fid, ...] per example]``."""
    for i, row in enumerate(rows):
        if not isinstance(row, list):
            raise RequestError(f"{field}[{i}] must be a list of FIDs, got {type(row).__name__}")
    lengths = np.array([len(row) for row in rows], dtype=np.int64)
    flat = list(itertools.chain.from_iterable(rows))
    ids = None
    # Exact types, so that true/false (bools are ints to Python and numpy) are never read as FIDs 1/0.
    if set(map(type, flat)) <= {int}:
        # uint64 FIDs travel as their int64 two's complement; mixed spellings and ints out of range
        # fit neither dtype and are checked one by one below.
        for dtype in (np.int64, np.uint64):
            try:
                ids = np.array(flat, dtype=dtype).view(np.int64)
                break
            except OverflowError:
                pass
    if ids is None:
        converted = []
        for i, row in enumerate(rows):
            for j, fid in enumerate(row):
                try:
                    if type(fid) is not int:
                        raise ValueError
                    converted.append(fid_to_int64(fid))
                except ValueError:
                    raise RequestError(f"{field}[{i}][{j}] must be an integer FID in [-2**63, 2**64), "
                                       f"got {reprlib.repr(fid)}") from None
        ids = np.array(converted, dtype=np.int64)
    return ids, lengths


def _dense_rows(rows: list, field: str, width: int) -> np.ndarray:
    """Float32 ``[batch, width]`` from ``[[value] * width per example]``; each value a finite float32."""
    for i, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != width:
            got = f"{len(row)} values" if isinstance(row, list) else type(row).__name__
            raise RequestError(f"{field}[{i}] must be a list of {width} numbers, got {got}")
    values = None
    # Exact types, so that true/false (bools are ints to Python and numpy) are never read as 1/0.
    if set(map(type, itertools.chain.from_iterable(rows))) <= {int, float}:
        try:
            with np.errstate(over="ignore"):  # values beyond float32 become inf, refused below
                values = np.array(rows, dtype=np.float32).reshape(len(rows), width)
        except OverflowError:  # an int beyond float64
            pass
    if values is None or not np.isfinite(values).all():
        # NaN and Infinity parse as JSON in Python, and would make outputs JSON cannot carry.
        i, j, problem = next((i, j, problem) for i, row in enumerate(rows) for j, value in enumerate(row)
                             if (problem := _dense_value_problem(value)))
        raise RequestError(f"{field}[{i}][{j}] {problem}, got {reprlib.repr(rows[i][j])}")
    return values


def _dense_value_problem(value: Any) -> str | None:
    """Why ``value`` is no dense feature value, or None if it is one."""
    if type(value) not in (int, float):
        return "must be a number"
    try:
        with np.errstate(over="ignore"):
            finite = bool(np.isfinite(np.float32(value)))
    except OverflowError:
        finite = False
    return None if finite else "must be a finite number within float32 range"


def _id_array(value: Any, field: str) -> np.ndarray:
    """1-D int64 FIDs from a tensor or array (None: none)."""
    if value is None:
        return np.zeros(0, dtype=np.int64)
    array = _numpy(value, field)
    if array.ndim != 1 or array.dtype.kind not in "iu":
        # The given dtype, not the array's: a bfloat16 tensor reads as float32.
        raise RequestError(f"{field} must be a 1-D integer tensor of FIDs, got {value.dtype} {list(value.shape)}")
    return np.ascontiguousarray(array.view(np.int64) if array.dtype == np.uint64 else array.astype(np.int64))


def _row_array(value: Any, field: str, n: int, dim: int) -> np.ndarray:
    """Float32 ``[n, dim]`` rows from a tensor or array (None only when ``n == 0``)."""
    if value is None:
        if n:
            raise RequestError(f"{field} is missing; it must hold one row per id")
        return np.zeros((0, dim), dtype=np.float32)
    array = _numpy(value, field)
    if array.shape != (n, dim) or array.dtype.kind != "f":
        raise RequestError(f"{field} must be a float tensor of shape [{n}, {dim}] (one row per id), "
                           f"got {array.dtype} {list(array.shape)}")
    with np.errstate(over="ignore"):  # float64 beyond float32 becomes inf, refused by the caller
        return np.ascontiguousarray(array, dtype=np.float32)


def _check_finite(rows: np.ndarray, ids: np.ndarray, field: str, problem: str) -> None:
    """Refuses ``rows`` (of ``ids``) if one is not finite: serving it would fail every prediction reading it."""
    bad = np.flatnonzero(~np.isfinite(rows).all(axis=1))
    if bad.size:
        raise RequestError(f"{field}[{bad[0]}] (FID {ids[bad[0]]}) {problem}: serving it would make every "
                           f"prediction that reads it fail")


def _numpy(value: Any, field: str) -> np.ndarray:
    """``value``, a tensor or an array, as an array; floats numpy lacks (bfloat16, float8) widen to float32."""
    if isinstance(value, np.ndarray):
        return value
    if not isinstance(value, torch.Tensor):
        raise RequestError(f"{field} must be a tensor, got {type(value).__name__}")
    if value.layout != torch.strided:
        raise RequestError(f"{field} must be a dense (strided) tensor, got layout {value.layout}")
    try:
        value = value.detach().cpu()
        if value.is_floating_point() and value.dtype not in (torch.float16, torch.float32, torch.float64):
            value = value.float()  # exact
        return value.numpy()
    except (TypeError, RuntimeError) as error:  # dtypes numpy lacks (complex32, qint8), meta tensors
        raise RequestError(f"{field}: a {value.dtype} tensor cannot be read: {_first_line(error)}") from None


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [""])[0]


def per_example(output: torch.Tensor) -> list:
    """An output's values as lists, one entry per example; a ``[batch, 1]`` output gives plain values,
    as ``Estimator.predict`` does."""
    if output.dim() == 2 and output.shape[1] == 1:
        output = output[:, 0]
    return output.tolist()


def encode_update(update: Mapping[str, Any]) -> bytes:
    """``update`` as ``torch.save`` bytes that load with ``weights_only=True``.

    Numpy arrays become tensors and numpy scalars Python numbers; tensors are copied so that a view
    does not carry its whole storage.
    """

    def plain(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {key: plain(v) for key, v in value.items()}
        if isinstance(value, np.ndarray):
            return torch.from_numpy(np.array(value))
        if isinstance(value, torch.Tensor):
            return value.detach().to("cpu", copy=True)
        if isinstance(value, np.generic):
            return value.item()
        return value

    buffer = io.BytesIO()
    torch.save(plain(update), buffer)
    return buffer.getvalue()


def decode_update(data: bytes) -> Any:
    """The update in :func:`encode_update`'s bytes, loaded with ``weights_only=True``.

    Raises:
        RequestError: ``data`` is not such bytes.
    """
    try:
        return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as error:  # torch.load raises many kinds (unpickling, zip, EOF) for foreign bytes
        raise RequestError(f"update body must be torch.save bytes loadable with weights_only=True: "
                           f"{type(error).__name__}: {_first_line(error)}") from error
