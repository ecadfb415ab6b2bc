"""Activations by name, Monolith's ``layers.advanced_activations``: each a layer with ``params()``.

``get("relu")`` (any case; Monolith's names: ``exponential``, ``gelu``, ``hard_sigmoid`` /
``hardsigmoid``, ``linear``, ``selu``, ``sigmoid``, ``sigmoid2``, ``softplus``, ``softsign``,
``swish``, ``tanh``, ``leakyrelu``, ``relu``, ``elu``, ``softmax``, ``thresholdedrelu``, ``prelu``)
returns a new activation module; formulas and defaults are Keras's (TF 2.4, which Monolith uses:
``LeakyReLU`` slope 0.3, ``hard_sigmoid`` is ``clip(0.2 x + 0.5, 0, 1)``, exact ``gelu``).
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from typing import Any, Union

import torch
import torch.nn.functional as F

import monolith.layers.initializers as initializers_lib
from monolith.layers.layer import Layer

__all__ = [
    "ELU", "Exponential", "Gelu", "HardSigmoid", "LeakyReLU", "Linear", "PReLU", "ReLU", "Selu", "Sigmoid",
    "Sigmoid2", "Softmax", "Softplus", "Softsign", "Swish", "Tanh", "ThresholdedReLU", "deserialize", "get",
    "serialize",
]

ActivationLike = Union[str, dict, torch.nn.Module, type, Callable[[torch.Tensor], torch.Tensor], None]


class _Elementwise(Layer):
    """An activation without arguments: ``call`` applies ``fn``."""

    fn: Callable[[torch.Tensor], torch.Tensor]

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name)

    def call(self, inputs: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return type(self).fn(inputs)


def _elementwise(name: str, fn: Callable[[torch.Tensor], torch.Tensor], doc: str) -> type:
    return type(name, (_Elementwise,), {"fn": staticmethod(fn), "__doc__": doc, "__module__": __name__})


Tanh = _elementwise("Tanh", torch.tanh, "Monolith's ``Tanh``: ``tanh(x)``.")
Sigmoid = _elementwise("Sigmoid", torch.sigmoid, "Monolith's ``Sigmoid``: ``sigmoid(x)``.")
Sigmoid2 = _elementwise("Sigmoid2", lambda x: 2 * torch.sigmoid(x),
                        "Monolith's ``Sigmoid2``: ``2 * sigmoid(x)`` (LHUC's gate).")
Linear = _elementwise("Linear", lambda x: x, "Monolith's ``Linear``: the identity.")
Gelu = _elementwise("Gelu", F.gelu, "Monolith's ``Gelu``: Keras's exact (erf) ``gelu``.")
Selu = _elementwise("Selu", F.selu, "Monolith's ``Selu``: ``selu(x)``.")
Softsign = _elementwise("Softsign", F.softsign, "Monolith's ``Softsign``: ``x / (1 + |x|)``.")
Softplus = _elementwise("Softplus", F.softplus, "Monolith's ``Softplus``: ``log(1 + exp(x))``.")
Exponential = _elementwise("Exponential", torch.exp, "Monolith's ``Exponential``: ``exp(x)``.")
HardSigmoid = _elementwise("HardSigmoid", lambda x: torch.clamp(0.2 * x + 0.5, 0.0, 1.0),
                           "Monolith's ``HardSigmoid``: Keras's ``clip(0.2 x + 0.5, 0, 1)``.")
Swish = _elementwise("Swish", F.silu, "Monolith's ``Swish``: ``x * sigmoid(x)``.")


class ReLU(Layer):
    """Keras's ``ReLU(max_value=None, negative_slope=0, threshold=0)``: ``x`` from ``threshold`` up
    (capped at ``max_value``), ``negative_slope * (x - threshold)`` below."""

    def __init__(self, max_value: float | None = None, negative_slope: float = 0.0, threshold: float = 0.0,
                 name: str | None = None) -> None:
        super().__init__(name)
        self.max_value, self.negative_slope, self.threshold = max_value, negative_slope, threshold

    def call(self, inputs: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        out = torch.where(inputs >= self.threshold, inputs, self.negative_slope * (inputs - self.threshold))
        return out if self.max_value is None else torch.clamp(out, max=self.max_value)


class LeakyReLU(Layer):
    """Keras's ``LeakyReLU(alpha=0.3)``."""

    def __init__(self, alpha: float = 0.3, name: str | None = None) -> None:
        super().__init__(name)
        self.alpha = alpha

    def call(self, inputs: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return F.leaky_relu(inputs, self.alpha)


class ELU(Layer):
    """Keras's ``ELU(alpha=1.0)``."""

    def __init__(self, alpha: float = 1.0, name: str | None = None) -> None:
        super().__init__(name)
        self.alpha = alpha

    def call(self, inputs: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return F.elu(inputs, self.alpha)


class Softmax(Layer):
    """Keras's ``Softmax(axis=-1)``."""

    def __init__(self, axis: int = -1, name: str | None = None) -> None:
        super().__init__(name)
        self.axis = axis

    def call(self, inputs: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return torch.softmax(inputs, dim=self.axis)


class ThresholdedReLU(Layer):
    """Keras's ``ThresholdedReLU(theta=1.0)``: ``x`` where ``x > theta``, else 0."""

    def __init__(self, theta: float = 1.0, name: str | None = None) -> None:
        super().__init__(name)
        self.theta = theta

    def call(self, inputs: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return torch.where(inputs > self.theta, inputs, torch.zeros_like(inputs))


class PReLU(Layer):
    """Keras's ``PReLU``: a learned slope ``alpha`` per input element (``shape[1:]``, sharing the
    ``shared_axes``), initialised by ``alpha_initializer`` (zeros)."""

    def __init__(self, alpha_initializer: Any = "zeros", alpha_regularizer: Any = None,
                 shared_axes: list[int] | None = None, name: str | None = None) -> None:
        super().__init__(name)
        self.alpha_initializer, self.alpha_regularizer, self.shared_axes = (
            alpha_initializer, alpha_regularizer, shared_axes)

    def build(self, inputs: torch.Tensor) -> None:
        shape = list(inputs.shape[1:])
        for axis in self.shared_axes or []:
            shape[axis - 1] = 1
        self.add_weight("alpha", shape, initializers_lib.get(self.alpha_initializer), inputs,
                        self.alpha_regularizer)

    def call(self, inputs: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return torch.relu(inputs) - self.alpha * torch.relu(-inputs)


_BY_NAME: dict[str, type[Layer]] = {
    "exponential": Exponential, "gelu": Gelu, "hard_sigmoid": HardSigmoid, "hardsigmoid": HardSigmoid,
    "linear": Linear, "selu": Selu, "sigmoid": Sigmoid, "sigmoid2": Sigmoid2, "softplus": Softplus,
    "softsign": Softsign, "swish": Swish, "tanh": Tanh, "leakyrelu": LeakyReLU, "relu": ReLU, "elu": ELU,
    "softmax": Softmax, "thresholdedrelu": ThresholdedReLU, "prelu": PReLU,
}
#: Monolith's ``ALL_ACTIVATION_NAMES``.
ALL_ACTIVATION_NAMES = frozenset(_BY_NAME)
# Function names of torch / Keras activations that map onto the classes above (Monolith's ``get``
# maps a Keras function by its ``__name__``); ``silu`` is torch's swish.
_FUNCTION_NAMES = {**_BY_NAME, "silu": Swish, "leaky_relu": LeakyReLU}


class _Function(Layer):
    """A plain function used as an activation (one Monolith's ``get`` passes through unchanged)."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], name: str | None = None) -> None:
        super().__init__(name)
        self.fn = fn

    def call(self, inputs: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return self.fn(inputs)


def get(identifier: ActivationLike) -> torch.nn.Module | None:
    """Monolith's ``advanced_activations.get``: None stays None; a name (any case), a ``serialize``d
    string or dict, a class (instantiated), a module (returned), or a function: a torch / Keras
    activation function by its name (``torch.relu`` is ``ReLU()``) and any other one wrapped as is."""
    if identifier is None:
        return None
    if isinstance(identifier, str):
        if identifier.lower() in _BY_NAME:
            return _BY_NAME[identifier.lower()]()
        if identifier.lstrip().startswith("{"):
            return deserialize(identifier)
        raise ValueError(f"unknown activation {identifier!r}; expected one of {sorted(_BY_NAME)}")
    if isinstance(identifier, dict):
        return deserialize(identifier)
    if isinstance(identifier, type) and issubclass(identifier, torch.nn.Module):
        return identifier()
    if isinstance(identifier, torch.nn.Module):
        return identifier
    if callable(identifier):
        cls = _FUNCTION_NAMES.get(getattr(identifier, "__name__", ""))
        return cls() if cls is not None else _Function(identifier)
    raise TypeError(f"activation must be a name, a dict, a module or a function, got {identifier!r}")


def serialize(activation: torch.nn.Module | None) -> str | None:
    """Monolith's ``serialize``: ``repr`` of ``{"name": class name, arguments...}``; None for an
    activation that is not one of the named ones."""
    if activation is None or type(activation) not in _BY_NAME.values():
        return None
    config = {"name": type(activation).__name__}
    config.update({k: v for k, v in activation.get_config().items() if k != "name"})
    return repr(config)


def deserialize(identifier: str | dict | None) -> torch.nn.Module | None:
    """Monolith's ``deserialize``: the activation a :func:`serialize` string or dict describes."""
    if identifier is None:
        return None
    config = dict(ast.literal_eval(identifier) if isinstance(identifier, str) else identifier)
    name = str(config.pop("name")).lower()
    if name not in _BY_NAME:
        raise ValueError(f"unknown activation {name!r} in {identifier!r}; expected one of {sorted(_BY_NAME)}")
    return _BY_NAME[name](**config)
