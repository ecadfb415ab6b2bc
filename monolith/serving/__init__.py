"""Serving exported models: lookups and the dense program (:mod:`~monolith.serving.model`), the HTTP
endpoint (:mod:`~monolith.serving.server`, run with ``python -m monolith.serving``) and the
trainer's update client (:mod:`~monolith.serving.client`).

The HTTP app is imported from :mod:`monolith.serving.server` so that a trainer pushing updates
does not import the web stack.
"""

from monolith.serving.client import BaseVersionRejected, UpdateRejected, push_update
from monolith.serving.model import (BaseVersionError, RequestError, ServingModel, StaleUpdateError, decode_update,
                                    encode_update)

__all__ = ["BaseVersionError", "BaseVersionRejected", "RequestError", "ServingModel", "StaleUpdateError",
           "UpdateRejected", "decode_update", "encode_update", "push_update"]
