"""Default limits of the HTTP server (:func:`monolith.serving.server.create_app`, ``monolith serve``).

Kept apart from the server so that ``monolith serve --help`` shows them without importing the web
stack or torch.
"""

__all__ = ["BODY_TIMEOUT_S", "MAX_BATCH_SIZE", "MAX_BODY_BYTES", "MAX_HEADER_BYTES", "MAX_UPDATE_BYTES",
           "MAX_URL_BYTES"]

#: Bytes of a prediction request, examples in one, and bytes of an update (larger: a trainer's
#: first push may carry every row trained since the export).
MAX_BODY_BYTES = 64 << 20
MAX_BATCH_SIZE = 100_000
MAX_UPDATE_BYTES = 1 << 30
#: Limit of the request line's target and of all header lines together, and seconds a client may
#: leave a body half-sent before it gets 408 and its connection is closed.
MAX_URL_BYTES = 8 << 10
MAX_HEADER_BYTES = 16 << 10
BODY_TIMEOUT_S = 10.0
