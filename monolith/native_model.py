"""Monolith's ``native_model`` import path: ``from monolith.native_model import MonolithModel`` etc.

Monolith's module also star-imports ``entry`` and ``feature``, so their names are here too. See
``docs/porting_guide.md`` for what each name is on this stack.
"""

from monolith.device import DeviceCtxType, MonolithDeviceCtx
from monolith.entry import *  # noqa: F403 - Monolith's module star-imports entry
from monolith.entry import __all__ as _entry_names
from monolith.export import ServingInputReceiver
from monolith.feature import FeatureColumn, FeatureSlice, FeatureSlot, FeatureSlotConfig
from monolith.layers.logit_correction import LogitCorrection
from monolith.losses import get_sigmoid_loss_and_pred, get_softmax_loss_and_pred
from monolith.fid_transforms import switch_slot, switch_slot_batch
from monolith.model import MonolithBaseModel, MonolithModel
from monolith.modules.combiners import Combiner, FirstN
from monolith.spec import EstimatorSpec

__all__ = [
    *_entry_names,
    "DeviceCtxType",
    "EstimatorSpec",
    "FeatureColumn",
    "FeatureSlice",
    "FeatureSlot",
    "FeatureSlotConfig",
    "LogitCorrection",
    "MonolithBaseModel",
    "MonolithDeviceCtx",
    "MonolithModel",
    "ServingInputReceiver",
    "get_sigmoid_loss_and_pred",
    "get_softmax_loss_and_pred",
    "switch_slot",
    "switch_slot_batch",
    "Combiner",
    "FirstN",
]
