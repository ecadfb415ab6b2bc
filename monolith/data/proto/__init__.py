"""Monolith's data messages (``Example``, ``ExampleBatch``, ``Instance``, ``LineId``, ...) for Python.

The ``.proto`` files here are copies of ByteDance Monolith's ``idl/matrix/proto/*.proto`` (Apache-2.0)
with the import paths pointed at this package; their protobuf packages (``monolith.io.proto``,
``idl.matrix.proto``, ``parser.proto``) are Monolith's, so the messages are wire-compatible.

The ``*_pb2.py`` / ``*_pb2.pyi`` modules are generated and committed. To regenerate them (with a
grpcio-tools whose protoc is not newer than the ``protobuf`` pinned in pyproject.toml), run from the
repository root::

    python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. monolith/data/proto/*.proto
"""
