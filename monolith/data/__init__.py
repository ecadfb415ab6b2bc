"""Data sources yielding :class:`~monolith.sparse.Batch`: file readers, a synthetic click log, MovieLens.

Every reader follows the contract of :mod:`monolith.data.base`: an iterable of ``Batch`` with FIDs
in ``batch.sparse``, float32 ``batch.dense["label"]`` ``[batch]``, fixed ``batch_size``, malformed
records skipped and counted (``bad_records``, ``num_bad_records``) or raised with ``strict=True``.
"""

from monolith.data.base import MAX_BAD_RECORDS_KEPT, Reader, rebatch
from monolith.data.dataset import AUTOTUNE, Dataset, TensorSpec, advanced_parse, to_ragged
from monolith.data.criteo import CRITEO_DENSE, CRITEO_SPARSE, CriteoReader
from monolith.data.libsvm import LIBSVM_FIELD, LibSvmReader
from monolith.data.movielens import (MOVIELENS_SLOTS, MovieLens100K, MovieLensSplit, load_movielens100k,
                                     load_movielens_ratings)
from monolith.data.synthetic import SyntheticClickLog
from monolith.data.feature_utils import (
    add_action,
    add_label,
    feature_combine,
    filter_by_feature_value,
    filter_by_fids,
    filter_by_label,
    filter_by_value,
    label_normalization,
    label_upper_bound,
    map_id,
    multi_label_gen,
    negative_sample,
    scatter_label,
    switch_slot,
    use_field_as_label,
)
from monolith.data.messages import PBMessageDataset
from monolith.data.parsing import parse_example_batch, parse_examples, parse_instances
from monolith.data.pb_dataset import PBDataset
from monolith.data.tfrecord import FixedLenFeature, TFRecordDataset, parse_example, tf_example_to_example, write_tfrecord
from monolith.data.tabular import CsvReader, ParquetReader

__all__ = [
    "AUTOTUNE",
    "Dataset",
    "FixedLenFeature",
    "PBDataset",
    "PBMessageDataset",
    "TFRecordDataset",
    "TensorSpec",
    "add_action",
    "advanced_parse",
    "add_label",
    "feature_combine",
    "filter_by_feature_value",
    "filter_by_fids",
    "filter_by_label",
    "filter_by_value",
    "label_normalization",
    "label_upper_bound",
    "map_id",
    "multi_label_gen",
    "negative_sample",
    "parse_example",
    "parse_example_batch",
    "parse_examples",
    "parse_instances",
    "scatter_label",
    "switch_slot",
    "tf_example_to_example",
    "to_ragged",
    "use_field_as_label",
    "write_tfrecord",
    "CRITEO_DENSE",
    "CRITEO_SPARSE",
    "LIBSVM_FIELD",
    "MAX_BAD_RECORDS_KEPT",
    "MOVIELENS_SLOTS",
    "CriteoReader",
    "CsvReader",
    "LibSvmReader",
    "MovieLens100K",
    "MovieLensSplit",
    "ParquetReader",
    "Reader",
    "SyntheticClickLog",
    "load_movielens100k",
    "load_movielens_ratings",
    "rebatch",
]
