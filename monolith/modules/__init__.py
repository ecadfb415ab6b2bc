"""PyTorch modules of Monolith's embeddings: combiners, the table lookup and
:class:`EmbeddingBagCollection` (TorchRec's interface over hash tables). A Monolith model's
feature slots and their tables are :mod:`monolith.modules.feature_slot_collection`'s
``FeatureSlotCollection`` (not imported here: it builds on :mod:`monolith.feature`, which uses
the combiners above).

The collection and its configs (which bring the tables and optimizers with them) are imported on
first use, so that serving, which needs only the combiners, does not load the training stack.
"""

from typing import Any

from monolith.modules.combiners import Combiner, FirstN, ReduceMean, ReduceSum, make_combiner

__all__ = ["Combiner", "EmbeddingBagCollection", "EmbeddingBagConfig", "FirstN", "PoolingType", "ReduceMean",
           "ReduceSum", "make_combiner"]

_LAZY = {"EmbeddingBagCollection": "embedding_modules", "EmbeddingBagConfig": "embedding_configs",
         "PoolingType": "embedding_configs"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"monolith.modules.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'monolith.modules' has no attribute {name!r}")
