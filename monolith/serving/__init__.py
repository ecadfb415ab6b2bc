"""Serving exported models: lookups and the dense program (:mod:`~monolith.serving.model`), the HTTP
endpoint (:mod:`~monolith.serving.server`, run with ``monolith serve``) and the trainer's update
client (:mod:`~monolith.serving.client`).

The HTTP app is imported from :mod:`monolith.serving.server` so that a trainer pushing updates
does not import the web stack. The names below are imported on first use, so that importing a light
submodule (``monolith serve --help`` reads :mod:`~monolith.serving.limits` and
:mod:`~monolith.serving.auth`) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from monolith.serving.client import BaseVersionRejected, UpdateRejected, push_update
    from monolith.serving.model import (BaseVersionError, RequestError, ServingModel, StaleUpdateError, decode_update,
                                        encode_update)

# Each public name and the submodule defining it.
_HOME = {
    "BaseVersionRejected": "client", "UpdateRejected": "client", "push_update": "client",
    "BaseVersionError": "model", "RequestError": "model", "ServingModel": "model", "StaleUpdateError": "model",
    "decode_update": "model", "encode_update": "model",
}

__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOME))
