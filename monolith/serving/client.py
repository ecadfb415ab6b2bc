"""Pushing parameter updates to a serving endpoint (the streaming trainer's side of ``/v1/update``)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any, Mapping

from monolith.serving.model import encode_update

__all__ = ["UpdateRejected", "push_update"]


class UpdateRejected(RuntimeError):
    """The server refused an update; ``status`` is its HTTP status (409: older than the served version)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"update rejected with HTTP {status}: {detail}")
        self.status = status
        self.detail = detail


def push_update(url: str, update: Mapping[str, Any], timeout: float = 60.0) -> dict[str, Any]:
    """POSTs ``update`` (format in :mod:`monolith.serving.model`) to ``{url}/v1/update``.

    Args:
        url: the server's base URL, e.g. ``http://127.0.0.1:8500``.
        update: ``{"version": int, "tables": {...}, "dense": state_dict or None}``.
        timeout: seconds to wait for the server.

    Returns:
        The server's answer, ``{"model_version": int}``.

    Raises:
        UpdateRejected: the server answered with an error status.
        urllib.error.URLError: the server could not be reached.
    """
    request = urllib.request.Request(f"{url.rstrip('/')}/v1/update", data=encode_update(update), method="POST",
                                     headers={"Content-Type": "application/octet-stream"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        body = error.read().decode("utf-8", "replace")
        try:
            detail = json.loads(body).get("detail", body)
        except (ValueError, AttributeError):
            detail = body
        raise UpdateRejected(error.code, str(detail)) from None
