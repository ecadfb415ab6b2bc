"""Monolith's hyper-parameter objects: ``Params`` groups and ``InstantiableParams``.

Model code written for Monolith reads ``p = Model.params(); p.train.max_steps = 10;
model = p.instantiate()``; the same code runs here. Setting or reading a name that was never
``define``-d raises ``AttributeError`` naming it (with close matches), so a typo in a config never
passes silently.

Example::

    p = Params()
    p.define("lr", 0.1, "learning rate")
    p.lr = 0.2
    p.set(lr=0.3)
    p.lr_typo = 1          # AttributeError: lr_typo not defined; did you mean lr?
"""

from __future__ import annotations

import copy
import difflib
import inspect
import re
from typing import Any, Iterator

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class _Param:
    __slots__ = ("name", "value", "description")

    def __init__(self, name: str, value: Any, description: str) -> None:
        self.name, self.value, self.description = name, value, description


class Params:
    """A set of named parameters with attribute access; groups nest as ``Params`` values."""

    def __init__(self) -> None:
        object.__setattr__(self, "_params", {})
        object.__setattr__(self, "_immutable", False)

    # ------------------------------------------------------------------ attribute access
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return self._params[name].value
        except KeyError:
            raise AttributeError(self._unknown(name)) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self._check_mutable()
        try:
            self._params[name].value = value
        except KeyError:
            raise AttributeError(self._unknown(name)) from None

    __getitem__ = __getattr__
    __setitem__ = __setattr__

    def __contains__(self, name: str) -> bool:
        return name in self._params

    def __len__(self) -> int:
        return len(self._params)

    def __dir__(self) -> list[str]:
        return sorted(self._params)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Params) and dict(self.iter_params()) == dict(other.iter_params())

    def __deepcopy__(self, memo: dict) -> "Params":
        return self.copy()

    def __getstate__(self) -> dict:
        return {"params": self._params, "immutable": self._immutable}

    def __setstate__(self, state: dict) -> None:
        object.__setattr__(self, "_params", state["params"])
        object.__setattr__(self, "_immutable", state["immutable"])

    def __repr__(self) -> str:
        return self._to_string(0)

    def _to_string(self, depth: int) -> str:
        pad = "  " * depth
        lines = []
        for name, value in sorted(self.iter_params()):
            if isinstance(value, Params):
                lines.append(f"{pad}{name}: {{\n{value._to_string(depth + 1)}\n{pad}}}")
            else:
                lines.append(f"{pad}{name}: {value!r}")
        return "\n".join(lines)

    def _unknown(self, name: str) -> str:
        close = difflib.get_close_matches(name, list(self._params), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; defined: {sorted(self._params)}"
        return f"parameter '{name}' is not defined{hint}"

    def _check_mutable(self) -> None:
        if self._immutable:
            raise TypeError("this Params instance is frozen")

    # ------------------------------------------------------------------ definition
    def define(self, name: str, default_value: Any, description: str = "") -> None:
        """Defines parameter ``name`` (lowercase letters, digits and underscores)."""
        self._check_mutable()
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"parameter name {name!r} must match {_NAME.pattern}")
        if name in self._params:
            raise AttributeError(f"parameter '{name}' is already defined")
        self._params[name] = _Param(name, default_value, description)

    def contain(self, name: str) -> bool:
        """Whether ``name`` is defined at this level."""
        return name in self._params

    def freeze(self) -> None:
        """Makes this Params immutable."""
        object.__setattr__(self, "_immutable", True)

    def is_immutable(self) -> bool:
        return self._immutable

    # ------------------------------------------------------------------ dotted names
    def _get_nested(self, name: str) -> tuple["Params", str]:
        parts = name.split(".")
        current: Params = self
        for i, part in enumerate(parts[:-1]):
            value = current._params.get(part)
            if value is None or not isinstance(value.value, Params):
                raise AttributeError(f"parameter group '{'.'.join(parts[: i + 1])}' is not defined")
            current = value.value
        return current, parts[-1]

    def set(self, **kwargs: Any) -> "Params":
        """Sets several parameters; a dotted name such as ``"train.max_steps"`` (passed as ``**{...}``) reaches into groups."""
        self._check_mutable()  # a frozen tree is frozen through set() too, as in Monolith
        for name, value in kwargs.items():
            group, key = self._get_nested(name)
            setattr(group, key, value)
        return self

    def get(self, name: str) -> Any:
        """Value of a possibly dotted name such as ``"train.max_steps"``."""
        group, key = self._get_nested(name)
        return getattr(group, key)

    def delete(self, *names: str) -> "Params":
        """Removes parameters (dotted names allowed)."""
        self._check_mutable()
        for name in names:
            group, key = self._get_nested(name)
            if key not in group._params:
                raise AttributeError(group._unknown(key))
            del group._params[key]
        return self

    def iter_params(self) -> Iterator[tuple[str, Any]]:
        """``(name, value)`` pairs of this level."""
        for name, param in self._params.items():
            yield name, param.value

    def copy(self) -> "Params":
        """Deep copy (nested groups copied, values deep-copied); a frozen Params gives a frozen copy."""
        return self._copy_to(Params())

    def _copy_to(self, target: "Params") -> "Params":
        for name, param in self._params.items():
            if name in target._params:
                target._params[name].value = copy.deepcopy(param.value)
            else:
                target._params[name] = _Param(name, copy.deepcopy(param.value), param.description)
        object.__setattr__(target, "_immutable", self._immutable)
        return target

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict of the values (callables and classes kept as they are)."""
        return {k: v.to_dict() if isinstance(v, Params) else v for k, v in self.iter_params()}


class InstantiableParams(Params):
    """Params tied to a class: :meth:`instantiate` builds ``cls(params)``."""

    def __init__(self, cls: type | None = None) -> None:
        super().__init__()
        self.define("cls", cls, "The class these params configure.")

    def instantiate(self) -> Any:
        """Builds the configured class from these params."""
        if self.cls is None:
            raise ValueError("InstantiableParams.cls is None: nothing to instantiate")
        parameters = inspect.signature(self.cls.__init__).parameters
        if "params" in parameters:
            return self.cls(self)
        flat: dict[str, Any] = {}
        _flatten(self, flat)
        kwargs = {name: flat[name] for name in parameters if name not in ("self", "cls") and name in flat}
        return self.cls(**kwargs)

    def copy(self) -> "InstantiableParams":
        return self._copy_to(InstantiableParams(self.cls))


def _flatten(params: Params, out: dict[str, Any]) -> None:
    for name, value in params.iter_params():
        if isinstance(value, Params):
            _flatten(value, out)
        else:
            out[name] = value
