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

As in Monolith's ``monolith.core.hyperparams``: ``str(p)`` prints ``{\\n  lr: 0.3\\n}`` (names sorted,
strings double-quoted, groups nested and indented two spaces a level); dotted names reach into groups
and into lists of groups (``p.get("layers[0].units")``); :func:`copy_params_to` and
:func:`update_params` copy values between trees.
"""

from __future__ import annotations

import copy
import difflib
import inspect
import re
import sys
from typing import Any, Iterable, Iterator

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_LIST_PART = re.compile(r"^(.+)\[(.+)\]$")  # ``layers[0]`` in a dotted name, as Monolith's _get_nested

#: Keyword arguments :meth:`InstantiableParams.instantiate` passes whenever the tree defines them (not
#: None), whether or not the class's ``__init__`` names them (Keras layers take them via ``**kwargs``);
#: Monolith's ``hyperparams.allowed_kwargs``, a set so that code may add to it as there.
allowed_kwargs = {
    "input_dim", "input_shape", "batch_input_shape", "weights", "activity_regularizer", "autocast",
    "implementation", "name",
}


def _keeps_reference(value: Any) -> bool:
    """Whether copying a Params keeps ``value`` itself: a torch tensor computed by autograd (not a
    leaf). Monolith keeps ``tf.Tensor`` values by reference (a graph output cannot be copied); the
    autograd counterpart cannot be deep-copied either (RuntimeError), while leaf tensors and
    parameters are copied as Monolith copies ``tf.Variable``s."""
    torch = sys.modules.get("torch")  # not imported: no value can be a tensor, and params stays light
    return torch is not None and isinstance(value, torch.Tensor) and not value.is_leaf


def _is_named_tuple(value: Any) -> bool:
    return isinstance(value, tuple) and hasattr(value, "_fields")


class _SortedDict(dict):
    """A dict whose repr lists its items sorted by key (Monolith's, for ``str(params)``)."""

    def __repr__(self) -> str:
        return "{" + ", ".join("%r: %r" % item for item in sorted(self.items())) + "}"


def _printable(value: Any) -> Any:
    """``value`` with its Params and dicts turned into sorted dicts, as Monolith's ``GetRepr``."""
    if isinstance(value, Params):
        return _SortedDict({k: _printable(v) for k, v in value.iter_params()})
    if isinstance(value, dict):
        return _SortedDict({k: _printable(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)) and not _is_named_tuple(value):
        return type(value)([_printable(v) for v in value])
    if hasattr(value, "Repr"):  # Monolith's hook for values (functions) whose __repr__ cannot be set
        return value.Repr()
    return value


class _Param:
    __slots__ = ("name", "value", "description")

    def __init__(self, name: str, value: Any, description: str) -> None:
        self.name, self.value, self.description = name, value, description

    def __deepcopy__(self, memo: dict) -> "_Param":
        value = self.value if _keeps_reference(self.value) else copy.deepcopy(self.value, memo)
        param = _Param(self.name, value, self.description)
        memo[id(self)] = param
        return param

    def to_string(self, depth: int) -> str:
        indent = "  " * depth
        if isinstance(self.value, Params):
            return f"{indent}{self.name}: {self.value._to_string(depth)}"
        if isinstance(self.value, str):
            return f'{indent}{self.name}: "{self.value}"'  # not escaped, as Monolith's
        return f"{indent}{self.name}: {_printable(self.value)}"


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

    def __str__(self) -> str:
        return self._to_string(0)

    __repr__ = __str__  # Monolith keeps object's repr; the text is more use in a debugger or a log

    def _to_string(self, depth: int) -> str:
        lines = [param.to_string(depth + 1) for _, param in sorted(self._params.items(), key=lambda kv: kv[0])]
        return "{\n%s\n%s}" % ("\n".join(lines), "  " * depth)

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
        """The group holding the last part of dotted ``name``, and that part.

        A part ``layers[0]`` reaches into element 0 of the list (or tuple) ``layers``, as in Monolith.

        Raises:
            AttributeError: a part is not defined, its index fails, or its value is not a ``Params``
                group (Monolith raises ``AssertionError`` "Cannot introspect" there).
        """
        parts = name.split(".")
        current: Params = self
        for i, part in enumerate(parts[:-1]):
            path = ".".join(parts[: i + 1])
            indexed = _LIST_PART.match(part)
            key = indexed.group(1) if indexed else part
            if key not in current._params:
                raise AttributeError(f"in '{name}': {current._unknown(key)}")
            value = current._params[key].value
            if indexed:
                try:
                    value = value[int(indexed.group(2))]
                except (ValueError, TypeError, IndexError) as e:
                    raise AttributeError(f"in '{name}': cannot take '{path}' "
                                         f"({type(value).__name__} {key!r}): {e}") from None
            if not isinstance(value, Params):
                raise AttributeError(f"in '{name}': '{path}' is a {type(value).__name__}, not a Params group, "
                                     f"so it has no '{parts[i + 1]}'")
            current = value
        return current, parts[-1]

    def set(self, **kwargs: Any) -> "Params":
        """Sets several parameters; a dotted name such as ``"train.max_steps"`` or
        ``"layers[0].units"`` (passed as ``**{...}``) reaches into groups."""
        self._check_mutable()  # a frozen tree is frozen through set() too, as in Monolith
        for name, value in kwargs.items():
            group, key = self._get_nested(name)
            setattr(group, key, value)
        return self

    def get(self, name: str) -> Any:
        """Value of a possibly dotted name such as ``"train.max_steps"`` or ``"layers[0].units"``."""
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
        """Deep copy of the same class (nested groups copied, values deep-copied, autograd tensors
        kept by reference); a frozen Params gives a frozen copy. As Monolith's, a subclass must be
        constructible without arguments."""
        return self._copy_to(type(self)())

    def _copy_to(self, target: "Params") -> "Params":
        # The copy's params replace whatever target's constructor defined, as Monolith's.
        object.__setattr__(target, "_params", copy.deepcopy(self._params))
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
        """Builds the configured class from these params.

        A class whose ``__init__`` takes ``params`` gets this object. Any other gets, by name, the
        values its ``__init__`` names from the flattened tree (the innermost definition of a name
        wins), plus each :data:`allowed_kwargs` name the tree defines with a value other than None
        when ``__init__`` takes ``**kwargs``, as Monolith's ``InstantiableParams``.
        """
        if self.cls is None:
            raise ValueError("InstantiableParams.cls is None: nothing to instantiate")
        parameters = inspect.signature(self.cls.__init__).parameters
        # Monolith also requires exactly (self, params) and a ``params`` attribute on the class; a
        # class failing those would not be built there at all, so the looser test loses nothing.
        if "params" in parameters:
            return self.cls(self)
        index: dict[str, Any] = {}
        _inverted_index(self, index)
        kwargs = {name: index[name] for name, parameter in parameters.items()
                  if parameter.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
                  and name not in ("self", "cls") and name in index}
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
        # Only where __init__ can take them: a model class defines "name" in every params tree.
        kwargs.update({key: index[key] for key in allowed_kwargs
                       if index.get(key) is not None and (takes_any or key in parameters)})
        return self.cls(**kwargs)

    def copy(self) -> "InstantiableParams":
        return self._copy_to(type(self)(self.cls))


def _inverted_index(params: Params, out: dict[str, Any]) -> None:
    """Leaf name -> value over the whole tree (Monolith's ``_inverted_index``)."""
    for name, value in params.iter_params():
        if isinstance(value, Params):
            _inverted_index(value, out)
        else:
            out[name] = value


def copy_params_to(from_p: Params, to_p: Params, skip: Iterable[str] | None = None) -> Params:
    """Sets every top-level param of ``from_p`` on ``to_p`` (groups as copies, other values shared),
    except the names in ``skip``; returns ``to_p``. As Monolith's, each name must already be defined
    in ``to_p`` (``AttributeError`` otherwise)."""
    for name, value in from_p.iter_params():
        if skip and name in skip:
            continue
        to_p.set(**{name: value.copy() if isinstance(value, Params) else value})
    return to_p


def update_params(params: Params, args: dict[str, Any]) -> None:
    """Sets each leaf param of ``params`` (at any depth) whose name is a key of ``args`` to that
    value, popping the key from ``args``: what is left in ``args`` matched no param. As Monolith's,
    a name defined at several depths takes the value at its first occurrence only."""
    for key, value in params.iter_params():
        if isinstance(value, Params):
            update_params(value, args)
        elif key in args:
            params[key] = args.pop(key)
