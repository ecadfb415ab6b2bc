"""Data sources yielding :class:`~monolith.sparse.Batch`: file readers, a synthetic click log, MovieLens.

Every reader follows the contract of :mod:`monolith.data.base`: an iterable of ``Batch`` with FIDs
in ``batch.sparse``, float32 ``batch.dense["label"]`` ``[batch]``, fixed ``batch_size``, malformed
records skipped and counted (``bad_records``, ``num_bad_records``) or raised with ``strict=True``.
"""

from monolith.data.base import MAX_BAD_RECORDS_KEPT, Reader, rebatch
from monolith.data.dataset import AUTOTUNE, Dataset, TensorSpec, to_ragged
from monolith.data.criteo import CRITEO_DENSE, CRITEO_SPARSE, CriteoReader
from monolith.data.libsvm import LIBSVM_FIELD, LibSvmReader
from monolith.data.movielens import MOVIELENS_SLOTS, MovieLens100K, MovieLensSplit, load_movielens100k
from monolith.data.synthetic import SyntheticClickLog
from monolith.data.pb_dataset import PBDataset
from monolith.data.tabular import CsvReader, ParquetReader

__all__ = [
    "AUTOTUNE",
    "Dataset",
    "PBDataset",
    "TensorSpec",
    "to_ragged",
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
    "rebatch",
]
