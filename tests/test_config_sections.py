"""Typed config sections: a field's type (its annotation) and rule (`setting`) checked on
construction, one line naming `section.key=value` and the fix; unknown keys refused."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import pytest

from lladax.config import ConfigError
from lladax.config_sections import Section, setting


@dataclasses.dataclass(frozen=True)
class Toy(Section):
    section: ClassVar[str] = "toy"

    count: int = setting(1, ">= 1")
    size: int = setting(-1, "-1 or >= 1")
    rate: float = setting(0.5, "(0, 1)")
    share: float = setting(0.0, "[0, 1]")
    scale: float = setting(1.0, "> 0", " (1 = unscaled)")
    name: str = setting("x", "non-empty")
    kind: str = setting("a", ("a", "b"))
    flag: bool = False
    seed: int = 0


def test_defaults_and_good_values_pass():
    assert Toy() == Toy.from_config({})
    assert Toy.from_config({"rate": 1e-3, "share": 1, "size": 4, "kind": "b"}).share == 1
    assert hash(Toy()) == hash(Toy())


@pytest.mark.parametrize(
    "changes, line",
    [
        (dict(count=1.5), "toy.count=1.5 must be an int: pass a valid --config.toy.count"),
        (dict(count=True), "toy.count=True must be an int: pass a valid --config.toy.count"),
        (dict(rate="fast"), "toy.rate='fast' must be a number: pass a valid --config.toy.rate"),
        (dict(flag=1), "toy.flag=1 must be true or false: pass a valid --config.toy.flag"),
        (dict(name=3), "toy.name=3 must be a string: pass a valid --config.toy.name"),
        (dict(count=0), "toy.count=0 must be an int >= 1: set --config.toy.count to an int >= 1"),
        (
            dict(size=0),
            "toy.size=0 must be -1 (fill) or an int >= 1: "
            "set --config.toy.size to -1 (fill) or an int >= 1",
        ),
        (
            dict(rate=1.0),
            "toy.rate=1.0 must be a number in (0, 1): set --config.toy.rate to a number in (0, 1)",
        ),
        (
            dict(share=-0.1),
            "toy.share=-0.1 must be a number in [0, 1]: "
            "set --config.toy.share to a number in [0, 1]",
        ),
        (
            dict(scale=0),
            "toy.scale=0 must be a number > 0: "
            "set --config.toy.scale to a number > 0 (1 = unscaled)",
        ),
        (
            dict(name=" "),
            "toy.name=' ' must be a non-empty string: set --config.toy.name to a non-empty string",
        ),
        (
            dict(kind="c"),
            "toy.kind='c' must be one of ('a', 'b'): set --config.toy.kind to one of ('a', 'b')",
        ),
    ],
)
def test_wrong_type_or_range_is_one_line(changes, line):
    with pytest.raises(ConfigError) as e:
        Toy(**changes)
    assert str(e.value) == line


def test_unknown_key_and_non_section():
    with pytest.raises(ConfigError) as e:
        Toy.from_config({"count": 2, "colour": "red"})
    assert str(e.value) == (
        "unknown config key toy.colour: the keys of toy are "
        "['count', 'flag', 'kind', 'name', 'rate', 'scale', 'seed', 'share', 'size']"
    )
    with pytest.raises(ConfigError, match=r"config section toy=\[1\] is not a section of keys"):
        Toy.from_config([1])
