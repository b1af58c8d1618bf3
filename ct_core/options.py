"""Recipe sections -> validated dataclasses, with one-line errors naming the
option as the user wrote it.

Every configuration dataclass of the project (the model, the optimizer, the
trainer, evaluation, each front end's ``data`` options) is built from its
recipe mapping by :func:`build_options`: unknown keys and values of the
wrong type are refused here, from the field annotations, before the
dataclass's own ``validate(key)`` checks ranges and relations. ``key`` turns
a field name into the name the user typed (``memory.seq_len``), so an error
reads the same as the command line that caused it.

Example::

    build_options(TrainerConfig, {"steps": "abc"}, "trainer")
    # ConfigError: trainer.steps='abc' must be an integer
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Callable, Mapping, TypeVar

from ct_core.errors import ConfigError

T = TypeVar("T")


def section_key(section: str) -> Callable[[str], str]:
    """``field -> "section.field"``."""
    return lambda name: f"{section}.{name}"


def build_options(cls: type[T], values: Mapping[str, Any], key: Callable[[str], str] | str) -> T:
    """Dataclass ``cls`` from ``values``, checked and validated.

    ``key`` names a field as the user writes it (a section name ``"trainer"``
    stands for ``"trainer.<field>"``). Unknown keys, then wrongly typed values,
    then the dataclass's ``validate(key)`` (when it has one) raise a one-line
    :class:`ConfigError`. Ints given to float fields become floats and lists
    given to tuple fields become tuples; nothing else is converted.
    """
    key = section_key(key) if isinstance(key, str) else key
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        name = key(unknown[0])
        section = name.rpartition(".")[0] or "this section"
        allowed = ", ".join(sorted(fields))
        raise ConfigError(f"{name} is not an option of {section}; allowed: {allowed}")
    hints = typing.get_type_hints(cls)
    checked = {name: check_type(value, hints[name], key(name)) for name, value in values.items()}
    obj = cls(**checked)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate(key)
    return obj


def check_type(value: Any, annotation: Any, name: str) -> Any:
    """``value`` as a value of ``annotation`` (int, float, bool, str, a tuple
    of those of fixed or any length, ``X | None``, ``Any``), or a one-line
    error naming ``name``."""
    if annotation is Any:
        return value
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        try:
            return check_type(value, inner, name)
        except ConfigError:
            raise ConfigError(f"{name}={value!r} must be {describe(inner)} or null") from None
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        try:
            if not isinstance(value, (list, tuple)):
                raise ConfigError(name)
            return tuple(check_type(v, args[0], name) for v in value)
        except ConfigError:
            raise ConfigError(f"{name}={value!r} must be a list (each {describe(args[0])}), e.g. [2, 4]") from None
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{name}={value!r} must be a list of {len(args)} values, e.g. [0.9, 0.999]")
        return tuple(check_type(v, a, name) for v, a in zip(value, args))
    if origin in (dict, Mapping) or annotation is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{name}={value!r} must be a mapping")
        return dict(value)
    if annotation is bool:
        ok = isinstance(value, bool)
    elif annotation is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif annotation is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
        value = float(value) if ok else value
    elif annotation is str:
        ok = isinstance(value, str)
    else:
        raise TypeError(f"{name}: options of type {annotation!r} are not supported")
    if not ok:
        raise ConfigError(f"{name}={value!r} must be {describe(annotation)}")
    return value


def describe(annotation: Any) -> str:
    """``an integer``, ``a number``, ``true or false``, ``a string``."""
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        annotation, str(annotation)
    )
