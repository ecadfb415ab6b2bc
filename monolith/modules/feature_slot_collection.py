"""``FeatureSlotCollection``: a Monolith model's feature slots and the hash tables behind them.

The model's ``model_fn`` declares slots and slices (:mod:`monolith.feature`); the collection builds
one table per slot (or one per group of alike slots) once every slice is known, and serves the
lookups of each step: ``with collection.step(batch):`` (see :mod:`monolith.modules.embedding_step`).
Tables are only built once every slot and slice is known: the first call of ``model_fn`` is a
*build pass* (as Monolith builds its graph before running it) in which lookups return zeros of the
right shape; :meth:`FeatureSlotCollection.build` then creates the tables.

It is an ``nn.Module`` of the model: ``model.train()``/``eval()`` reach its tables (whether
lookups record gradients), and ``state_dict()`` holds every table under
``tables.<name>.<array>`` (see :class:`~monolith.modules.embedding_lookup.HashEmbedding`). Under
torch.distributed a rank's ``state_dict()`` holds its own shard of each table; the Estimator's
checkpoints, which merge the shards of any number of ranks, are how a sharded model moves.
"""

from __future__ import annotations

import contextvars
import zlib
from typing import Any, Callable, Sequence

import torch

from monolith.feature import FeatureColumn, FeatureSlice, FeatureSlot, FeatureSlotConfig
from monolith.modules.combiners import PoolingCombiner
from monolith.modules.embedding_lookup import HashEmbedding, times_per_id
from monolith.modules.embedding_step import end_step, running_step
from monolith.sparse import Batch, JaggedTensor
from monolith.table import EmbeddingHashTable
from monolith.table.embedding_table import DEFAULT_DEDUP
from monolith.table.config import DEFAULT_EXPIRE_TIME_DAYS, SlidingHashFilterConfig

__all__ = ["EmbeddingStep", "FeatureSlotCollection", "LookupStrategy"]

#: Serves one lookup: the pooled embedding of a column's slice.
LookupStrategy = Callable[[FeatureColumn, FeatureSlice], torch.Tensor]
#: The ids of a feature the batch lacks, where every declared feature is routed (see EmbeddingStep).
_NO_IDS = torch.zeros(0, dtype=torch.int64)
#: A step's request times before they are first read.
_UNREAD = object()


