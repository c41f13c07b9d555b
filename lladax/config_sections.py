"""Typed configuration sections: frozen dataclasses whose fields carry their own type and range.

    @dataclasses.dataclass(frozen=True)
    class EvalConfig(Section):
        section: ClassVar[str] = "eval"
        every: int = setting(100, ">= 0")  # the type is the annotation, the range the rule
        batch_size: int = 16  # no rule: any int

The sections of a run config (`lladax.train.run_config`) are such classes, each beside the wing
that reads it. A field's type is its annotation: `int`, `float` (any number), `bool` or `str`. Its
rule is "" (any value of the type), ">= a" or "> a", an interval such as "[a, b)" (either end
open or closed), "-1 or >= 1" (-1 = fill), "non-empty" (a string with a non-blank character), or
a tuple of the values allowed. Building a section checks every field, in order, and raises a
one-line `ConfigError` naming `section.key=value` and the fix; `from_config` also refuses a key
the section does not have. Checks across fields go in the section's own `__post_init__`.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Self

from lladax.config import ConfigError

_KINDS = {int: "an int", float: "a number", bool: "true or false", str: "a string"}


def setting(default: Any, rule: str | tuple[Any, ...] = "", hint: str = "") -> Any:
    """A section field with its `default`, its range `rule` (see the module doc) and a `hint`
    that ends the fix of a value out of range, e.g. " (0 saves the initial params ...)"."""
    return dataclasses.field(default=default, metadata={"rule": rule, "hint": hint})


def _has_type(value: Any, kind: type) -> bool:
    """Whether `value` is a `kind` (an int counts as a float; a bool is no number)."""
    if kind is bool or isinstance(value, bool):
        return kind is bool and isinstance(value, bool)
    return isinstance(value, (int, float) if kind is float else kind)


def _holds(value: Any, rule: str | tuple[Any, ...]) -> bool:
    """Whether `value` (of the field's type) meets `rule`."""
    if isinstance(rule, tuple):
        return value in rule
    if rule.startswith("-1 or "):
        return value == -1 or _holds(value, rule[6:])
    if rule == "non-empty":
        return value.strip() != ""
    if rule[:1] in ("[", "("):
        lo, hi = (float(x) for x in rule[1:-1].split(","))
        return (lo <= value if rule[0] == "[" else lo < value) and (
            value <= hi if rule[-1] == "]" else value < hi
        )
    if rule.startswith(">"):
        bound = float(rule.lstrip(">= "))
        return value >= bound if rule.startswith(">=") else value > bound
    return True


def _wanted(kind: type, rule: str | tuple[Any, ...]) -> str:
    """What a value must be, in words: "an int >= 0", "a number in [0, 1)", "one of (...)"."""
    if isinstance(rule, tuple):
        return f"one of {rule}"
    if rule == "non-empty":
        return "a non-empty string"
    if rule.startswith("-1 or "):
        return f"-1 (fill) or {_KINDS[kind]} {rule[6:]}"
    return f"{_KINDS[kind]} {'in ' if rule[0] in '[(' else ''}{rule}"


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


class Section:
    """Base of a frozen dataclass that is one section of a run config (see the module doc)."""

    section: ClassVar[str]  # the section's name in the run config, e.g. "train"

    def __post_init__(self) -> None:
        types = _field_types(type(self))
        for f in dataclasses.fields(self):
            key, value, kind = f"{self.section}.{f.name}", getattr(self, f.name), types[f.name]
            rule = f.metadata.get("rule", "")
            if not _has_type(value, kind):
                raise ConfigError(
                    f"{key}={value!r} must be {_KINDS[kind]}: pass a valid --config.{key}"
                )
            if rule and not _holds(value, rule):
                what = _wanted(kind, rule)
                raise ConfigError(
                    f"{key}={value!r} must be {what}: set --config.{key} to {what}"
                    + f.metadata.get("hint", "")
                )

    @classmethod
    def from_config(cls, values: Mapping[str, Any]) -> Self:
        """The section from its part of a run config (a ConfigDict section or a dict); a key it
        lacks keeps its default (a config written before the key existed)."""
        values = section_values(cls.section, values)
        names = sorted(f.name for f in dataclasses.fields(cls))
        for key in sorted(set(values) - set(names)):
            raise ConfigError(
                f"unknown config key {cls.section}.{key}: the keys of {cls.section} are {names}"
            )
        return cls(**values)


def section_values(section: str, values: Any) -> dict[str, Any]:
    """{key: value} of run-config section `section` (a ConfigDict or a mapping); anything else
    is a one-line ConfigError."""
    if not hasattr(values, "keys"):
        raise ConfigError(
            f"config section {section}={values!r} is not a section of keys: set "
            f"--config.{section}.KEY=VALUE instead"
        )
    return dict(values)
