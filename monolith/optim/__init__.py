"""Per-slice embedding optimizers, initializers, compressors and learning-rate schedules (Monolith's)."""

from monolith.optim.base import Compressor, Initializer, SliceOptimizer
from monolith.optim.compressors import FixedR8Compressor, Fp16Compressor, Fp32Compressor
from monolith.optim.initializers import ConstantsInitializer, RandomUniformInitializer, ZerosInitializer
from monolith.optim.learning_rate import LearningRateFunction, PolynomialDecay
from monolith.optim.optimizers import (
    AdadeltaOptimizer,
    AdaGradWithGroupLassoOptimizer,
    AdagradOptimizer,
    AdamOptimizer,
    AmsgradOptimizer,
    FtrlOptimizer,
    GroupAdaGradOptimizer,
    MomentumOptimizer,
    MovingAverageOptimizer,
    RmspropOptimizer,
    RmspropV2Optimizer,
    SgdOptimizer,
    make_optimizer,
)

__all__ = [
    "AdaGradWithGroupLassoOptimizer",
    "AdadeltaOptimizer",
    "AdagradOptimizer",
    "AdamOptimizer",
    "AmsgradOptimizer",
    "Compressor",
    "ConstantsInitializer",
    "FixedR8Compressor",
    "Fp16Compressor",
    "Fp32Compressor",
    "FtrlOptimizer",
    "GroupAdaGradOptimizer",
    "Initializer",
    "LearningRateFunction",
    "MomentumOptimizer",
    "MovingAverageOptimizer",
    "PolynomialDecay",
    "RandomUniformInitializer",
    "RmspropOptimizer",
    "RmspropV2Optimizer",
    "SgdOptimizer",
    "SliceOptimizer",
    "ZerosInitializer",
    "make_optimizer",
]
