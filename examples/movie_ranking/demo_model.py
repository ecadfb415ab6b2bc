"""The tutorial's movie-ranking model (Monolith's ``markdown/demo/demo_model.py``), ported.

One model, three inputs: batch training from files, stream training from Kafka, training from
stdin. What changed from Monolith's code (see ``docs/porting_guide.md``): the package path; the
Keras layers are torch modules created in ``__init__``; ``tf.concat`` / ``tf.reduce_mean`` are torch
ops; the optimizer is a ``functools.partial`` of ``torch.optim.Adagrad``; ``input_fn`` returns an
iterable of :class:`~monolith.sparse.Batch`; the Kafka decoder is ``parse_fn`` instead of
``.map``; the serving receiver names the features; ``TF_CONFIG`` gives way to torchrun, which sets
each rank's share of the files.

    python examples/movie_ranking/ml_dataset.py --out /tmp/ml_100k
    python examples/movie_ranking/demo_model.py --training_type=batch --file_pattern '/tmp/ml_100k/part_*.pb'
    python examples/movie_ranking/demo_model.py --training_type=stdin < /tmp/ml_100k/part_0.csv
    python examples/movie_ranking/kafka_producer.py --servers 127.0.0.1:9092
    python examples/movie_ranking/demo_model.py --training_type=stream --kafka_servers 127.0.0.1:9092
    torchrun --nproc_per_node=2 examples/movie_ranking/demo_model.py --training_type=batch ...
"""

from __future__ import annotations

import argparse
import functools
import glob
import os
import sys
from typing import Iterator, Sequence

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # ml_dataset sits beside this file

from ml_dataset import FEATURES, SLOTS, batches, decode_example  # noqa: E402

from monolith.data.pb_dataset import PBDataset  # noqa: E402
from monolith.distributed import get_rank, get_world_size  # noqa: E402
from monolith.estimator import Estimator, EstimatorSpec, RunnerConfig  # noqa: E402
from monolith.export import ServingInputReceiver  # noqa: E402
from monolith.native_model import MonolithModel  # noqa: E402
from monolith.streaming import create_plain_kafka_dataset  # noqa: E402


class MovieRankingModelBase(MonolithModel):
    """A 32-wide embedding of ``mov`` and of ``uid``, an MLP 256-64-1 predicting the rating, MSE."""

    @classmethod
    def params(cls):
        p = super().params()
        p.train.per_replica_batch_size = p.eval.per_replica_batch_size = 512
        return p

    def __init__(self, params=None):
        super().__init__(params)
        self.register_slots(SLOTS)  # the slots the data's FIDs carry
        self.ratings = torch.nn.Sequential(
            # Learn multiple dense layers.
            torch.nn.Linear(2 * 32, 256), torch.nn.ReLU(),
            torch.nn.Linear(256, 64), torch.nn.ReLU(),
            # Make rating predictions in the final layer.
            torch.nn.Linear(64, 1),
        )

    def model_fn(self, features, mode):
        # for sparse features, we declare an embedding table for each of them
        for s_name in ["mov", "uid"]:
            self.create_embedding_feature_column(s_name)

        mov_embedding, user_embedding = self.lookup_embedding_slice(
            features=["mov", "uid"], slice_name="vec", slice_dim=32)
        rank = self.ratings(torch.cat((user_embedding, mov_embedding), dim=1))
        # Serving requests (PREDICT) carry no label.
        label = features["label"] if "label" in features else None
        loss = None if label is None else torch.mean((rank.reshape(-1) - label) ** 2)

        # tf.compat.v1.train.AdagradOptimizer(0.05): its accumulators start at 0.1
        optimizer = functools.partial(torch.optim.Adagrad, lr=0.05, initial_accumulator_value=0.1)

        return EstimatorSpec(
            label=label,
            pred=rank,
            head_name="rank",
            loss=loss,
            optimizer=optimizer,
            classification=False,
        )

    def serving_input_receiver_fn(self):
        return ServingInputReceiver(sparse_features=FEATURES)


