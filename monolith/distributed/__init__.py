"""Synchronous multi-process training on torch.distributed: sharded tables, replicated dense.

The sharded tables (which bring the tables, optimizers and modules with them) are imported on first
use, so that what needs only the rank protocol or the FID routing (serving, the data readers) does
not load the training stack.
"""

from typing import Any

from monolith.distributed.context import DistributedContext, SingleProcessContext, get_rank, get_world_size, init_from_env
from monolith.distributed.routing import shard_of

__all__ = ["DistributedContext", "ShardedHashEmbedding", "SingleProcessContext", "get_rank", "get_world_size", "init_from_env",
           "shard_of", "table_state_for_rank"]

_SHARDED = ("ShardedHashEmbedding", "table_state_for_rank")


def __getattr__(name: str) -> Any:
    if name in _SHARDED:
        from monolith.distributed import sharded_embedding

        return getattr(sharded_embedding, name)
    raise AttributeError(f"module 'monolith.distributed' has no attribute {name!r}")
