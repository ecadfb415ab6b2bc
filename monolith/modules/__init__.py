"""PyTorch modules of Monolith's embeddings: combiners, the table lookup and
:class:`EmbeddingBagCollection` (TorchRec's interface over hash tables). A Monolith model's
feature slots and their tables are :mod:`monolith.modules.feature_slot_collection`'s
``FeatureSlotCollection`` (not imported here: it builds on :mod:`monolith.feature`, which uses
the combiners above)."""

from monolith.modules.combiners import Combiner, FirstN, ReduceMean, ReduceSum, make_combiner
from monolith.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from monolith.modules.embedding_modules import EmbeddingBagCollection

__all__ = ["Combiner", "EmbeddingBagCollection", "EmbeddingBagConfig", "FirstN", "PoolingType", "ReduceMean",
           "ReduceSum", "make_combiner"]
