"""Plain configuration records of embedding tables: slices, slots and the table kind.

Kept apart from the table itself (as TorchRec keeps ``EmbeddingBagConfig`` apart from its modules)
so configs can be dumped, compared between ranks and rebuilt without touching any rows.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from monolith.fid import MAX_SLOT_V2
from monolith.optim.base import Compressor, Initializer, SliceOptimizer

DEFAULT_EXPIRE_TIME_DAYS = 36500


def default_initializer() -> Initializer:
    """Monolith's default for vector slices: RandomUniform(-0.05, 0.05)."""
    from monolith.optim.initializers import RandomUniformInitializer

    return RandomUniformInitializer(-0.05, 0.05)


def default_optimizer() -> SliceOptimizer:
    """Monolith's default for vector slices: Adagrad with initial accumulator 1.0."""
    from monolith.optim.optimizers import AdagradOptimizer

    return AdagradOptimizer(initial_accumulator_value=1.0)


def default_compressor() -> Compressor:
    """Monolith's default serving compressor for vector slices: Fp16."""
    from monolith.optim.compressors import Fp16Compressor

    return Fp16Compressor()


@dataclasses.dataclass
class SliceConfig:
    """One embedding slice: ``dim`` columns of every row, with their own update rule.

    ``optimizer`` may also be given by Monolith's name for it (``"adagrad"``, ``"ftrl"``, ...: its
    defaults). ``learning_rate_fn`` maps the global step to this slice's learning rate; when None the
    optimizer's learning rate is used (warmed up over ``warmup_steps`` where the optimizer has them).
    """

    name: str
    dim: int
    initializer: Initializer = dataclasses.field(default_factory=default_initializer)
    optimizer: SliceOptimizer = dataclasses.field(default_factory=default_optimizer)
    compressor: Compressor = dataclasses.field(default_factory=default_compressor)
    learning_rate_fn: Callable[[int], float] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.dim, int) or self.dim <= 0:
            raise ValueError(f"slice '{self.name}': dim must be a positive int, got {self.dim!r}")
        if isinstance(self.optimizer, str):  # a proto name, e.g. "adagrad", with entry.py's defaults
            from monolith.optim.registry import make_optimizer

            self.optimizer = make_optimizer(self.optimizer)
        for field, kind in (("initializer", Initializer), ("optimizer", SliceOptimizer), ("compressor", Compressor)):
            value = getattr(self, field)
            if not isinstance(value, kind):
                raise ValueError(f"slice '{self.name}': {field} must be a {kind.__name__}, got {value!r}")

    def learning_rate(self, global_step: int) -> float:
        """This slice's learning rate at ``global_step``.

        An explicit ``learning_rate_fn`` wins; otherwise ``warmup_steps > 0`` ramps the rate
        linearly from 0 at step 0 to the optimizer's rate (Monolith's PolynomialDecay warm-up).
        """
        if self.learning_rate_fn is not None:
            return float(self.learning_rate_fn(global_step))
        base = self.optimizer.learning_rate
        warmup = getattr(self.optimizer, "warmup_steps", 0) or 0
        if warmup > 0:
            from monolith.optim.learning_rate import PolynomialDecay

            return float(PolynomialDecay(0.0, warmup, end_learning_rate=base)(global_step))
        return float(base)

    def describe(self) -> dict[str, Any]:
        """Plain-data description (no learning-rate function, which is code)."""
        return {
            "name": self.name,
            "dim": self.dim,
            "initializer": self.initializer.config(),
            "optimizer": self.optimizer.config(),
            "compressor": self.compressor.config(),
            "has_learning_rate_fn": self.learning_rate_fn is not None,
        }


