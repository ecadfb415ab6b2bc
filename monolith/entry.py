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
from monolith.table.config import CuckooHashTableConfig, GpucucoHashTableConfig, HashTableConfig


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
