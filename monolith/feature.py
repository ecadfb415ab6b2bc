"""Feature slots, columns and slices: the user's view of the embedding tables.

* :class:`FeatureSlot` -- one slot's table settings (occurrence threshold, expire time) and the
  slices of its rows; features sharing an embedding share a slot.
* :class:`FeatureSlice` -- columns ``[start, end)`` of a slot's rows, with their own initializer,
  optimizer, compressor and learning-rate function.
* :class:`FeatureColumn` -- a named input feature read through a slot, with a combiner that pools
  the ids of each example (``reduce_sum``, ``reduce_mean``, ``first_n``).
* :class:`FeatureFactory` -- the factory a task's ``model_fn`` declares slots with on every step
  (Monolith's ``ctx.feature_factory``): each declaration after the first returns the same slot and
  slices, so the slots are created once.

These are declarations only: :class:`~monolith.modules.feature_slot_collection.FeatureSlotCollection`
builds the tables behind the slots and serves the lookups of each step (``with collection.step(batch):``).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from typing import Any, Callable, NamedTuple

import torch

from monolith.modules.combiners import Combiner, FirstN, ReduceMean, ReduceSum
from monolith.modules.embedding_step import current_step
from monolith.optim.base import Compressor, Initializer, SliceOptimizer
from monolith.optim.compressors import Fp16Compressor, Fp32Compressor
from monolith.optim.initializers import RandomUniformInitializer, ZerosInitializer
from monolith.optim.optimizers import AdagradOptimizer, FtrlOptimizer
from monolith.table import SliceConfig, SlotConfig
from monolith.table.config import DEFAULT_EXPIRE_TIME_DAYS, CuckooHashTableConfig, HashTableConfig


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
    """One slot's table settings and the slices of its rows (the user's view of a hash table).

    A slice added once the table exists widens the table at the slot's next lookup.
    """

    def __init__(self, config: FeatureSlotConfig) -> None:
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
        """This feature's pooled embedding of slice ``s`` in the running step (``with collection.step(batch):``,
        which running ``model_fn`` opens).

        ``[batch, dim]`` for sum/mean combiners, ``[batch, N, dim]`` for ``first_n(N)``.
        """
        return embedding_lookups([(self, s)])[0]


def embedding_lookups(requests: list[tuple[FeatureColumn, FeatureSlice]]) -> list[torch.Tensor]:
    """:meth:`FeatureColumn.embedding_lookup` of each ``(column, slice)``, the features looked up together
    (one autograd step where their tables allow)."""
    for column, s in requests:
        if s.feature_slot is not column.feature_slot:
            raise ValueError(f"slice of slot '{s.feature_slot.name}' used with feature "
                             f"'{column.feature_name}' of slot '{column.feature_slot.name}'")
    step = current_step()
    if step is None:
        names = ", ".join(f"'{column.feature_name}'" for column, _ in requests)
        raise RuntimeError(f"embedding lookup of feature {names} outside a step: look features up "
                           f"inside model_fn, or inside `with collection.step(batch):`")
    return step.lookup_many(requests)


class DeclaredSlot:
    """A slot as one ``create_feature_slot`` call of a task's ``model_fn`` sees it: its n-th
    ``add_feature_slice`` is the slot's n-th slice, added on the first step and the same one on
    every later step (``model_fn`` runs every step; Monolith's runs once to build a graph)."""

    def __init__(self, feature_slot: FeatureSlot) -> None:
        self.feature_slot = feature_slot
        self._declared = 0

    @property
    def name(self) -> str:
        return self.feature_slot.name

    def add_feature_slice(self, dim_size: int, initializer: Initializer | None = None,
                          optimizer: SliceOptimizer | None = None, compressor: Compressor | None = None,
                          learning_rate_fn: Callable[[int], float] | None = None) -> FeatureSlice:
        """The slot's next slice: created with these settings on the first step, the same afterwards
        (a different ``dim_size`` than the first step's raises ``ValueError``)."""
        self._declared += 1
        return self.feature_slot.named_slice(f"declared_{self._declared}", dim_size, initializer, optimizer,
                                             compressor, learning_rate_fn)

    def get_bias_slice(self) -> FeatureSlice:
        return self.feature_slot.get_bias_slice()


class FeatureFactory:
    """Monolith's ``ctx.feature_factory`` for tasks: :meth:`create_feature_slot` by config name,
    once, on the tables of ``embeddings()`` (the model's :class:`~monolith.modules.feature_slot_collection.FeatureSlotCollection`)."""

    def __init__(self, embeddings: Callable[[], Any]) -> None:
        self._embeddings = embeddings

    def create_feature_slot(self, config: FeatureSlotConfig) -> DeclaredSlot:
        """The slot named ``config.name``: created on the first call (a config without ``slot_id``
        gets the lowest free slot), the same slot on every later call."""
        embeddings = self._embeddings()
        for existing in embeddings.feature_slots:
            if existing.name == config.name:
                return DeclaredSlot(existing)
        if config.slot_id is None:
            used = {fs.slot for fs in embeddings.feature_slots}
            config = dataclasses.replace(config, slot_id=next(s for s in itertools.count(1) if s not in used))
        return DeclaredSlot(embeddings.create_feature_slot(config))


class FeatureColumnV1(FeatureColumn):
    """Monolith's ``FeatureColumnV1(slot, fc_name, combiner)``: a :class:`FeatureColumn` of a slot
    that a task's ``model_fn`` declared (a :class:`DeclaredSlot`) or of a :class:`FeatureSlot`."""

    def __init__(self, feature_slot: DeclaredSlot | FeatureSlot, fc_name: str, combiner: Combiner | None = None) -> None:
        if isinstance(feature_slot, DeclaredSlot):
            feature_slot = feature_slot.feature_slot
        super().__init__(feature_slot, fc_name, combiner)
