"""A dataclass's fields as absl command-line flags (Monolith's ``gflags_utils``).

Monolith registers a flag for every ``RunnerConfig`` field (``--model_dir``, ``--model_name``,
``--save_checkpoints_steps``, ...) when its runner module is imported, and a ``RunnerConfig``
built after ``app.run`` parsed the command line takes the flags' values for the fields its code
left at their defaults. :func:`extract_flags` and :func:`update` do the same here, so a ported
``main`` run with those flags behaves as in Monolith.

A flag another module already defined under a field's name is left as it is (and still read).
Fields of other types than bool, int, float, str and enums (and their ``None``-able forms) get no
flag. Before the flags are parsed (the ``monolith`` command, tests, notebooks) nothing changes.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from typing import Any

from absl import flags

FLAGS = flags.FLAGS


def _flag_type(hint: Any) -> type | None:
    """The one scalar type of a field's hint (``int | None`` -> int), or None when it has none."""
    args = [a for a in typing.get_args(hint) if a is not type(None)] if isinstance(hint, types.UnionType) else [hint]
    if len(args) != 1 or not isinstance(args[0], type):
        return None
    kind = args[0]
    return kind if kind in (bool, int, float, str) or issubclass(kind, enum.Enum) else None


def _fields(cls: type) -> dict[str, tuple[type, Any]]:
    """Field name -> (flag type, default) for the fields of ``cls`` that can be flags."""
    hints = typing.get_type_hints(cls)
    out = {}
    for field in dataclasses.fields(cls):
        kind = _flag_type(hints[field.name])
        if kind is not None and field.default is not dataclasses.MISSING:
            out[field.name] = (kind, field.default)
    return out


def extract_flags(cls: type, skip_flags: set[str] | frozenset[str] = frozenset()) -> None:
    """Defines an absl flag for each field of dataclass ``cls`` (except ``skip_flags``), with the
    field's default; names already defined are kept."""
    for name, (kind, default) in _fields(cls).items():
        if name in skip_flags or name in FLAGS:
            continue
        help_text = f"{cls.__name__}.{name}"
        if kind is bool:
            flags.DEFINE_bool(name, default, help_text)
        elif kind is int:
            flags.DEFINE_integer(name, default, help_text)
        elif kind is float:
            flags.DEFINE_float(name, default, help_text)
        elif kind is str:
            flags.DEFINE_string(name, default, help_text)
        else:
            flags.DEFINE_enum(name, None if default is None else default.name.lower(),
                              [member.lower() for member in kind.__members__], help_text)


def update(config: Any) -> Any:
    """Sets each field of ``config`` still at its default to its flag's value where the command
    line set that flag (Monolith's rule: a value the code gave wins over the flag). Returns ``config``."""
    if not FLAGS.is_parsed():
        return config
    for name, (kind, default) in _fields(type(config)).items():
        if name not in FLAGS or getattr(config, name) != default:
            continue
        flag = FLAGS[name]
        if not flag.present:
            continue
        value = flag.value
        if isinstance(kind, type) and issubclass(kind, enum.Enum) and isinstance(value, str):
            value = kind[value.upper()]
        setattr(config, name, value)
    return config
