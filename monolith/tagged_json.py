"""Tagged JSON: plain Python values (params, tuples, dicts, classes) to JSON and back, unambiguously.

Every non-JSON value is tagged: ``{"$tuple": [...]}``, ``{"$dict": [[key, value], ...]}``,
``{"$ref": "module:qualname"}`` for classes and functions, and ``{"$params": ref, "items": {...}}`` for
:class:`~monolith.params.Params` groups; lists and scalars stay as they are. The model dump records a
model's params, run config and dense optimizer with it.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any, Mapping

from monolith.params import Params

logger = logging.getLogger(__name__)


class Unserialisable(ValueError):
    """A value that cannot be recorded (a skipped param, or an error where it is needed)."""


def reference(obj: Any) -> str:
    """``module:qualname`` of a class or function that can be imported back."""
    name = f"{getattr(obj, '__module__', None)}:{getattr(obj, '__qualname__', None)}"
    try:
        found = resolve(name)
    except ValueError:
        found = None
    if found is not obj:
        raise Unserialisable(f"{obj!r} cannot be imported back by its qualified name")
    return name


def resolve(name: str) -> Any:
    """The class or function ``module:qualname`` names; ``ValueError`` when it cannot be imported."""
    module, _, qualname = name.partition(":")
    try:
        obj = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, ValueError) as e:
        raise ValueError(f"cannot import {name!r}: {e}") from e
    return obj


def encode(value: Any, path: str) -> Any:
    """``value`` as tagged JSON; ``Unserialisable`` names ``path`` when it cannot be recorded."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return [encode(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, tuple):
        return {"$tuple": [encode(v, f"{path}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, dict):
        return {"$dict": [[encode(k, path), encode(v, f"{path}[{k!r}]")] for k, v in value.items()]}
    if isinstance(value, Params):
        return {"$params": reference(type(value)), "items": encode_mapping(dict(value.iter_params()), path)}
    if callable(value):  # classes and functions
        return {"$ref": reference(value)}
    raise Unserialisable(f"{type(value).__name__} is not serialisable")


def encode_mapping(mapping: Mapping[str, Any], path: str) -> dict[str, Any]:
    """Encodes each value; one that cannot be recorded is left out with a warning."""
    out = {}
    for name, value in mapping.items():
        try:
            out[name] = encode(value, f"{path}.{name}")
        except Unserialisable as e:
            logger.warning("model dump: skipping %s.%s: %s", path, name, e)
    return out


def decode(data: Any) -> Any:
    """The value :func:`encode` turned into ``data``."""
    if isinstance(data, list):
        return [decode(v) for v in data]
    if not isinstance(data, dict):
        return data
    if "$tuple" in data:
        return tuple(decode(v) for v in data["$tuple"])
    if "$dict" in data:
        return {decode(k): decode(v) for k, v in data["$dict"]}
    if "$ref" in data:
        return resolve(data["$ref"])
    if "$params" in data:
        params = resolve(data["$params"])()
        for name, value in decode_mapping(data["items"]).items():
            if params.contain(name):  # e.g. InstantiableParams' own ``cls``
                setattr(params, name, value)
            else:
                params.define(name, value)
        return params
    raise ValueError(f"unknown encoded value {data!r}")


def decode_mapping(data: Mapping[str, Any]) -> dict[str, Any]:
    """Each value of ``data`` decoded."""
    return {name: decode(value) for name, value in data.items()}
