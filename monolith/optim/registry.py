"""One registry from a recorded ``config()`` (or Monolith's proto name) back to the object it describes.

Checkpoints and the model dump record each slice's initializer, optimizer and compressor as its
``config()``: ``{"type": class name, **constructor values}``. :func:`from_config` rebuilds any of them,
including configs nested in another (the stochastic-rounding wrapper records its wrapped optimizer
under ``"optimizer"``); :func:`make_optimizer` builds an optimizer from the name Monolith's proto and
``entry.py`` give it (``"adagrad"``, ``"ftrl"``, ...).
"""

from __future__ import annotations

import inspect
from typing import Any, Mapping, TypeVar

import monolith.optim.compressors as compressors
import monolith.optim.initializers as initializers
import monolith.optim.optimizers as optimizers
from monolith.optim.base import Compressor, Initializer, SliceOptimizer

_T = TypeVar("_T")

#: Every initializer, optimizer and compressor class, by the ``type`` its ``config()`` records.
_CLASSES: dict[str, type] = {
    name: cls
    for module in (compressors, initializers, optimizers)
    for name, cls in vars(module).items()
    if isinstance(cls, type)
    and issubclass(cls, (Initializer, SliceOptimizer, Compressor))
    and not inspect.isabstract(cls)
    and name == cls.__name__  # not an alias such as GroupAdaGradOptimizer
    and not name.startswith("_")  # shared bases such as _AdamFamily
}

#: Optimizers by Monolith's proto name (``SliceOptimizer.name``); wrappers take their optimizer's name.
_OPTIMIZERS_BY_PROTO_NAME: dict[str, type[SliceOptimizer]] = {
    cls.name: cls
    for cls in _CLASSES.values()
    if issubclass(cls, SliceOptimizer) and isinstance(vars(cls).get("name"), str) and cls.name
}

#: ``config()`` keys that differ from the constructor keyword (the attribute keeps Monolith's proto name).
_CONFIG_TO_KWARG = {"l1_regularization_strength": "l1_regularization",
                    "l2_regularization_strength": "l2_regularization", "r": "fixed_range"}


def from_config(config: Mapping[str, Any], base: type[_T]) -> _T:
    """The ``base`` (Initializer, SliceOptimizer or Compressor) whose ``config()`` is ``config``.

    Raises ``ValueError`` when ``config["type"]`` names no such class, or when the rebuilt object's
    ``config()`` differs from ``config`` (a value the constructor would change or refuse).
    """
    cls = _CLASSES.get(str(config.get("type")))
    if cls is None or not issubclass(cls, base):
        raise ValueError(f"{config.get('type')!r} names no {base.__name__} class of monolith.optim")
    # Keys the constructor does not take (e.g. MovingAverage's fixed learning_rate 0) are derived values.
    accepted = inspect.signature(cls).parameters
    kwargs = {}
    for key, value in config.items():
        kwarg = _CONFIG_TO_KWARG.get(key, key)
        if kwarg in accepted:
            nested = isinstance(value, Mapping) and "type" in value  # e.g. a wrapper's optimizer
            kwargs[kwarg] = from_config(value, object) if nested else value
    restored = cls(**kwargs)
    if restored.config() != dict(config):
        raise ValueError(f"{cls.__name__} config {dict(config)} rebuilds as {restored.config()}")
    return restored


def make_optimizer(name: str, **kwargs: Any) -> SliceOptimizer:
    """Build the optimizer Monolith's proto calls ``name`` (e.g. ``"adagrad"``) from ``entry.py`` keywords."""
    try:
        cls = _OPTIMIZERS_BY_PROTO_NAME[name]
    except (KeyError, TypeError):
        known = ", ".join(sorted(_OPTIMIZERS_BY_PROTO_NAME))
        raise ValueError(f"unknown optimizer {name!r}; known: {known}") from None
    return cls(**kwargs)
