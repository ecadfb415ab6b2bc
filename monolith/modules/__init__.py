"""PyTorch modules of Monolith's embeddings: combiners, the table lookup and
:class:`EmbeddingBagCollection` (TorchRec's interface over hash tables)."""

from monolith.modules.combiners import Combiner, FirstN, ReduceMean, ReduceSum, make_combiner
from monolith.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from monolith.modules.embedding_modules import EmbeddingBagCollection

__all__ = ["Combiner", "EmbeddingBagCollection", "EmbeddingBagConfig", "FirstN", "PoolingType", "ReduceMean",
           "ReduceSum", "make_combiner"]
