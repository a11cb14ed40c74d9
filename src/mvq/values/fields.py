"""Typed, range-checked dataclass fields: one mechanism for every config section.

A config value is coerced to its dataclass field's annotated type (``int``, ``float``, ``bool``,
``str``, ``X | None``, ``tuple[float, float]``, ``tuple[int, ...]``) and then checked against a
`Range`. YAML reads ``5e-4`` (no dot) as a string and a command-line override arrives the
same way, so numbers written as text are accepted for numeric fields; anything else that does
not fit is one `MvqError` naming the key, what was expected, what was found and what to do.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any

from mvq.errors import MvqError


@dataclass(frozen=True)
class Range:
    """Allowed values of a field (of each element, for tuples): ``low`` <= v (< when
    ``low_open``), v <= ``high`` (< when ``high_open``), or one of ``choices``."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple | None = None

    def describe(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(map(str, self.choices))
        if self.low is not None and self.high is not None:
            return (f"in {'(' if self.low_open else '['}{self.low:g}, "
                    f"{self.high:g}{')' if self.high_open else ']'}")
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {self.high:g}")
        return parts[0] if parts else "any value"

    def admits(self, v: Any) -> bool:
        if self.choices is not None:
            return v in self.choices
        if self.low is not None and (v < self.low or (self.low_open and v == self.low)):
            return False
        if self.high is not None and (v > self.high or (self.high_open and v == self.high)):
            return False
        return True


ANY = Range()


def at_least(low: float) -> Range:
    return Range(low=low)


def positive() -> Range:
    """> 0 (learning rates, scales)."""
    return Range(low=0, low_open=True)


def unit_interval(high_open: bool = True) -> Range:
    """[0, 1) by default (decays, dropout, Adam betas)."""
    return Range(low=0, high=1, high_open=high_open)


def one_of(*choices) -> Range:
    return Range(choices=tuple(choices))


_NAMES = {int: "an integer", float: "a finite number", bool: "true or false", str: "text"}


def _fail(where: str, expected: str, value: Any) -> MvqError:
    return MvqError(f"{where} must be {expected}, found {value!r} ({type(value).__name__}); "
                    f"set {where}=VALUE in the config or on the command line")


def _scalar(value: Any, kind: type, where: str) -> Any:
    """``value`` as ``kind`` (int, float, bool or str), or MvqError."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise _fail(where, _NAMES[bool], value)
    if kind is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)  # e.g. a folder named 2024
        raise _fail(where, _NAMES[str], value)
    number = value
    if isinstance(value, str):  # YAML reads 5e-4 (no dot) and 1e3 as text
        try:
            number = float(value.strip()) if kind is float else _int_text(value)
        except ValueError:
            raise _fail(where, _NAMES[kind], value) from None
    if isinstance(number, bool) or not isinstance(number, (int, float)):
        raise _fail(where, _NAMES[kind], value)
    if not math.isfinite(number):
        raise _fail(where, "a finite number", value)
    if kind is int:
        if number != int(number):
            raise _fail(where, "an integer", value)
        return int(number)
    return float(number)


def _int_text(text: str) -> int | float:
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        return float(text)  # "1e3" -> 1000.0, integral check follows


def coerce(value: Any, annotation: Any, where: str) -> Any:
    """``value`` converted to the type ``annotation`` describes, or MvqError."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return coerce(value, inner, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _fail(where, "a list", value)
        if len(args) == 2 and args[1] is Ellipsis:
            kinds = [args[0]] * len(value)
            if not value:
                raise _fail(where, "a non-empty list", value)
        else:
            kinds = list(args)
            if len(value) != len(kinds):
                raise _fail(where, f"a list of {len(kinds)} values", value)
        return tuple(coerce(v, k, f"{where}[{i}]") for i, (v, k) in enumerate(zip(value, kinds)))
    if annotation in (int, float, bool, str):
        return _scalar(value, annotation, where)
    return value  # a type this mechanism does not describe (none in mvq's configs)


def check_range(value: Any, rng: Range, where: str) -> None:
    """MvqError unless ``value`` (each element of a tuple) lies in ``rng``; None passes."""
    if isinstance(value, tuple):  # name the element at fault, then the list it sits in
        for i, v in enumerate(value):
            if v is not None and not rng.admits(v):
                raise MvqError(f"each value of {where} must be {rng.describe()}; {where}[{i}] "
                               f"is {v!r} in {list(value)!r}; set {where}=[...] in the config "
                               "or on the command line")
        return
    if value is not None and not rng.admits(value):
        raise MvqError(f"{where} must be {rng.describe()}, found {value!r}; "
                       f"set {where}=VALUE in the config or on the command line")


def build_checked(cls: type, values: dict, where: str, ranges: dict[str, Range]) -> Any:
    """An instance of dataclass ``cls``: defaults overridden by ``values``, every field coerced to
    its annotated type and checked against ``ranges`` (missing names: any value of the type)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise MvqError(f"unknown config key {where}.{unknown[0]}: valid keys in '{where}' are "
                       f"{', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls)
    out = cls()
    for name in fields:
        key = f"{where}.{name}"
        value = coerce(values.get(name, getattr(out, name)), hints[name], key)
        check_range(value, ranges.get(name, ANY), key)
        setattr(out, name, value)
    return out
