"""``Layer``: the base of the layer library, Keras's ``Layer`` as Monolith's layers use it.

What it keeps from Keras: ``params()`` (Monolith's ``with_params``: an ``InstantiableParams`` with
the constructor's arguments and their defaults), ``get_config`` / ``from_config``, weights built on
the first call from the input's shape (so constructors take output sizes only, as Keras infers input
sizes), and ``losses`` (weight-regulariser penalties plus what the last call added, e.g. MMoE's
load-balancing loss). Constructor arguments are kept on the layer under their own names, which is
what ``get_config`` returns.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch

import monolith.layers.initializers as initializers_lib
import monolith.layers.regularizers as regularizers_lib
from monolith.params import InstantiableParams, allowed_kwargs

__all__ = ["Layer"]


class Layer(torch.nn.Module):
    """Base of the ported layers: ``build(inputs)`` once on the first call, then ``call(inputs)``.

    Args:
        name: the layer's name (Keras's; it names nothing in torch's state dict, where the attribute
            a layer is assigned to names it).
    """

    def __init__(self, name: str | None = None) -> None:
        super().__init__()
        self.name = name or type(self).__name__
        self.built = False
        self._regularized: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
        self._call_losses: list[torch.Tensor] = []

    @classmethod
    def params(cls) -> InstantiableParams:
        """Monolith's ``Layer.params()``: ``name``, every constructor argument with its default (None
        where it has none) and Keras's ``allowed_kwargs``; ``instantiate()`` builds the layer."""
        p = InstantiableParams(cls)
        p.define("name", cls.__name__, "name")
        for arg in _constructor_args(cls):
            if arg.name != "name":
                p.define(arg.name, None if arg.default is inspect.Parameter.empty else arg.default, arg.name)
        for key in sorted(allowed_kwargs - set(p.to_dict())):
            p.define(key, None, key)
        return p

    def get_config(self) -> dict[str, Any]:
        """The constructor arguments this layer was made with (and ``name``)."""
        config = {"name": self.name}
        config.update({arg.name: getattr(self, arg.name) for arg in _constructor_args(type(self))})
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "Layer":
        """A new layer with the arguments of ``config`` (from :meth:`get_config`)."""
        return cls(**config)

    def forward(self, inputs: Any, **kwargs: Any) -> Any:
        if not self.built:
            self.build(inputs)
            self.built = True
        self._call_losses = []
        return self.call(inputs, **kwargs)

    def build(self, inputs: Any) -> None:
        """Creates the weights from the first input (Keras's ``build``); layers without weights keep this."""

    def call(self, inputs: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def add_weight(self, name: str, shape: Sequence[int], initializer: Any, like: torch.Tensor | None = None,
                   regularizer: Any = None, trainable: bool = True) -> torch.nn.Parameter:
        """Registers ``name`` as a parameter drawn from a Keras initialiser, on ``like``'s device, in
        float32 as Keras's default; a non-trainable one is a parameter without gradient."""
        init = initializers_lib.get(initializer)
        value = init(tuple(int(d) for d in shape), torch.float32)
        if like is not None:
            value = value.to(like.device)
        weight = torch.nn.Parameter(value, requires_grad=trainable)
        self.register_parameter(name, weight)
        reg = regularizers_lib.get(regularizer)
        if reg is not None:
            self._regularized[name] = reg
        return weight

    def add_loss(self, loss: torch.Tensor) -> None:
        """Adds a loss computed by this call (kept until the next call), as Keras's ``add_loss``."""
        self._call_losses.append(loss)

    @property
    def losses(self) -> list[torch.Tensor]:
        """Keras's ``losses``: regulariser penalties of this layer's weights and its sub-layers', and the
        losses the latest call added. Add them to the training loss."""
        out = [reg(getattr(self, name)) for name, reg in self._regularized.items()]
        out.extend(self._call_losses)
        for child in self.children():
            out.extend(_losses_of(child))
        return out


def _losses_of(module: torch.nn.Module) -> list[torch.Tensor]:
    if isinstance(module, Layer):
        return module.losses
    out: list[torch.Tensor] = []
    for child in module.children():
        out.extend(_losses_of(child))
    return out


def _constructor_args(cls: type) -> list[inspect.Parameter]:
    return [p for name, p in inspect.signature(cls.__init__).parameters.items()
            if name != "self" and p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)]
