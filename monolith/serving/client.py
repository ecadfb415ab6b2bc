"""The client side of a serving endpoint: prediction request bodies built from raw feature values
(:func:`predict_request`), and parameter updates pushed by the streaming trainer (``/v1/update``).

Updates and the versioning protocol (deltas naming the version they build on, full updates of a
rank's shard) are described in :mod:`monolith.serving.model`. A refused update raises
:class:`UpdateRejected`; a delta refused because serving does not hold the version it builds on
raises its subclass :class:`BaseVersionRejected`, on which the sender must send a full update.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any, Iterable, Mapping, Sequence

from monolith.fid import extract_fid, hash_string_fid
from monolith.serving.auth import authorization, read_token
from monolith.serving.model import encode_update

__all__ = ["BaseVersionRejected", "UpdateRejected", "predict_request", "push_update"]

RawValue = int | str | bytes


def predict_request(examples: Iterable[Mapping[str, Any]], slots: Mapping[str, int],
                    dense_features: Sequence[str] = ()) -> dict[str, Any]:
    """The ``/v1/predict`` JSON body of ``examples`` given as raw feature values, so that no FID is
    built by hand: each sparse feature's values become FIDs of its slot as the data readers make
    them (:mod:`monolith.data.movielens`, :mod:`monolith.data.criteo`), an integer by
    :func:`~monolith.fid.extract_fid` (Monolith's ``ExtractFid``) and a string by
    :func:`~monolith.fid.hash_string_fid`.

    Args:
        examples: one mapping per example: sparse feature -> a raw value, a list of them
            (multi-valued) or None (no value); dense feature -> its row of floats.
        slots: sparse feature -> its slot; every one becomes a feature of the request, empty
            where an example lacks it.
        dense_features: the dense features, copied as they are.

    Raises:
        ValueError: an example names a feature in neither ``slots`` nor ``dense_features``, a value
            that is neither an int nor a string, or lacks a dense feature.

    Example::

        predict_request([{"uid": 196, "mov": 242, "genre": [3, 7], "gender": "M"}],
                        {"uid": 1, "mov": 2, "genre": 3, "gender": 5})
        # -> {"sparse": {"uid": [[fid]], "mov": [[fid]], "genre": [[fid, fid]], "gender": [[fid]]}, "dense": {}}
    """
    sparse: dict[str, list[list[int]]] = {name: [] for name in slots}
    dense: dict[str, list] = {name: [] for name in dense_features}
    for i, example in enumerate(examples):
        unknown = sorted(set(example) - set(slots) - set(dense_features))
        if unknown:
            raise ValueError(f"example {i}: unknown feature(s) {unknown}; sparse features {sorted(slots)}, "
                             f"dense features {sorted(dense_features)}")
        for name, slot in slots.items():
            values = example.get(name)
            values = [] if values is None else values if isinstance(values, (list, tuple)) else [values]
            sparse[name].append([_fid(value, slot, f"example {i}: '{name}'") for value in values])
        for name in dense_features:
            if name not in example:
                raise ValueError(f"example {i}: dense feature '{name}' is missing")
            dense[name].append([float(x) for x in example[name]])
    return {"sparse": sparse, "dense": dense}


def _fid(value: RawValue, slot: int, field: str) -> int:
    if isinstance(value, (str, bytes)):
        return int(hash_string_fid(value, slot))
    if isinstance(value, int) and not isinstance(value, bool):
        return int(extract_fid(value, slot))
    raise ValueError(f"{field}: a raw value is an int or a string, got {value!r}")


class UpdateRejected(RuntimeError):
    """The server refused an update; ``status`` is its HTTP status (409: refused for its version, see
    ``reason``).

    ``reason`` is the server's reason for a 409 (``"stale"``: older than serving holds, ``"base_version"``:
    see :class:`BaseVersionRejected`), ``model_version`` the version serving reported and
    ``min_version`` (stale updates) the oldest version the update could have had; None where the
    answer did not say.
    """

    def __init__(self, status: int, detail: str, reason: str | None = None, model_version: int | None = None,
                 min_version: int | None = None) -> None:
        super().__init__(f"update rejected with HTTP {status}: {detail}")
        self.status = status
        self.detail = detail
        self.reason = reason
        self.model_version = model_version
        self.min_version = min_version


class BaseVersionRejected(UpdateRejected):
    """A delta refused (409) because serving does not hold the version it builds on, e.g. after a
    restart from an export; ``base_version`` is the version serving holds for the sender's shard
    (None: unknown). The sender must send a full update."""

    def __init__(self, status: int, detail: str, model_version: int | None, base_version: int | None) -> None:
        super().__init__(status, detail, "base_version", model_version)
        self.base_version = base_version


def push_update(url: str, update: Mapping[str, Any], timeout: float = 60.0, token: str | None = None) -> dict[str, Any]:
    """POSTs ``update`` (format in :mod:`monolith.serving.model`) to ``{url}/v1/update``.

    Args:
        url: the server's base URL, e.g. ``http://127.0.0.1:8500``.
        update: ``{"version": int, "base_version": int, "tables": {...}, "dense": state_dict or None, ...}``.
        timeout: seconds to wait for the server.
        token: the serving token, sent as ``Authorization: Bearer <token>`` (default:
            ``$MONOLITH_SERVING_TOKEN``, none where unset; :mod:`monolith.serving.auth`).

    Returns:
        The server's answer, ``{"model_version": int}``.

    Raises:
        BaseVersionRejected: a delta that does not build on the version serving holds (409).
        UpdateRejected: the server answered with another error status (401: a missing or wrong token).
        urllib.error.URLError: the server could not be reached.
    """
    token = read_token() if token is None else token
    headers = {"Content-Type": "application/octet-stream", **(authorization(token) if token is not None else {})}
    request = urllib.request.Request(f"{url.rstrip('/')}/v1/update", data=encode_update(update), method="POST",
                                     headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        body = error.read().decode("utf-8", "replace")
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise UpdateRejected(error.code, body) from None
        detail = str(answer.get("detail", body))
        reason, served = answer.get("reason"), _int_or_none(answer.get("model_version"))
        if error.code == 409 and reason == "base_version":
            raise BaseVersionRejected(error.code, detail, served, _int_or_none(answer.get("base_version"))) from None
        raise UpdateRejected(error.code, detail, reason if isinstance(reason, str) else None, served,
                             _int_or_none(answer.get("min_version"))) from None


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
