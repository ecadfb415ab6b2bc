"""Monolith's ``create_plain_kafka_dataset``, with its argument names, over :class:`KafkaSource`.

Monolith returns a ``tf.data`` dataset of raw messages that the model maps through its decoder
(``dataset.map(lambda x: decode_example(x.message))``); here the decoder is the ``parse_fn``
argument, a function of a list of message payloads returning one :class:`~monolith.sparse.Batch`,
and the result is a :class:`KafkaSource` of those batches, resumable from checkpoints.
"""

from __future__ import annotations

from typing import Any, Sequence

from monolith.distributed import get_rank, get_world_size
from monolith.streaming.kafka_source import KafkaSource, ParseFn, decode_examples

__all__ = ["create_plain_kafka_dataset"]


def create_plain_kafka_dataset(topics: Sequence[str] | str,
                               group_id: str,
                               servers: str,
                               stream_timeout: int = -1,
                               message_poll_timeout: int = 10000,
                               poll_batch_size: int = 1024,
                               configuration: Sequence[str] | None = None,
                               container: str = "",
                               shared_name: str = "",
                               kafka_other_metadata: str | None = None,
                               parse_fn: ParseFn = decode_examples,
                               partitions: Sequence[int] | None = None) -> KafkaSource:
    """Batches of ``poll_batch_size`` messages of ``topics`` consumed as ``group_id`` from ``servers``.

    Args:
        topics: one topic (a list of one, or a string); several topics are not supported, since a
            source's offsets (kept in checkpoints) belong to one topic.
        group_id: the consumer group the offsets are committed to.
        servers: ``HOST:PORT[,HOST:PORT...]`` of the brokers.
        stream_timeout: stop after this many milliseconds without a message (-1: never), as Monolith.
        message_poll_timeout: milliseconds a partial batch waits for more messages before it is
            trained on (Monolith's wait of one poll).
        poll_batch_size: messages per batch (Monolith's poll size, the training batch size).
        configuration: librdkafka ``"key=value"`` settings, as in Monolith (confluent-kafka is
            librdkafka too, so the same keys apply).
        container, shared_name: accepted and ignored (TensorFlow resource names).
        kafka_other_metadata: more ``"key=value"`` settings, comma-separated.
        parse_fn: message payloads -> :class:`~monolith.sparse.Batch` (Monolith's ``.map`` decoder);
            default :func:`~monolith.streaming.decode_examples` (JSON examples).
        partitions: the partitions this trainer reads; None: the topic's partitions shared among
            the ranks of the run (rank ``r`` of ``n`` reads those with ``p % n == r``; one process
            reads all), as Monolith's consumer group shares them among its workers.
    """
    topics = [topics] if isinstance(topics, str) else list(topics)
    if len(topics) != 1:
        raise ValueError(f"create_plain_kafka_dataset reads one topic, got {topics}: "
                         f"use one source (and one input_fn) per topic")
    settings = list(configuration or []) + (kafka_other_metadata.split(",") if kafka_other_metadata else [])
    consumer_config: dict[str, Any] = {}
    for setting in settings:
        key, sep, value = setting.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"Kafka setting {setting!r} must be key=value")
        consumer_config[key.strip()] = value.strip()
    return KafkaSource(servers, topics[0], poll_batch_size, parse_fn=parse_fn, partitions=partitions,
                       group_id=group_id, max_batch_wait_s=message_poll_timeout / 1000,
                       idle_timeout_s=None if stream_timeout < 0 else stream_timeout / 1000,
                       consumer_config=consumer_config, rank=get_rank(), world_size=get_world_size())
