"""The rule builders of config validation: a rule is a function (field name, value) that
returns, or raises `ConfigError` naming the field and the rule the value breaks.
spec/validation.py applies them to ModelConfig and its sub-configs.  Messages show values
through a bounded repr, so that neither a huge int (which `str()` refuses past 4300 digits)
nor a deeply nested list turns a ConfigError into another exception.
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Callable
from typing import get_args

from lmref.spec.config import ConfigError

MAX_SIZE = 2**63 - 1  # sizes, counts and positions are int64 in every backend


def fail(field_name: str, rule: str) -> None:
    raise ConfigError(f"{field_name}: {rule}")


class BoundedRepr(reprlib.Repr):
    """repr() cut short: long strings and containers elided, ints past 60 digits by size."""

    def __init__(self) -> None:
        super().__init__()
        self.maxstring = self.maxother = 80
        self.maxlong = 60

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 192:  # about 58 digits; str() itself refuses past 4300
            return f"{'-' if x < 0 else ''}<an integer of {x.bit_length()} bits>"
        return super().repr_int(x, level)


show = BoundedRepr().repr


Rule = Callable[[str, object], None]  # (field name, value): raise ConfigError or return


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def positive_int(name: str, value: object) -> None:
    if not is_int(value) or value < 1:
        fail(name, f"must be a positive integer, got {show(value)}")
    if value > MAX_SIZE:
        fail(name, f"must be at most 2**63 - 1, got {show(value)}")


def non_negative_int(name: str, value: object) -> None:
    if not is_int(value) or value < 0:
        fail(name, f"must be a non-negative integer, got {show(value)}")
    if value > MAX_SIZE:
        fail(name, f"must be at most 2**63 - 1, got {show(value)}")


def integer(name: str, value: object) -> None:
    """Any int that fits int64 (an index that may count from the end), not a bool."""
    if not is_int(value) or abs(value) > MAX_SIZE:
        fail(name, f"must be an integer of at most 2**63 - 1 in size, got {show(value)}")


def boolean(name: str, value: object) -> None:
    if not isinstance(value, bool):  # "false" from a JSON file would otherwise read as true
        fail(name, f"must be True or False, got {show(value)}")


def string(name: str, value: object) -> None:
    if not isinstance(value, str):
        fail(name, f"must be a string, got {show(value)}")


def optional_string(name: str, value: object) -> None:
    if value is not None and not isinstance(value, str):
        fail(name, f"must be a string or None, got {show(value)}")


def is_real(value: object) -> bool:
    """A finite int or float (NumPy's float64 is a float); not a bool, not an int no float holds."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond the largest float
        return False


def real(rule: str, holds: Callable[[float], bool]) -> Rule:
    """A finite real number for which `holds`; `rule` words it ("must be > 0")."""
    def check(name: str, value: object) -> None:
        if not is_real(value):
            fail(name, f"must be a finite real number, got {show(value)}")
        if not holds(value):
            fail(name, f"{rule}, got {show(value)}")
    return check


POSITIVE = real("must be > 0", lambda x: x > 0)
AT_LEAST_ONE = real("must be >= 1", lambda x: x >= 1)
NON_NEGATIVE = real("must be >= 0", lambda x: x >= 0)
FRACTION = real("must be in (0, 1]", lambda x: 0 < x <= 1)


def optional(rule: Rule) -> Rule:
    def check(name: str, value: object) -> None:
        if value is not None:
            rule(name, value)
    return check


def choice(literal) -> Rule:
    choices = get_args(literal)

    def check(name: str, value: object) -> None:
        if not (isinstance(value, str) and value in choices):
            fail(name, f"{show(value)} is not one of {list(choices)}")
    return check


def pattern(literal) -> Rule:
    """A non-empty tuple of `literal`'s choices (its length is checked against n_layers later)."""
    entry = choice(literal)

    def check(name: str, value: object) -> None:
        if not isinstance(value, tuple):  # a string would be read letter by letter
            fail(name, f"must be a tuple of layer kinds, got {show(value)}")
        if not value:
            fail(name, "must name at least one layer kind")
        for kind in value:
            entry(name, kind)
    return check


def sub_config(cls: type, rules: dict[str, Rule]) -> Rule:
    """None, or an instance of `cls` whose every field passes its rule."""
    def check(name: str, value: object) -> None:
        if value is None:
            return
        if not isinstance(value, cls):  # from_dict builds the class from a JSON object
            fail(name, f"must be a {cls.__name__} or None, got {show(value)}")
        for field_name, rule in rules.items():
            rule(f"{name}.{field_name}", getattr(value, field_name))
    return check
