"""Table configs of :class:`~monolith.modules.EmbeddingBagCollection`, named as TorchRec's
``embedding_configs`` names them, plus this project's per-table options.

A table here is a collisionless hash table: any int64 id gets its own row, created by the first
update that passes the occurrence filter, so ``num_embeddings`` is a capacity hint, not a bound.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, Callable

from monolith.optim.base import Initializer, SliceOptimizer
from monolith.optim.initializers import RandomUniformInitializer
from monolith.optim.optimizers import AdagradOptimizer
from monolith.table.config import DEFAULT_EXPIRE_TIME_DAYS

__all__ = ["EmbeddingBagConfig", "PoolingType"]


class PoolingType(enum.Enum):
    """How the ids of one example (a bag) are pooled: their sum or their mean."""

    SUM = "SUM"
    MEAN = "MEAN"


def _adagrad_like_torch() -> SliceOptimizer:
    """``torch.optim.Adagrad``'s defaults: learning rate 0.01, accumulator starting at 0."""
    return AdagradOptimizer(learning_rate=0.01, initial_accumulator_value=0.0)


@dataclasses.dataclass(kw_only=True)
class EmbeddingBagConfig:
    """One pooled embedding table read by one or more features.

    Args:
        name: the table's name (its key in ``state_dict`` and in ``embedding_bags``).
        embedding_dim: width of every row.
        feature_names: the features (keys of the input ``KeyedJaggedTensor``) looked up in this table.
        num_embeddings: ids the table holds before it first grows (memory reserved when it is built);
            0 reserves nothing. Unlike TorchRec, ids are not bounded by it.
        pooling: :attr:`PoolingType.SUM` or :attr:`PoolingType.MEAN` (or their names); an example
            without ids pools to zeros.
        occurrence_threshold: an id gets a row on its (T+1)-th occurrence; until then its lookups
            give zeros and its updates are dropped (Monolith's feature filter).
        expire_time: days without an update after which an id's row is evicted (on ``evict()`` of
            the table).
        optimizer: the sparse update rule of this table's rows (default: ``torch.optim.Adagrad``'s
            defaults, learning rate 0.01 and accumulator 0).
        initializer: fills a row when its id is admitted (default: uniform in [-0.05, 0.05]). An id
            without a row looks up zeros, as in Monolith: the initial row is first read after its
            first update.
        learning_rate_fn: maps the collection's update count to this table's learning rate (None:
            the optimizer's own).
    """

    name: str
    embedding_dim: int
    feature_names: list[str]
    num_embeddings: int = 0
    pooling: PoolingType | str = PoolingType.SUM
    occurrence_threshold: int = 0
    expire_time: int = DEFAULT_EXPIRE_TIME_DAYS
    optimizer: SliceOptimizer = dataclasses.field(default_factory=_adagrad_like_torch)
    initializer: Initializer = dataclasses.field(default_factory=RandomUniformInitializer)
    learning_rate_fn: Callable[[int], float] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or "." in self.name:
            raise ValueError(f"EmbeddingBagConfig.name must be a non-empty str without '.', got {self.name!r}")
        if isinstance(self.embedding_dim, bool) or not isinstance(self.embedding_dim, int) or self.embedding_dim < 1:
            raise ValueError(f"EmbeddingBagConfig '{self.name}': embedding_dim must be an int >= 1, "
                             f"got {self.embedding_dim!r}")
        if isinstance(self.feature_names, str) or not self.feature_names or not all(
                isinstance(f, str) for f in self.feature_names):
            raise ValueError(f"EmbeddingBagConfig '{self.name}': feature_names must be a non-empty list of str, "
                             f"got {self.feature_names!r}")
        self.feature_names = list(self.feature_names)
        if len(set(self.feature_names)) != len(self.feature_names):
            raise ValueError(f"EmbeddingBagConfig '{self.name}': feature_names repeat a name: {self.feature_names}")
        self.pooling = _pooling(self.pooling, self.name)

    @classmethod
    def from_torchrec(cls, config: Any, **options: Any) -> "EmbeddingBagConfig":
        """This config for a TorchRec ``EmbeddingBagConfig`` (its name, dim, features, size and
        pooling), with this project's ``options`` (``occurrence_threshold``, ``optimizer``, ...)."""
        return cls(name=config.name, embedding_dim=config.embedding_dim, feature_names=list(config.feature_names),
                   num_embeddings=config.num_embeddings, pooling=config.pooling, **options)


def _pooling(pooling: Any, table: str) -> PoolingType:
    """``pooling`` as a :class:`PoolingType`; TorchRec's enum is read by its value."""
    name = getattr(pooling, "value", pooling)
    if isinstance(name, str) and name.upper() in PoolingType.__members__:
        return PoolingType[name.upper()]
    raise ValueError(f"EmbeddingBagConfig '{table}': pooling must be SUM or MEAN, got {pooling!r} "
                     f"(unpooled sequences are not supported)")
