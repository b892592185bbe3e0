"""Keyword options into a frozen settings object: one way for a public function to keep its keyword
interface (``f(x, max_rows=64, progress=True)``) while its body and helpers pass one validated value.

The public function takes ``**options: Unpack[SomeOptions]`` (a ``TypedDict``, so type checkers see
every name and type) and calls :func:`settings_from` to build the frozen dataclass of the same fields.
"""

from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

from lensteer.errors import ConfigError

_T = TypeVar("_T")


def settings_from(cls: type[_T], options: Mapping[str, Any], *, what: str) -> _T:
    """``cls(**options)`` for a dataclass ``cls``, refusing an unknown option, or a value outside a
    ``Literal`` field's choices, by name.

    Raises:
        ConfigError: An option ``cls`` has no field for (the message lists the allowed ones), or a
            value its ``Literal`` type does not allow.
    """
    assert is_dataclass(cls)
    allowed = sorted(f.name for f in fields(cls))
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown {what} options {unknown}; allowed: {allowed}")
    hints = get_type_hints(cls)
    for name, value in options.items():
        if get_origin(hints[name]) is Literal and value not in get_args(hints[name]):
            choices = " or ".join(repr(c) for c in get_args(hints[name]))
            raise ConfigError(f"{name} must be {choices}, got {value!r}")
    return cls(**options)