class FeatureSlotCollection(torch.nn.Module):
    """Creates feature slots, builds their tables and serves each step's lookups.

    Args:
        use_native_multi_hash_table: one table per slot (Monolith's default); when False, slots
            with identical slices share one merged table (Monolith's ``MergedMultiTypeHashTable``),
            keyed by the FIDs' own slot bits.
        seed: seeds the tables' initializers.
        hashtable_init_capacity: when above 0, every table's ``initial_capacity`` (Monolith's
            ``CpuTrainingConfig.hashtable_init_capacity``), in place of the slots' own
            ``hashtable_config.initial_capacity``.
        occurrence_filter: how every table counts the occurrences of ids not yet admitted: None
            exactly, or Monolith's bounded sliding hash filter
            (:class:`~monolith.table.config.SlidingHashFilterConfig`).
    """

    def __init__(
        self, use_native_multi_hash_table: bool = True, seed: int = 0, hashtable_init_capacity: int = 0,
        occurrence_filter: SlidingHashFilterConfig | None = None,
    ) -> None:
        super().__init__()
        self.use_native_multi_hash_table = use_native_multi_hash_table
        self.seed = seed
        self.hashtable_init_capacity = hashtable_init_capacity
        self.occurrence_filter = occurrence_filter
        self.feature_slots: list[FeatureSlot] = []
        #: Table name -> its module (kept out of ``_modules``: a table may be named anything a
        #: feature is; ``train()`` and ``state_dict()`` reach them below).
        self.tables: dict[str, HashEmbedding] = {}
        self._table_of_slot: dict[int, HashEmbedding] = {}
        #: Wraps each table in its module: HashEmbedding, or a sharded module under torch.distributed.
        self.module_factory: Callable[[EmbeddingHashTable], HashEmbedding] = HashEmbedding
        self.built = False

    # ------------------------------------------------------------------ building
    def create_feature_slot(self, config: FeatureSlotConfig) -> FeatureSlot:
        """A new slot (its table is created by :meth:`build`, or at once after it)."""
        if config.slot_id is None:
            raise ValueError(f"feature slot '{config.name}' has no slot_id")
        for existing in self.feature_slots:
            if existing.slot == config.slot_id:
                raise ValueError(f"slot {config.slot_id} is already used by feature slot '{existing.name}'")
        slot = FeatureSlot(config)
        self.feature_slots.append(slot)
        return slot

    def build(self) -> None:
        """Creates the tables of all slots declared so far (idempotent)."""
        pending = [s for s in self.feature_slots if s.slot not in self._table_of_slot and s.slices]
        if self.use_native_multi_hash_table:
            groups = [[s] for s in pending]
        else:
            by_signature: dict[str, list[FeatureSlot]] = {}
            for s in pending:
                by_signature.setdefault(s.signature(), []).append(s)
            groups = list(by_signature.values())
        for group in groups:
            self._build_table(group)
        self.built = True

    def _build_table(self, slots: list[FeatureSlot]) -> None:
        name = slots[0].name if len(slots) == 1 else "merged_" + "_".join(str(s.slot) for s in slots)
        first = slots[0].slot_config
        table = EmbeddingHashTable(
            list(slots[0].slices),
            [s.slot_config for s in slots],
            # With one table per slot the slot's settings hold for any FID fed to it.
            default_occurrence_threshold=first.occurrence_threshold if len(slots) == 1 else 0,
            default_expire_time=first.expire_time if len(slots) == 1 else DEFAULT_EXPIRE_TIME_DAYS,
            seed=self.seed + zlib.crc32(name.encode()),
            name=name,
            initial_capacity=self.hashtable_init_capacity
            or sum(s.config.hashtable_config.initial_capacity for s in slots),
            occurrence_filter=self.occurrence_filter,
        )
        module = self.module_factory(table)
        module.train(self.training)
        self.tables[name] = module
        for s in slots:
            self._table_of_slot[s.slot] = module

    def slot_tables(self) -> dict[int, HashEmbedding]:
        """Slot -> the table module serving it, for every slot with a table."""
        return dict(self._table_of_slot)

    def table_of_slot(self, slot: int) -> HashEmbedding:
        """The table module serving ``slot`` (after :meth:`build`)."""
        try:
            return self._table_of_slot[slot]
        except KeyError:
            raise KeyError(f"slot {slot} has no table yet (tables: {sorted(self.tables)}); "
                           f"build the model first") from None

    def table_for(self, feature_slot: FeatureSlot) -> HashEmbedding | None:
        """The table module serving ``feature_slot`` with all of its slices, widened by the slices
        the slot gained since the table was built; None where the slot has no table of its width
        yet (before the build, or a slot sharing a merged table that another slot widened)."""
        module = self._table_of_slot.get(feature_slot.slot)
        if module is None:
            return None
        table = module.table
        if table.dim < feature_slot.dim:
            for config in feature_slot.slices[len(table.slices):]:
                table.add_slice(config)
        return module if table.dim == feature_slot.dim else None

    # ------------------------------------------------------------------ per step
    def step(self, batch: Batch | None, lookup: LookupStrategy | None = None) -> EmbeddingStep:
        """The lookups of one step, for ``with collection.step(batch):``; ``lookup`` serves every
        lookup in place of the tables (the exporter's strategy)."""
        return EmbeddingStep(self, batch, lookup)

    # ------------------------------------------------------------------ training
    def grad_squared_norm(self) -> float:
        """Sum of squares of all pending sparse gradients."""
        return sum(module.grad_squared_norm() for module in self.tables.values())

    def exchange_gradients(self) -> None:
        """Sends the pending sparse gradients to the ranks that own their ids (sharded tables; a no-op
        for local ones), ahead of :meth:`apply_gradients`, so the exchange can overlap other work."""
        modules = list(self.tables.values())
        if modules:
            type(modules[0]).exchange_gradients_together(modules)

    def apply_gradients(self, global_step: int, scale: float = 1.0, dedup: str = DEFAULT_DEDUP) -> None:
        """Applies every table's pending gradients (times ``scale``); ``dedup`` as
        :meth:`EmbeddingHashTable.apply_gradients` takes it (one update per distinct id by default)."""
        modules = list(self.tables.values())
        if modules:
            type(modules[0]).apply_gradients_together(modules, global_step, scale, dedup)

    def discard_gradients(self) -> None:
        """Drops pending gradients (a step that was not applied)."""
        for module in self.tables.values():
            module.discard_gradients()

    def train(self, mode: bool = True) -> "FeatureSlotCollection":
        super().train(mode)
        for module in self.tables.values():
            module.train(mode)
        return self

    # ------------------------------------------------------------------ state
    def table_states(self) -> dict[str, dict[str, Any]]:
        """Every table's :meth:`~monolith.table.EmbeddingHashTable.state_dict` (numpy arrays), by
        table name: what a checkpoint writes, one file per table."""
        return {name: module.table.state_dict() for name, module in self.tables.items()}

    def load_table_states(self, state: dict[str, dict[str, Any]], source: str = "checkpoint") -> None:
        """Restores tables by name from :meth:`table_states`; a table of this model missing from
        ``state`` is an error."""
        missing = sorted(set(self.tables) - set(state))
        if missing:
            raise ValueError(f"{source}: no state for embedding tables {missing} (has {sorted(state)})")
        for name, module in self.tables.items():
            module.table.load_state_dict(state[name], source=f"{source}:{name}")

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        for name, module in self.tables.items():
            module.state_dict(destination=destination, prefix=f"{prefix}tables.{name}.", keep_vars=keep_vars)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, local_metadata: dict, strict: bool,
                              missing_keys: list, unexpected_keys: list, error_msgs: list) -> None:
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      [], error_msgs)  # the tables' entries are read below, not unexpected
        ours = [key for key in state_dict if key.startswith(prefix + "tables.")]
        if ours and not self.tables:
            error_msgs.append(f"{prefix}tables.*: this model has no embedding tables yet; they are built by its "
                              f"first call: run model(batch) once (or Estimator.build) before load_state_dict")
            return
        for name, module in self.tables.items():
            module._load_from_state_dict(state_dict, f"{prefix}tables.{name}.", local_metadata, strict,
                                         missing_keys, unexpected_keys, error_msgs)
        if strict:
            known = tuple(f"{prefix}tables.{name}." for name in self.tables)
            unexpected_keys.extend(key for key in ours if not key.startswith(known))


