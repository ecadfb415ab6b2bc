"""``python -m monolith.streaming [--port 9092] [--topic NAME]...``: a local Kafka-compatible broker
(:class:`~monolith.streaming.local_broker.LocalKafkaBroker`, memory only) on 127.0.0.1 until SIGINT or
SIGTERM, for trying ``monolith train --stream`` without a Kafka cluster."""

from __future__ import annotations

import argparse
import signal
from typing import Sequence

from monolith.streaming.local_broker import LocalKafkaBroker


def main(argv: Sequence[str] | None = None) -> None:
    """Runs the broker until SIGINT or SIGTERM, then stops it (its messages are gone)."""
    parser = argparse.ArgumentParser(prog="python -m monolith.streaming",
                                     description="Run a memory-only Kafka-compatible broker on 127.0.0.1 until "
                                                 "interrupted.")
    parser.add_argument("--port", type=int, default=9092, help="port to listen on (default 9092)")
    parser.add_argument("--topic", action="append", default=[], help="create this topic (repeatable)")
    parser.add_argument("--partitions", type=int, default=1, help="partitions of each --topic (default 1)")
    args = parser.parse_args(argv)
    stop = {signal.SIGINT, signal.SIGTERM}
    with LocalKafkaBroker(args.port) as broker:
        # Blocked once the broker runs (a child would inherit the mask), then taken by sigwait.
        signal.pthread_sigmask(signal.SIG_BLOCK, stop)
        for topic in args.topic:
            broker.create_topic(topic, args.partitions)
        print(f"Kafka broker on {broker.bootstrap_servers} (memory only), topics {args.topic}; Ctrl-C stops it",
              flush=True)
        signal.sigwait(stop)


if __name__ == "__main__":
    main()
