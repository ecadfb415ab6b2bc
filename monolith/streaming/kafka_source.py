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
    the feature set (default: the union of the messages' features, sorted).
    """
    records = []
    for index, message in enumerate(messages):
        try:
            record = json.loads(message)
            if not isinstance(record.get("sparse"), dict) or "label" not in record:
                raise ValueError("expected an object with 'sparse' and 'label'")
        except ValueError as error:
            raise ValueError(f"message {index} of the batch is not a JSON example ({error})") from error
        records.append(record)
    names = list(sparse_features) if sparse_features is not None else sorted(
        {name for r in records for name in r["sparse"]})
    values, lengths = [], []
    for name in names:
        for r in records:
            ids = r["sparse"].get(name, [])
            values.extend(ids)
            lengths.append(len(ids))
    dense = {"label": torch.tensor([float(r["label"]) for r in records], dtype=torch.float32)}
    if all("req_time" in r for r in records):
        dense["req_time"] = torch.tensor([r["req_time"] for r in records], dtype=torch.int64)
    for name in sorted({k for r in records for k in r.get("dense", {})}):
        dense[name] = torch.tensor(np.asarray([r["dense"][name] for r in records], dtype=np.float32))
    sparse = KeyedJaggedTensor(names, torch.tensor(values, dtype=torch.int64), torch.tensor(lengths, dtype=torch.int64),
                               stride=len(records))
    return Batch(sparse, dense)


def parse_stream_url(url: str) -> tuple[str, str]:
    """``kafka://HOST:PORT/TOPIC`` -> ``("HOST:PORT", "TOPIC")``."""
    parsed = urlparse(url)
    topic = parsed.path.lstrip("/")
    if parsed.scheme != "kafka" or not parsed.netloc or not topic:
        raise ValueError(f"stream URL {url!r} must look like kafka://HOST:PORT/TOPIC")
    return parsed.netloc, topic


class KafkaSource:
    """Batches of examples consumed from Kafka partitions, with offsets that checkpoints keep.

    Args:
        bootstrap_servers: ``HOST:PORT`` of the brokers.
        topic: the topic to read.
        batch_size: examples per batch.
        parse_fn: messages -> Batch (default: :func:`decode_examples`).
        partitions: partitions this trainer reads (each rank of a distributed run reads its own).
        group_id: consumer group the offsets are committed to.
        max_batch_wait_s: yield a partial batch once the oldest message of it waited this long,
            so fresh events reach the model promptly when traffic is thin.
        idle_timeout_s: stop when no message arrived for this long (None: wait forever).
        consumer_config: extra confluent-kafka consumer settings.
    """

    def __init__(self, bootstrap_servers: str, topic: str, batch_size: int, parse_fn: ParseFn = decode_examples,
                 partitions: Sequence[int] = (0,), group_id: str = "monolith", max_batch_wait_s: float = 0.2,
                 idle_timeout_s: float | None = None, consumer_config: dict[str, Any] | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.bootstrap_servers, self.topic = bootstrap_servers, topic
        self.batch_size, self.parse_fn = batch_size, parse_fn
        self.partitions = list(partitions)
        self.group_id = group_id
        self.max_batch_wait_s, self.idle_timeout_s = max_batch_wait_s, idle_timeout_s
        self.consumer_config = dict(consumer_config or {})
        self._offsets: dict[int, int] | None = None
        self._consumer = None
        self.num_bad_batches = 0

    @classmethod
    def from_url(cls, url: str, batch_size: int, **kwargs: Any) -> "KafkaSource":
        """A source for ``kafka://HOST:PORT/TOPIC``."""
        servers, topic = parse_stream_url(url)
        return cls(servers, topic, batch_size, **kwargs)

    # ------------------------------------------------------------------ offsets
    def state_dict(self) -> dict[str, Any]:
        """Next offset of each partition after the last batch yielded (empty before any)."""
        return {"topic": self.topic, "offsets": {str(p): o for p, o in (self._offsets or {}).items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resumes at the offsets of :meth:`state_dict` (call before iterating)."""
        if state.get("topic") not in (None, self.topic):
            raise ValueError(f"input state is for topic {state.get('topic')!r}, this source reads {self.topic!r}")
        self._offsets = {int(p): int(o) for p, o in state.get("offsets", {}).items()}

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
        if self._offsets is None:
            # No checkpoint: continue from the group's committed offsets, else from the beginning.
            committed = consumer.committed([TopicPartition(self.topic, p) for p in self.partitions], timeout=10)
            self._offsets = {tp.partition: tp.offset if tp.offset >= 0 else OFFSET_BEGINNING for tp in committed}
        # assign(), not subscribe(): explicit partitions start at once, with no group rebalance wait.
        consumer.assign([TopicPartition(self.topic, p, self._offsets.get(p, OFFSET_BEGINNING))
                         for p in self.partitions])
        return consumer

    def __iter__(self) -> Iterator[Batch]:
        self._consumer = self._connect()
        pending: list = []
        first_at = last_message_at = time.monotonic()
        try:
            while True:
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
        try:
            return self.parse_fn([m.value() for m in messages])
        except ValueError as error:
            # One bad message must not stop a long-running trainer: skip its batch, say where it was.
            first = messages[0]
            self.num_bad_batches += 1
            logger.error("kafka %s partition %d offsets %d..%d: batch skipped: %s", self.topic, first.partition(),
                         first.offset(), messages[-1].offset(), error)
            return None

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
