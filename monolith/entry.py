"""Monolith's ``entry`` module: the public names of embedding optimizers, initializers and compressors.

Model code written against ``monolith.native_training.entry`` imports these names unchanged.
"""

from monolith.optim import (
    AdadeltaOptimizer,
    AdaGradWithGroupLassoOptimizer,
    AdagradOptimizer,
    AdamOptimizer,
    AmsgradOptimizer,
    Compressor,
    ConstantsInitializer,
    FixedR8Compressor,
    Fp16Compressor,
    Fp32Compressor,
    FtrlOptimizer,
    GroupAdaGradOptimizer,
    Initializer,
    MomentumOptimizer,
    MovingAverageOptimizer,
    RandomUniformInitializer,
    RmspropOptimizer,
    RmspropV2Optimizer,
    SgdOptimizer,
    ZerosInitializer,
)
from monolith.optim.base import SliceOptimizer as Optimizer


class HashTableConfig:
    """Base of the table-kind configs; every kind maps onto :class:`monolith.table.EmbeddingHashTable`."""


class CuckooHashTableConfig(HashTableConfig):
    """Monolith's default CPU table; here the collisionless numba table. Arguments are accepted and ignored."""

    def __init__(self, initial_capacity: int = 1, feature_evict_every_n_hours: int = 0) -> None:
        self.initial_capacity = initial_capacity
        self.feature_evict_every_n_hours = feature_evict_every_n_hours


class GpucucoHashTableConfig(CuckooHashTableConfig):
    """Monolith's GPU table; tables live in host memory here, so it is the same table."""


__all__ = [
    "AdaGradWithGroupLassoOptimizer",
    "AdadeltaOptimizer",
    "AdagradOptimizer",
    "AdamOptimizer",
    "AmsgradOptimizer",
    "Compressor",
    "ConstantsInitializer",
    "CuckooHashTableConfig",
    "FixedR8Compressor",
    "Fp16Compressor",
    "Fp32Compressor",
    "FtrlOptimizer",
    "GpucucoHashTableConfig",
    "GroupAdaGradOptimizer",
    "HashTableConfig",
    "Initializer",
    "MomentumOptimizer",
    "MovingAverageOptimizer",
    "Optimizer",
    "RandomUniformInitializer",
    "RmspropOptimizer",
    "RmspropV2Optimizer",
    "SgdOptimizer",
    "ZerosInitializer",
]
