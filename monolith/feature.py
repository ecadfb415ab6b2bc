"""Feature slots, columns and slices: the user's view of the embedding tables.

* :class:`FeatureSlot` -- one slot's table settings (occurrence threshold, expire time) and the
  slices of its rows; features sharing an embedding share a slot.
* :class:`FeatureSlice` -- columns ``[start, end)`` of a slot's rows, with their own initializer,
  optimizer, compressor and learning-rate function.
* :class:`FeatureColumn` -- a named input feature read through a slot, with a combiner that pools
  the ids of each example (``reduce_sum``, ``reduce_mean``, ``first_n``).
* :class:`EmbeddingFactory` -- builds the tables behind the slots and looks features up for the
  batch of the current step (Monolith's feature factory on the task context).

Tables are only built once every slot and slice is known: the first call of ``model_fn`` is a
*build pass* (as Monolith builds its graph before running it) in which lookups return zeros of the
right shape; :meth:`EmbeddingFactory.build` then creates the tables.
"""

from __future__ import annotations

import dataclasses
import json
import zlib
from typing import Any, Callable, NamedTuple

import numpy as np
import torch

from monolith.modules.combiners import Combiner, FirstN, ReduceMean, ReduceSum
from monolith.modules.embedding_lookup import HashEmbedding
from monolith.optim.base import Compressor, Initializer, SliceOptimizer
from monolith.optim.compressors import Fp16Compressor, Fp32Compressor
from monolith.optim.initializers import RandomUniformInitializer, ZerosInitializer
from monolith.optim.optimizers import AdagradOptimizer, FtrlOptimizer
from monolith.sparse import Batch, JaggedTensor
from monolith.table import EmbeddingHashTable, SliceConfig, SlotConfig
from monolith.table.config import DEFAULT_EXPIRE_TIME_DAYS, CuckooHashTableConfig, HashTableConfig

#: The ids of a feature a batch lacks, where every declared feature is routed (see EmbeddingFactory.begin_step).
_NO_IDS = torch.zeros(0, dtype=torch.int64)


@dataclasses.dataclass
class FeatureSlotConfig:
    """Monolith's ``FeatureSlotConfig``: defaults for the slices of one slot and its table settings."""

    name: str | None = None
    has_bias: bool = False
    bias_initializer: Initializer = dataclasses.field(default_factory=ZerosInitializer)
    bias_optimizer: SliceOptimizer = dataclasses.field(
        default_factory=lambda: FtrlOptimizer(initial_accumulator_value=1e-6, beta=1.0))
    bias_compressor: Compressor = dataclasses.field(default_factory=Fp32Compressor)
    bias_learning_rate_fn: Callable[[int], float] | None = None
    default_vec_initializer: Initializer = dataclasses.field(default_factory=RandomUniformInitializer)
    default_vec_optimizer: SliceOptimizer = dataclasses.field(
        default_factory=lambda: AdagradOptimizer(initial_accumulator_value=1.0))
    default_vec_compressor: Compressor = dataclasses.field(default_factory=Fp16Compressor)
    default_vec_learning_rate_fn: Callable[[int], float] | None = None
    hashtable_config: HashTableConfig = dataclasses.field(default_factory=CuckooHashTableConfig)
    slot_id: int | None = None
    occurrence_threshold: int = 0
    expire_time: int = DEFAULT_EXPIRE_TIME_DAYS

    def __post_init__(self) -> None:
        if not self.name:
            self.name = str(self.slot_id)


class FeatureSlice(NamedTuple):
    """Columns ``[start, end)`` of ``feature_slot``'s rows."""

    feature_slot: "FeatureSlot"
    start: int
    end: int


