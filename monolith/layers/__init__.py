"""Monolith's layer library (``monolith.native_training.layers``) as torch modules.

Each layer keeps Monolith's constructor arguments and defaults, ``params()`` (``Layer.params()``
then ``p.instantiate()``), activations and initialisers by name (Keras's, so a ported model starts
where Monolith's starts), and infers input sizes on its first call as Keras does. The modules
follow Monolith's files: ``dense``, ``mlp``, ``add_bias``, ``lhuc``, ``logit_correction``,
``norms``, ``pooling``, ``multi_task``, ``feature_cross``, ``feature_trans``, ``feature_seq``,
``agru``, with ``activations`` (Monolith's ``advanced_activations``), ``initializers`` and
``regularizers`` (Keras's) and ``utils`` (``MergeType``, ``DCNType``).
"""

from monolith.layers.activations import (ELU, Exponential, Gelu, HardSigmoid, LeakyReLU, Linear, PReLU, ReLU,
                                         Selu, Sigmoid, Sigmoid2, Softmax, Softplus, Softsign, Swish, Tanh,
                                         ThresholdedReLU)
from monolith.layers.add_bias import AddBias
from monolith.layers.agru import AGRUCell
from monolith.layers.dense import Dense
from monolith.layers.feature_cross import CAN, CIN, DCN, AllInt, CDot, GroupInt
from monolith.layers.feature_seq import DIEN, DIN, DMR_U2I
from monolith.layers.feature_trans import AutoInt, SeNet, iRazor
from monolith.layers.layer import Layer
from monolith.layers.lhuc import LHUCTower
from monolith.layers.logit_correction import LogitCorrection
from monolith.layers.mlp import MLP
from monolith.layers.multi_task import SNR, MMoE
from monolith.layers.norms import GradNorm, LayerNorm
from monolith.layers.pooling import AvgPooling, MaxPooling, SumPooling
from monolith.layers.utils import DCNType, MergeType

__all__ = [
    "AGRUCell", "AllInt", "AutoInt", "CAN", "CDot", "CIN", "DCN", "DIEN", "DIN", "DMR_U2I", "GroupInt", "MMoE",
    "SNR", "SeNet", "iRazor", "AddBias", "AvgPooling", "DCNType", "Dense", "ELU", "Exponential", "Gelu", "GradNorm", "HardSigmoid",
    "LHUCTower", "Layer", "LayerNorm", "LeakyReLU", "Linear", "LogitCorrection", "MLP", "MaxPooling",
    "MergeType", "PReLU", "ReLU", "Selu", "Sigmoid", "Sigmoid2", "Softmax", "Softplus", "Softsign",
    "SumPooling", "Swish", "Tanh", "ThresholdedReLU",
]