class MovieRankingBatchTraining(MovieRankingModelBase):
    """Reads the ``train.file_pattern`` files (Monolith ``Example`` files); each rank its share."""

    def input_fn(self, mode) -> Iterator:
        files = sorted(glob.glob(self.p.train.file_pattern))
        if not files:
            raise FileNotFoundError(f"train.file_pattern {self.p.train.file_pattern!r} matches no file")
        # Monolith's dataset.shard(worker_count, index), by file here.
        return iter(PBDataset(files[get_rank()::get_world_size()], self.batch_size, sparse_features=FEATURES,
                              line_id_fields=(), drop_last=True))


class MovieRankingStreamTraining(MovieRankingModelBase):
    """Consumes the examples ``kafka_producer.py`` sends to the ``movie-train`` topic: every partition
    of it, or under torchrun each rank its share, as Monolith's consumer group shares them."""

    @classmethod
    def params(cls):
        p = super().params()
        p.train.per_replica_batch_size = p.eval.per_replica_batch_size = 16  # Monolith's poll_batch_size
        p.define("kafka_servers", "127.0.0.1:9092", "The Kafka brokers.")
        p.define("stream_timeout", 10000, "Stop after this many milliseconds without a message (-1: never).")
        return p

    def input_fn(self, mode):
        return create_plain_kafka_dataset(topics=["movie-train"],
                                          group_id="cgonline",
                                          servers=self.p.kafka_servers,
                                          stream_timeout=self.p.stream_timeout,
                                          poll_batch_size=self.batch_size,
                                          configuration=[
                                              "session.timeout.ms=7000",
                                              "max.poll.interval.ms=8000"
                                          ],
                                          parse_fn=decode_example)


def read_stdin():
    for line in sys.stdin:
        tokens = line.strip().split(",")
        if len(tokens) == 3:
            yield int(tokens[0]), int(tokens[1]), float(tokens[2])


class MovieRankingBatchTrainingStdin(MovieRankingModelBase):
    """Reads ``mov,uid,label`` lines from stdin."""

    def input_fn(self, mode):
        return batches(read_stdin(), self.batch_size)


MODELS = {"batch": MovieRankingBatchTraining, "stream": MovieRankingStreamTraining,
          "stdin": MovieRankingBatchTrainingStdin}


def main(argv: Sequence[str] | None = None) -> Estimator:
    parser = argparse.ArgumentParser(description="Movie ranking on MovieLens-100K (Monolith's tutorial model)")
    parser.add_argument("--training_type", choices=sorted(MODELS), default="batch", help="type of training to launch")
    parser.add_argument("--model_dir", default="/tmp/movie_lens_tutorial")
    parser.add_argument("--max_steps", type=int, default=1000000)
    parser.add_argument("--save_checkpoints_steps", type=int, default=10000)
    parser.add_argument("--batch_size", type=int, default=None, help="default: 512 (16 for stream)")
    parser.add_argument("--file_pattern", default="data_100k/part_*.pb", help="batch: the Example files")
    parser.add_argument("--kafka_servers", default="127.0.0.1:9092", help="stream: the Kafka brokers")
    parser.add_argument("--stream_timeout", type=int, default=10000, help="stream: idle milliseconds before stopping")
    parser.add_argument("--export_when_saving", action="store_true", help="export for serving with each checkpoint")
    args = parser.parse_args(argv)

    # Monolith's config also names the cluster from TF_CONFIG (discovery, num_ps, server_type, index);
    # torchrun's environment gives the ranks here.
    config = RunnerConfig(model_dir=args.model_dir, save_checkpoints_steps=args.save_checkpoints_steps)
    params = MODELS[args.training_type].params()
    params.serving.export_when_saving = args.export_when_saving
    if args.batch_size is not None:
        params.train.per_replica_batch_size = params.eval.per_replica_batch_size = args.batch_size
    if args.training_type == "batch":
        params.train.file_pattern = args.file_pattern
    elif args.training_type == "stream":
        params.kafka_servers = args.kafka_servers
        params.stream_timeout = args.stream_timeout

    estimator = Estimator(params.instantiate(), config)
    estimator.train(max_steps=args.max_steps)
    return estimator


if __name__ == "__main__":
    main()