class EmbeddingStep:
    """The lookups of one step of a :class:`FeatureSlotCollection`.

    Args:
        collection: the tables the lookups read.
        batch: the step's features (None: a step whose lookups all go to ``lookup``).
        lookup: a strategy serving every lookup instead of the tables.

    Where the tables do lookups better together (sharded tables: one exchange for every feature),
    the rows of every feature with a table are looked up when the step is made. Every declared
    feature is routed, with no ids where the batch lacks it: every rank then takes part in the
    same exchanges whatever features its own batch carries (reading a feature the batch lacks
    still raises, in :meth:`lookup`).
    """

    def __init__(self, collection: "FeatureSlotCollection", batch: Batch | None,
                 lookup: LookupStrategy | None = None) -> None:
        if batch is None and lookup is None:
            raise ValueError("an embedding step needs a batch or a lookup strategy")
        self.collection = collection
        self.batch = batch
        self._strategy = lookup
        self._pooled: dict[str, torch.Tensor] = {}
        self._routed: dict[str, Any] = {}
        self._times: torch.Tensor | None | object = _UNREAD
        self._token: contextvars.Token | None = None
        if lookup is None:
            self._route_together()

    def __enter__(self) -> "EmbeddingStep":
        if self._token is not None:
            raise RuntimeError("an embedding step runs once; make a new one with collection.step(batch)")
        self._token = running_step(self)
        return self

    def __exit__(self, *exc: object) -> None:
        end_step(self._token)

    def lookup(self, column: FeatureColumn, s: FeatureSlice) -> torch.Tensor:
        """Pooled ``[batch, ...]`` embedding of ``column``'s slice ``s`` in this step."""
        if self._strategy is not None:
            return self._strategy(column, s)
        pooled = self._pooled.get(column.feature_name)
        if pooled is None:
            try:
                jagged: JaggedTensor = self.batch.sparse[column.feature_name]
            except KeyError:
                raise KeyError(f"feature '{column.feature_name}' is not in the batch; sparse features: "
                               f"{self.batch.sparse.keys()}") from None
            pooled = self._pooled_of(column, jagged)
        return pooled[..., s.start : s.end]

    def lookup_many(self, requests: Sequence[tuple[FeatureColumn, FeatureSlice]]) -> list[torch.Tensor]:
        """:meth:`lookup` of each ``(column, slice)``; the features not yet looked up in this step are
        looked up together, in one autograd step, where their tables allow (local tables, pooled by
        sum or mean: :meth:`HashEmbedding.lookup_pooled_together`)."""
        if self._strategy is None:
            self._pool_together([column for column, _ in requests])
        return [self.lookup(column, s) for column, s in requests]

    def _pool_together(self, columns: list[FeatureColumn]) -> None:
        requests, names = [], []
        for column in columns:
            name = column.feature_name
            if (name in self._pooled or name in self._routed or name in names or name not in self.batch.sparse
                    or not isinstance(column.combiner, PoolingCombiner)):
                continue  # done, routed, or one for lookup() alone (which raises for a feature the batch lacks)
            module = self.collection.table_for(column.feature_slot)
            if module is None or module.routes_lookups_together:
                continue
            jagged = self.batch.sparse[name]
            requests.append((module, jagged.values(), jagged.lengths(), column.combiner, self._example_times()))
            names.append(name)
        if len(requests) > 1:
            self._pooled.update(zip(names, type(requests[0][0]).lookup_pooled_together(requests)))

    def switch_batch(self, batch: Batch) -> None:
        """Later lookups of this step read ``batch`` (``share_slot`` inside ``model_fn``); the
        features whose ids it changed are looked up anew, the others keep their rows."""
        old = self.batch.sparse
        for name in batch.sparse.keys():
            if name in old and not torch.equal(old[name].values(), batch.sparse[name].values()):
                self._pooled.pop(name, None)
                self._routed.pop(name, None)
        self.batch = batch
        self._times = _UNREAD

    def _pooled_of(self, column: FeatureColumn, jagged: JaggedTensor) -> torch.Tensor:
        """All columns of one feature's rows pooled by its combiner, kept for the step's other lookups of
        the feature: its slices are views of it (pooling is column by column, so the values are those of
        each slice pooled alone)."""
        module = self.collection.table_for(column.feature_slot)
        if module is None:
            # Build pass (or a slot first seen now): zeros of the final shape, no table access.
            return column.combiner(torch.zeros(jagged.values().numel(), column.feature_slot.dim), jagged.lengths())
        routed = self._routed.pop(column.feature_name, None)
        if routed is not None:
            pooled = column.combiner(module(jagged.values(), routed=routed), jagged.lengths())
        else:
            pooled = module(jagged.values(), self._example_times(), lengths=jagged.lengths(), combiner=column.combiner)
        self._pooled[column.feature_name] = pooled
        return pooled

    def _route_together(self) -> None:
        requests, names = [], []
        present = set(self.batch.sparse.keys())
        modules = self.collection.tables.values()
        module_type = type(next(iter(modules), None))
        if not getattr(module_type, "routes_lookups_together", False):
            return
        # Slot and column order is the model's declaration order: the same on every rank.
        for feature_slot in self.collection.feature_slots:
            module = self.collection.table_for(feature_slot)
            if module is None:
                continue
            for name in feature_slot.feature_columns:
                if name in present:
                    jagged = self.batch.sparse[name]
                    requests.append((module, jagged.values(), times_per_id(self._example_times(), jagged.lengths())))
                else:
                    requests.append((module, _NO_IDS, None))
                names.append(name)
        self._routed = {name: routed for name, routed in zip(names, module_type.lookup_together(requests))
                        if name in present}

    def _example_times(self) -> torch.Tensor | None:
        """The batch's request times ``[batch]`` (int64; None where it has none), read once per step."""
        if self._times is _UNREAD:
            req_time = self.batch.dense.get("req_time")
            self._times = None if req_time is None else req_time.reshape(-1).to(torch.int64)
        return self._times
