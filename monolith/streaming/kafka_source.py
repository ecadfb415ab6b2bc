"""Training input from Kafka: batches of examples, resumable at exact offsets.

A :class:`KafkaSource` is an ``input_fn`` result: iterating it yields
:class:`~monolith.sparse.Batch` es. Its :meth:`KafkaSource.state_dict` is the next offset of every
partition after the last batch it yielded; the estimator stores it in each checkpoint and hands
it back on restart, and commits it to the consumer group when the checkpoint is written, so a
restarted trainer neither loses an example nor trains one twice.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Callable, Iterator, Sequence
from urllib.parse import urlparse

import numpy as np
import torch

from monolith.data.base import check_share
from monolith.data.dataset import Dataset
from monolith.fid import fid_to_int64
from monolith.sparse import Batch, KeyedJaggedTensor

logger = logging.getLogger(__name__)

ParseFn = Callable[[Sequence[bytes]], Batch]

_POLL_S = 0.05


def encode_example(sparse: dict[str, Sequence[int]], label: float, dense: dict[str, Sequence[float]] | None = None,
                   req_time: int | None = None) -> bytes:
    """One example as the JSON message :func:`decode_examples` reads.

    Example::

        encode_example({"uid": [fid], "mov": [fid2]}, label=1.0, req_time=1700000000)
    """
    record: dict[str, Any] = {"sparse": {k: [int(v) for v in vs] for k, vs in sparse.items()}, "label": float(label)}
    if dense:
        record["dense"] = {k: [float(v) for v in vs] for k, vs in dense.items()}
    if req_time is not None:
        record["req_time"] = int(req_time)
    return json.dumps(record).encode()


def decode_examples(messages: Sequence[bytes], sparse_features: Sequence[str] | None = None) -> Batch:
    """A :class:`Batch` of JSON examples written by :func:`encode_example`.

    Sparse features missing from a message are empty for that example. ``sparse_features`` fixes
    the feature set (default: the union of the messages' features, sorted). FIDs at or above
    ``2**63`` (uint64) are stored as their two's-complement int64.

    Raises:
        ValueError: a message is not such an example (not JSON, a FID that is not an integer, a
            label that is not a number, a dense feature only some of the messages have, ...).
    """
    records = []
    for index, message in enumerate(messages):
        try:
            records.append(_read_example(message))
        except (TypeError, ValueError) as error:
            raise ValueError(f"message {index} of the batch is not a JSON example ({error})") from error
    names = list(sparse_features) if sparse_features is not None else sorted(
        {name for r in records for name in r["sparse"]})
    values, lengths = [], []
    for name in names:
        for r in records:
            ids = r["sparse"].get(name, [])
            values.extend(ids)
            lengths.append(len(ids))
    dense = {"label": torch.tensor([r["label"] for r in records], dtype=torch.float32)}
    if all(r["req_time"] is not None for r in records):
        dense["req_time"] = torch.tensor([r["req_time"] for r in records], dtype=torch.int64)
    for name in sorted({k for r in records for k in r["dense"]}):
        missing = [i for i, r in enumerate(records) if name not in r["dense"]]
        if missing:
            raise ValueError(f"dense feature {name!r} is missing from messages {missing} of the batch")
        dense[name] = torch.tensor(np.asarray([r["dense"][name] for r in records], dtype=np.float32))
    sparse = KeyedJaggedTensor(names, torch.tensor(values, dtype=torch.int64), torch.tensor(lengths, dtype=torch.int64),
                               stride=len(records))
    return Batch(sparse, dense)


def _read_example(message: bytes) -> dict[str, Any]:
    """One message as ``{"sparse": {name: [int64]}, "label": float, "dense": {name: [float]}, "req_time"}``.

    Everything is converted here, so that a malformed message raises ``TypeError`` or ``ValueError``
    (which skip the message) rather than another error later (which would stop training).
    """
    record = json.loads(message)
    if not isinstance(record, dict) or not isinstance(record.get("sparse"), dict) or "label" not in record:
        raise ValueError("expected an object with 'sparse' and 'label'")
    dense = record.get("dense", {})
    if not isinstance(dense, dict):
        raise ValueError("'dense' must be an object of feature -> list of floats")
    req_time = record.get("req_time")
    return {"sparse": {name: [_fid(v) for v in ids] for name, ids in record["sparse"].items()},
            "label": float(record["label"]),
            "dense": {name: [float(v) for v in vs] for name, vs in dense.items()},
            "req_time": None if req_time is None else int(req_time)}


def _fid(value: Any) -> int:
    """A JSON FID as int64 (uint64 FIDs at or above ``2**63`` as their two's complement)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"FID {value!r} is not an int64 or uint64 integer")
    return fid_to_int64(value)


def parse_stream_url(url: str) -> tuple[str, str]:
    """``kafka://HOST:PORT/TOPIC`` -> ``("HOST:PORT", "TOPIC")``."""
    parsed = urlparse(url)
    topic = parsed.path.lstrip("/")
    if parsed.scheme != "kafka" or not parsed.netloc or not topic:
        raise ValueError(f"stream URL {url!r} must look like kafka://HOST:PORT/TOPIC")
    return parsed.netloc, topic


class KafkaSource(Dataset):
    """Batches of examples consumed from Kafka partitions, with offsets that checkpoints keep; a
    :class:`~monolith.data.dataset.Dataset`, so ``map``, ``filter``, ``prefetch`` ... chain.

    Args:
        bootstrap_servers: ``HOST:PORT`` of the brokers.
        topic: the topic to read.
        batch_size: examples per batch.
        parse_fn: messages -> Batch (default: :func:`decode_examples`).
        partitions: partitions this trainer reads; None: the topic's partitions ``p`` with
            ``p % world_size == rank``, looked up when reading starts (in one process, all of them).
        group_id: consumer group the offsets are committed to.
        max_batch_wait_s: yield a partial batch once the oldest message of it waited this long,
            so fresh events reach the model promptly when traffic is thin.
        idle_timeout_s: stop when no message arrived for this long (None: wait forever).
        consumer_config: extra confluent-kafka consumer settings.
        sparse_features: sparse features every batch has, e.g. those the model reads.
        rank, world_size: this trainer's place among the trainers sharing the topic's partitions
            (with ``partitions=None``).

    A batch lacks a sparse feature that none of its messages has, and the model would fail on it;
    so each batch gets every sparse feature of ``sparse_features`` or of an earlier batch, empty
    where absent. The names seen are kept in :meth:`state_dict`, so a restarted trainer has them too.

    A message that ``parse_fn`` refuses with ``ValueError`` is skipped alone (the rest of its batch
    is trained), logged once with its partition and offset and counted in ``num_bad_messages``; its
    offset is passed like any other, so it is not read again after a restart. Messages that parse
    one by one but not together (a dense feature only some have) skip their batch, counted in
    ``num_bad_batches``.
    """

    def __init__(self, bootstrap_servers: str, topic: str, batch_size: int, parse_fn: ParseFn = decode_examples,
                 partitions: Sequence[int] | None = None, group_id: str = "monolith", max_batch_wait_s: float = 0.2,
                 idle_timeout_s: float | None = None, consumer_config: dict[str, Any] | None = None,
                 sparse_features: Sequence[str] = (), rank: int = 0, world_size: int = 1) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        check_share(rank, world_size)
        self.bootstrap_servers, self.topic = bootstrap_servers, topic
        self.batch_size, self.parse_fn = batch_size, parse_fn
        self.partitions = None if partitions is None else list(partitions)
        self.rank, self.world_size = rank, world_size
        self.group_id = group_id
        self.max_batch_wait_s, self.idle_timeout_s = max_batch_wait_s, idle_timeout_s
        self.consumer_config = dict(consumer_config or {})
        self._offsets: dict[int, int] | None = None
        self._consumer = None
        self._sparse_features = dict.fromkeys(sparse_features)  # an ordered set
        self.num_bad_messages = 0
        self.num_bad_batches = 0
        self._stopping = False

    @classmethod
    def from_url(cls, url: str, batch_size: int, **kwargs: Any) -> "KafkaSource":
        """A source for ``kafka://HOST:PORT/TOPIC``."""
        servers, topic = parse_stream_url(url)
        return cls(servers, topic, batch_size, **kwargs)

    # ------------------------------------------------------------------ offsets
    def state_dict(self) -> dict[str, Any]:
        """Next offset of each partition after the last batch yielded (empty before any), and the
        sparse features every batch has."""
        return {"topic": self.topic, "offsets": {str(p): o for p, o in (self._offsets or {}).items()},
                "sparse_features": list(self._sparse_features)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resumes at the offsets of :meth:`state_dict`, with its sparse features (call before iterating)."""
        if state.get("topic") not in (None, self.topic):
            raise ValueError(f"input state is for topic {state.get('topic')!r}, this source reads {self.topic!r}")
        self._offsets = {int(p): int(o) for p, o in state.get("offsets", {}).items()}
        self._sparse_features.update(dict.fromkeys(state.get("sparse_features", ())))

    @staticmethod
    def merge_state_dicts(states: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """One state from the states of every rank of a run (its checkpoint's), for any number of
        ranks now: each partition at the furthest offset any rank reached (offsets only grow; a
        rank keeps the offsets it restored of partitions it does not read)."""
        topics = {state.get("topic") for state in states} - {None}
        if len(topics) > 1:
            raise ValueError(f"input states are for different topics {sorted(topics)}")
        offsets: dict[str, int] = {}
        for state in states:
            for partition, offset in state.get("offsets", {}).items():
                offsets[str(partition)] = max(int(offset), offsets.get(str(partition), int(offset)))
        features = dict.fromkeys(name for state in states for name in state.get("sparse_features", ()))
        return {"topic": next(iter(topics), None), "offsets": offsets, "sparse_features": list(features)}

    def commit(self) -> bool:
        """Commits the offsets of :meth:`state_dict` to the consumer group; False if the broker refused.

        The checkpoint, not the group, is what a restarted trainer resumes from: a refused commit
        (coordinator moving, broker busy) is logged and the next checkpoint's commit catches up.
        """
        offsets = {p: o for p, o in (self._offsets or {}).items() if o >= 0}
        if not offsets:
            return True
        from confluent_kafka import Consumer, KafkaException, TopicPartition

        consumer = self._consumer or Consumer({"bootstrap.servers": self.bootstrap_servers, "group.id": self.group_id,
                                               "enable.auto.commit": False, **self.consumer_config})
        try:
            consumer.commit(offsets=[TopicPartition(self.topic, p, o) for p, o in offsets.items()], asynchronous=False)
            return True
        except KafkaException as error:
            logger.warning("kafka %s: offsets %s not committed to group %r: %s", self.topic, offsets, self.group_id,
                           error)
            return False
        finally:
            if consumer is not self._consumer:
                consumer.close()

    # ------------------------------------------------------------------ consuming
    def _connect(self):
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        config = {"bootstrap.servers": self.bootstrap_servers, "group.id": self.group_id,
                  "enable.auto.commit": False, "auto.offset.reset": "earliest", **self.consumer_config}
        consumer = Consumer(config)
        partitions = self.partitions if self.partitions is not None else self._share(consumer)
        if self._offsets is None:
            # No checkpoint: continue from the group's committed offsets, else from the beginning.
            committed = consumer.committed([TopicPartition(self.topic, p) for p in partitions], timeout=10)
            self._offsets = {tp.partition: tp.offset if tp.offset >= 0 else OFFSET_BEGINNING for tp in committed}
        # assign(), not subscribe(): explicit partitions start at once, with no group rebalance wait.
        consumer.assign([TopicPartition(self.topic, p, self._offsets.get(p, OFFSET_BEGINNING)) for p in partitions])
        return consumer

    def _share(self, consumer) -> list[int]:
        """This rank's partitions of the topic: those with ``p % world_size == rank``.

        Raises:
            RuntimeError: the brokers know no such topic.
        """
        metadata = consumer.list_topics(self.topic, timeout=10).topics.get(self.topic)
        if metadata is None or metadata.error is not None:
            raise RuntimeError(f"kafka topic {self.topic!r} on {self.bootstrap_servers}: no partitions to read "
                               f"({'unknown topic' if metadata is None else metadata.error.str()})")
        share = sorted(p for p in metadata.partitions if p % self.world_size == self.rank)
        if not share:
            logger.warning("kafka %s: rank %d of %d reads nothing: the topic has only %d partitions", self.topic,
                           self.rank, self.world_size, len(metadata.partitions))
        return share

    def stop(self) -> None:
        """Ends the iteration within one poll (safe in a signal handler): the offsets stay those of
        the last batch yielded; messages of a batch not yet complete are read again by the next run."""
        self._stopping = True

    def __iter__(self) -> Iterator[Batch]:
        self._consumer = self._connect()
        pending: list = []
        first_at = last_message_at = time.monotonic()
        try:
            while not self._stopping:
                # consume() blocks until it has all it asked for or the timeout passes: short timeouts
                # keep a lone fresh event from waiting on a batch that will not fill.
                wait = self.max_batch_wait_s - (time.monotonic() - first_at) if pending else _POLL_S
                messages = self._consumer.consume(self.batch_size - len(pending), timeout=min(max(wait, 0.001), _POLL_S))
                now = time.monotonic()
                for message in messages:
                    if message.error() is not None:
                        logger.warning("kafka %s: %s", self.topic, message.error())
                        continue
                    if not pending:
                        first_at = now
                    pending.append(message)
                    last_message_at = now
                full = len(pending) >= self.batch_size
                if pending and (full or now - first_at >= self.max_batch_wait_s):
                    batch = self._parse(pending)
                    for message in pending:
                        self._offsets[message.partition()] = message.offset() + 1
                    pending = []
                    if batch is not None:
                        yield batch
                elif not pending and self.idle_timeout_s is not None and now - last_message_at >= self.idle_timeout_s:
                    return
        finally:
            self.close()

    def _parse(self, messages: list) -> Batch | None:
        """The batch of ``messages``; a message that ``parse_fn`` refuses (``ValueError``) is skipped
        alone, counted in ``num_bad_messages`` and logged once with its partition and offset."""
        try:
            return self._with_known_features(self.parse_fn([m.value() for m in messages]))
        except ValueError:
            pass
        # Rare, so simple: find the bad messages by parsing each alone, then parse the rest together.
        good = []
        for message in messages:
            try:
                self.parse_fn([message.value()])
            except ValueError as error:
                self.num_bad_messages += 1
                logger.error("kafka %s partition %d offset %d: message skipped: %s", self.topic, message.partition(),
                             message.offset(), error)
            else:
                good.append(message)
        if not good:
            return None
        try:
            return self._with_known_features(self.parse_fn([m.value() for m in good]))
        except ValueError as error:
            # Each message parses alone but not with the others (a dense feature only some have):
            # no one message is to blame, so the batch is skipped.
            spans: dict[int, list[int]] = {}
            for message in good:
                spans.setdefault(message.partition(), []).append(message.offset())
            self.num_bad_batches += 1
            logger.error("kafka %s %s: batch skipped: %s", self.topic, ", ".join(
                f"partition {p} offsets {min(o)}..{max(o)}" for p, o in sorted(spans.items())), error)
            return None

    def _with_known_features(self, batch: Batch) -> Batch:
        """``batch`` with every sparse feature known so far, empty for each example where it was absent."""
        sparse = batch.sparse
        self._sparse_features.update(dict.fromkeys(sparse.keys()))
        missing = [name for name in self._sparse_features if name not in sparse]
        if not missing:
            return batch
        lengths = torch.cat([sparse.lengths(), torch.zeros(len(missing) * sparse.stride(), dtype=torch.int64,
                                                           device=sparse.lengths().device)])
        return Batch(KeyedJaggedTensor([*sparse.keys(), *missing], sparse.values(), lengths, stride=sparse.stride()),
                     batch.dense)

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
