"""Online training from a stream, and the real-time parameter sync to serving."""

from monolith.streaming.kafka_dataset import create_plain_kafka_dataset
from monolith.streaming.kafka_source import KafkaSource, decode_examples, encode_example, parse_stream_url
from monolith.streaming.local_broker import LocalKafkaBroker
from monolith.streaming.parameter_sync import ParameterSync

__all__ = ["KafkaSource", "LocalKafkaBroker", "ParameterSync", "create_plain_kafka_dataset", "decode_examples",
           "encode_example", "parse_stream_url"]