class FeatureSlot:
    """One slot's table settings and the slices of its rows (the user's view of a hash table)."""

    def __init__(self, factory: "EmbeddingFactory", config: FeatureSlotConfig) -> None:
        self._factory = factory
        self.config = config
        self.slices: list[SliceConfig] = []
        self.named_slices: dict[str, FeatureSlice] = {}
        self.feature_columns: dict[str, FeatureColumn] = {}
        if config.has_bias:
            self._bias_slice = self.add_feature_slice(
                1, config.bias_initializer, config.bias_optimizer, config.bias_compressor,
                config.bias_learning_rate_fn)

    @property
    def slot(self) -> int:
        return int(self.config.slot_id)

    @property
    def name(self) -> str:
        return str(self.config.name)

    @property
    def dim(self) -> int:
        """Row width: the sum of the slice dims so far."""
        return sum(s.dim for s in self.slices)

    @property
    def slot_config(self) -> SlotConfig:
        return SlotConfig(self.slot, self.config.occurrence_threshold, self.config.expire_time)

    def add_feature_slice(
        self,
        dim_size: int,
        initializer: Initializer | None = None,
        optimizer: SliceOptimizer | None = None,
        compressor: Compressor | None = None,
        learning_rate_fn: Callable[[int], float] | None = None,
    ) -> FeatureSlice:
        """Appends ``dim_size`` columns updated by ``optimizer`` (slot defaults where None)."""
        start = self.dim
        try:
            config = SliceConfig(
                name=f"slice_{len(self.slices)}",
                dim=dim_size,
                initializer=initializer or self.config.default_vec_initializer,
                optimizer=optimizer or self.config.default_vec_optimizer,
                compressor=compressor or self.config.default_vec_compressor,
                learning_rate_fn=learning_rate_fn or self.config.default_vec_learning_rate_fn,
            )
        except ValueError as error:  # name what the user declared, not the slice's internal name
            raise ValueError(f"feature slot '{self.name}' (slot {self.slot}), slice {len(self.slices)} "
                             f"of dim {dim_size}: {error}") from None
        self.slices.append(config)
        self._factory._slice_added(self, config)
        return FeatureSlice(self, start, start + dim_size)

    def named_slice(self, name: str, dim_size: int, *args: Any) -> FeatureSlice:
        """Slice ``name`` of this slot, added with ``add_feature_slice(dim_size, *args)`` on first use.

        Slices outlive the model's per-run caches because the table keeps their columns.
        """
        if name not in self.named_slices:
            self.named_slices[name] = self.add_feature_slice(dim_size, *args)
        existing = self.named_slices[name]
        if existing.end - existing.start != dim_size:
            raise ValueError(f"slice '{name}' of slot '{self.name}' has dim {existing.end - existing.start}, "
                             f"asked for {dim_size}")
        return existing

    def get_bias_slice(self) -> FeatureSlice:
        if not self.config.has_bias:
            raise ValueError(f"feature slot '{self.name}' was created with has_bias=False")
        return self._bias_slice

    def signature(self) -> str:
        """Identifies slots whose rows are alike (same slices), which may share a merged table."""
        return json.dumps([s.describe() for s in self.slices], sort_keys=True, default=str)


class FeatureColumn:
    """A named input feature read through a :class:`FeatureSlot`, pooled by ``combiner``."""

    @classmethod
    def reduce_sum(cls) -> Combiner:
        return ReduceSum()

    @classmethod
    def reduce_mean(cls) -> Combiner:
        return ReduceMean()

    @classmethod
    def first_n(cls, seq_length: int) -> Combiner:
        return FirstN(seq_length)

    def __init__(self, feature_slot: FeatureSlot, feature_name: str, combiner: Combiner | None = None) -> None:
        self.feature_name = feature_name
        self.feature_slot = feature_slot
        self.combiner = combiner or self.reduce_sum()
        feature_slot.feature_columns[feature_name] = self

    def embedding_lookup(self, s: FeatureSlice) -> torch.Tensor:
        """This feature's pooled embedding of slice ``s`` for the current batch.

        ``[batch, dim]`` for sum/mean combiners, ``[batch, N, dim]`` for ``first_n(N)``.
        """
        if s.feature_slot is not self.feature_slot:
            raise ValueError(f"slice of slot '{s.feature_slot.name}' used with feature "
                             f"'{self.feature_name}' of slot '{self.feature_slot.name}'")
        return self.feature_slot._factory.lookup(self, s)


