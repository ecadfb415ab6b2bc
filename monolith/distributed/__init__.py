"""Synchronous multi-process training on torch.distributed: sharded tables, replicated dense."""

from monolith.distributed.context import DistributedContext, SingleProcessContext, get_rank, get_world_size, init_from_env
from monolith.distributed.routing import shard_of
from monolith.distributed.sharded_embedding import ShardedHashEmbedding, table_state_for_rank

__all__ = ["DistributedContext", "ShardedHashEmbedding", "SingleProcessContext", "get_rank", "get_world_size", "init_from_env",
           "shard_of", "table_state_for_rank"]