@dataclasses.dataclass(frozen=True)
class SlotConfig:
    """Admission and eviction settings of one slot (Monolith's ``FeatureSlotConfig``).

    A FID is admitted on its (``occurrence_threshold`` + 1)-th occurrence and evicted once it has
    not been updated for ``expire_time`` days.
    """

    slot: int
    occurrence_threshold: int = 0
    expire_time: int = DEFAULT_EXPIRE_TIME_DAYS

    def __post_init__(self) -> None:
        if not 0 <= self.slot <= MAX_SLOT_V2:
            raise ValueError(f"slot {self.slot} out of range 0..{MAX_SLOT_V2}")
        if self.occurrence_threshold < 0:
            raise ValueError(f"slot {self.slot}: occurrence_threshold must be >= 0, got {self.occurrence_threshold}")
        if self.expire_time <= 0:
            raise ValueError(f"slot {self.slot}: expire_time must be > 0 days, got {self.expire_time}")


@dataclasses.dataclass(frozen=True)
class SlidingHashFilterConfig:
    """Monolith's bounded occurrence filter (its ``SlidingHashFilter``) for a table, in place of the
    exact one; see :class:`~monolith.table.sliding_hash_filter.SlidingHashFilter`.

    Args:
        capacity: ids the filter counts before it forgets the oldest (Monolith's ``filter_capacity``,
            300,000,000 there for a whole parameter server; here per table, and per rank's shard of
            a sharded table). At least 300, as Monolith raises it to.
        split_num: splits the capacity is divided into (Monolith's ``filter_split_num``, 7): one
            fills at a time, each holding ``capacity / (split_num - 1)`` ids, and ids not seen in
            the last ``split_num - 2`` splits count again from zero. At least 5, as in Monolith.

    Memory is fixed: ``split_num * (int(1.2 * capacity / (split_num - 1)) + 64)`` 16-bit cells, each
    a 12-bit id signature and a 4-bit count (Monolith's ``count_bit = 4``), so counts saturate at
    :data:`COUNTER_MAX` (15) and thresholds above 15 are refused. Ids sharing a signature near one
    place share a count, and an id finding no free cell passes: both admit ids early, never late.
    """

    capacity: int
    split_num: int = 7

    def __post_init__(self) -> None:
        for name, least in (("capacity", 300), ("split_num", 5)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"SlidingHashFilterConfig.{name} must be an int >= {least}, got {value!r}")

    @property
    def split_capacity(self) -> int:
        """Ids one split holds before the next one starts (Monolith's ``get_split_capacity``)."""
        return self.capacity // (self.split_num - 1)

    @property
    def split_cells(self) -> int:
        """Cells of one split: its capacity at Monolith's fill rate 1.2, plus the probe overhang."""
        return int(self.split_capacity * 1.2) + 64

    def describe(self) -> dict[str, Any]:
        """Plain data, as checkpoints record it."""
        return {"capacity": self.capacity, "split_num": self.split_num}


#: Largest count a 4-bit counter of :class:`SlidingHashFilterConfig` holds (Monolith's ``max_count()``).
COUNTER_MAX = 15


class HashTableConfig:
    """Base of Monolith's table-kind configs; every kind maps onto :class:`~monolith.table.EmbeddingHashTable`."""

    initial_capacity: int = 0


class CuckooHashTableConfig(HashTableConfig):
    """Monolith's default CPU table; here the collisionless numba table.

    Args:
        initial_capacity: ids the table holds before it first grows; their map slots and rows are
            allocated when the table is built (see :class:`~monolith.table.EmbeddingHashTable`).
        feature_evict_every_n_hours: accepted and ignored; expiry runs when the trainer asks for it
            (:class:`~monolith.streaming.ParameterSync`'s ``evict_interval_s``, or ``evict()`` of a table).
    """

    def __init__(self, initial_capacity: int = 1, feature_evict_every_n_hours: int = 0) -> None:
        if isinstance(initial_capacity, bool) or not isinstance(initial_capacity, int) or initial_capacity < 0:
            raise ValueError(f"{type(self).__name__}: initial_capacity must be an int >= 0, got {initial_capacity!r}")
        self.initial_capacity = initial_capacity
        self.feature_evict_every_n_hours = feature_evict_every_n_hours


class GpucucoHashTableConfig(CuckooHashTableConfig):
    """Monolith's GPU table; tables live in host memory here, so it is the same table."""
