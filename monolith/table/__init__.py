"""Collisionless embedding tables: the FID map, occurrence filter, expiry and the table itself."""

from monolith.table.config import SliceConfig, SlidingHashFilterConfig, SlotConfig
from monolith.table.embedding_table import EmbeddingHashTable
from monolith.table.hash_map import FidMap
from monolith.table.occurrence_filter import OccurrenceFilter

__all__ = ["EmbeddingHashTable", "FidMap", "OccurrenceFilter", "SliceConfig", "SlidingHashFilterConfig",
           "SlotConfig"]