class EmbeddingFactory:
    """Creates feature slots, builds their tables and serves lookups for the current step.

    Args:
        use_native_multi_hash_table: one table per slot (Monolith's default); when False, slots
            with identical slices share one merged table (Monolith's ``MergedMultiTypeHashTable``),
            keyed by the FIDs' own slot bits.
        seed: seeds the tables' initializers.
        hashtable_init_capacity: when above 0, every table's ``initial_capacity`` (Monolith's
            ``CpuTrainingConfig.hashtable_init_capacity``), in place of the slots' own
            ``hashtable_config.initial_capacity``.
    """

    def __init__(
        self, use_native_multi_hash_table: bool = True, seed: int = 0, hashtable_init_capacity: int = 0
    ) -> None:
        self.use_native_multi_hash_table = use_native_multi_hash_table
        self.seed = seed
        self.hashtable_init_capacity = hashtable_init_capacity
        self.feature_slots: list[FeatureSlot] = []
        self.tables: dict[str, HashEmbedding] = {}
        self._table_of_slot: dict[int, HashEmbedding] = {}
        #: Wraps each table in its module: HashEmbedding, or a sharded module under torch.distributed.
        self.module_factory: Callable[[EmbeddingHashTable], HashEmbedding] = HashEmbedding
        self.built = False
        self._batch: Batch | None = None
        self._pooled_cache: dict[str, torch.Tensor] = {}
        #: Lookups of the current step already done together, by feature name (see begin_step).
        self._routed: dict[str, Any] = {}
        #: When set, :meth:`lookup` returns ``lookup_override(column, slice)`` instead of reading the
        #: tables: the exporter feeds the inputs of the dense serving program through it.
        self.lookup_override: Callable[[FeatureColumn, FeatureSlice], torch.Tensor] | None = None

    # ------------------------------------------------------------------ building
    def create_feature_slot(self, config: FeatureSlotConfig) -> FeatureSlot:
        """A new slot (its table is created by :meth:`build`, or at once after it)."""
        if config.slot_id is None:
            raise ValueError(f"feature slot '{config.name}' has no slot_id")
        for existing in self.feature_slots:
            if existing.slot == config.slot_id:
                raise ValueError(f"slot {config.slot_id} is already used by feature slot '{existing.name}'")
        slot = FeatureSlot(self, config)
        self.feature_slots.append(slot)
        return slot

    def _slice_added(self, slot: FeatureSlot, config: SliceConfig) -> None:
        # A slice added after the build pass widens the table the slot already has.
        table = self._table_of_slot.get(slot.slot)
        if table is not None:
            table.table.add_slice(config)

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
        )
        module = self.module_factory(table)
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

    # ------------------------------------------------------------------ per step
    def begin_step(self, batch: Batch | None) -> None:
        """Sets the batch that lookups read; clears the per-step cache of pooled rows.

        Where the tables do lookups better together (sharded tables: one exchange for every
        feature), the rows of every feature with a table are looked up here at once. Every declared
        feature is routed, with no ids where this batch lacks it: every rank then takes part in the
        same exchanges whatever features its own batch carries (reading a feature the batch lacks
        still raises, in :meth:`lookup`).
        """
        self._batch = batch
        self._pooled_cache = {}
        self._routed = {}
        module_type = type(next(iter(self.tables.values()), None))
        if batch is None or not getattr(module_type, "routes_lookups_together", False):
            return
        requests, names = [], []
        present = set(batch.sparse.keys())
        # Slot and column order is the model's declaration order: the same on every rank.
        for feature_slot in self.feature_slots:
            module = self._table_of_slot.get(feature_slot.slot)
            if module is None or module.table.dim != feature_slot.dim:
                continue
            for name in feature_slot.feature_columns:
                if name in present:
                    jagged = batch.sparse[name]
                    requests.append((module, jagged.values(), self._req_time_per_id(jagged)))
                else:
                    requests.append((module, _NO_IDS, None))
                names.append(name)
        self._routed = {name: routed for name, routed in zip(names, module_type.lookup_together(requests))
                        if name in present}

    @property
    def batch(self) -> Batch | None:
        """The batch the current step's lookups read."""
        return self._batch

    def lookup(self, column: FeatureColumn, s: FeatureSlice) -> torch.Tensor:
        """Pooled ``[batch, ...]`` embedding of ``column``'s slice ``s`` for the current batch."""
        if self.lookup_override is not None:
            return self.lookup_override(column, s)
        if self._batch is None:
            raise RuntimeError("embedding lookup outside a step: no batch has been set on the factory")
        pooled = self._pooled_cache.get(column.feature_name)
        if pooled is None:
            try:
                jagged: JaggedTensor = self._batch.sparse[column.feature_name]
            except KeyError:
                raise KeyError(f"feature '{column.feature_name}' is not in the batch; sparse features: "
                               f"{self._batch.sparse.keys()}") from None
            pooled = self._pooled(column, jagged)
        return pooled[..., s.start : s.end]

    def _pooled(self, column: FeatureColumn, jagged: JaggedTensor) -> torch.Tensor:
        """All columns of one feature's rows pooled by its combiner, kept for the step's other lookups of
        the feature: its slices are views of it (pooling is column by column, so the values are those of
        each slice pooled alone)."""
        module = self._table_of_slot.get(column.feature_slot.slot)
        if module is None or module.table.dim != column.feature_slot.dim:
            # Build pass (or a slot first seen now): zeros of the final shape, no table access.
            return column.combiner(torch.zeros(jagged.values().numel(), column.feature_slot.dim), jagged.lengths())
        routed = self._routed.pop(column.feature_name, None)
        if routed is not None:
            rows = module(jagged.values(), routed=routed)
        else:
            rows = module(jagged.values(), req_time=self._req_time_per_id(jagged))
        pooled = self._pooled_cache[column.feature_name] = column.combiner(rows, jagged.lengths())
        return pooled

    def _req_time_per_id(self, jagged: JaggedTensor) -> torch.Tensor | None:
        req_time = self._batch.dense.get("req_time") if self._batch is not None else None
        if req_time is None:
            return None
        times, lengths = req_time.reshape(-1).to(torch.int64), jagged.lengths()
        if times.device.type == "cpu":  # numpy repeats a batch's few hundred times at a fraction of torch's cost
            return torch.from_numpy(np.repeat(times.numpy(), lengths.numpy()))
        return torch.repeat_interleave(times, lengths)

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

    def apply_gradients(self, global_step: int, scale: float = 1.0, dedup: str = "local") -> None:
        """Applies every table's pending gradients (times ``scale``)."""
        modules = list(self.tables.values())
        if modules:
            type(modules[0]).apply_gradients_together(modules, global_step, scale, dedup)

    def discard_gradients(self) -> None:
        """Drops pending gradients (a step that was not applied)."""
        for module in self.tables.values():
            module.discard_gradients()

    def train(self, mode: bool = True) -> None:
        for module in self.tables.values():
            module.train(mode)

    def state_dict(self) -> dict[str, dict[str, Any]]:
        """Every table's state, by table name."""
        return {name: module.table.state_dict() for name, module in self.tables.items()}

    def load_state_dict(self, state: dict[str, dict[str, Any]], source: str = "checkpoint") -> None:
        """Restores tables by name; a table of this model missing from ``state`` is an error."""
        missing = sorted(set(self.tables) - set(state))
        if missing:
            raise ValueError(f"{source}: no state for embedding tables {missing} (has {sorted(state)})")
        for name, module in self.tables.items():
            module.table.load_state_dict(state[name], source=f"{source}:{name}")
