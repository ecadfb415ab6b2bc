"""Per-slice embedding optimizers, initializers, compressors and learning-rate schedules (Monolith's)."""

from monolith.optim.base import Compressor, Initializer, SliceOptimizer
from monolith.optim.compressors import (
    FixedR8Compressor,
    Fp16Compressor,
    Fp32Compressor,
    HashNetQuantizer,
    OneBitCompressor,
)
from monolith.optim.initializers import (
    BatchSoftmaxInitializer,
    ConstantsInitializer,
    RandomUniformInitializer,
    ZerosInitializer,
)
from monolith.optim.learning_rate import LearningRateFunction, PolynomialDecay
from monolith.optim.optimizers import (
    AdadeltaOptimizer,
    AdaGradWithGroupLassoOptimizer,
    AdagradOptimizer,
    AdamOptimizer,
    AmsgradOptimizer,
    BatchSoftmaxOptimizer,
    DynamicWdAdagradOptimizer,
    FtrlOptimizer,
    FTRLWithGroupSparsityOptimizer,
    GroupAdaGradOptimizer,
    MomentumOptimizer,
    MovingAverageOptimizer,
    RmspropOptimizer,
    RmspropV2Optimizer,
    SgdOptimizer,
    StochasticRoundingFloat16OptimizerWrapper,
)
from monolith.optim.registry import from_config, make_optimizer

__all__ = [
    "AdaGradWithGroupLassoOptimizer",
    "AdadeltaOptimizer",
    "AdagradOptimizer",
    "AdamOptimizer",
    "AmsgradOptimizer",
    "BatchSoftmaxInitializer",
    "BatchSoftmaxOptimizer",
    "Compressor",
    "ConstantsInitializer",
    "DynamicWdAdagradOptimizer",
    "FTRLWithGroupSparsityOptimizer",
    "FixedR8Compressor",
    "Fp16Compressor",
    "Fp32Compressor",
    "FtrlOptimizer",
    "GroupAdaGradOptimizer",
    "HashNetQuantizer",
    "Initializer",
    "LearningRateFunction",
    "MomentumOptimizer",
    "MovingAverageOptimizer",
    "OneBitCompressor",
    "PolynomialDecay",
    "RandomUniformInitializer",
    "RmspropOptimizer",
    "RmspropV2Optimizer",
    "SgdOptimizer",
    "SliceOptimizer",
    "StochasticRoundingFloat16OptimizerWrapper",
    "ZerosInitializer",
    "from_config",
    "make_optimizer",
]
