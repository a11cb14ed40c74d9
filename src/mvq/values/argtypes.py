"""argparse ``type=`` helpers and a parser whose errors are one line.

A bad option value is caught where it is parsed (``--top-k 0``, ``--temperature nan``,
``--scale 0``), so the user reads one line naming the option, what it takes and what it got,
instead of a traceback from deep inside the command or a value silently ignored.
"""

from __future__ import annotations

import argparse
import math
import os
from typing import NoReturn

from mvq.errors import MvqError
from mvq.runtime.devices import check_device


class OneLineParser(argparse.ArgumentParser):
    """ArgumentParser that reports a usage error as one line (plus a --help hint), exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(text: str, kind: type) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected {'an integer' if kind is int else 'a number'}, found {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, found {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (counts, steps, batch sizes, scales)."""
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, found {text}")
    return value


def seed(text: str) -> int:
    """A random seed: an integer a torch generator takes (0 .. 2**64 - 1)."""
    value = _number(text, int)
    if not 0 <= value <= 2**64 - 1:
        raise argparse.ArgumentTypeError(f"expected a seed from 0 to 2**64 - 1, found {text}")
    return int(value)


def positive_float(text: str) -> float:
    """A finite number > 0 (learning rates, temperatures)."""
    value = _number(text, float)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, found {text}")
    return value


def open_fraction(text: str) -> float:
    """A number strictly between 0 and 1 (a validation share)."""
    value = _number(text, float)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1 (exclusive), "
                                         f"found {text}")
    return value


def threads(text: str) -> int:
    """A thread count >= 1, at most a sane multiple of this machine's cores."""
    value = positive_int(text)
    cores = os.cpu_count() or 1
    if value > 4 * cores:
        raise argparse.ArgumentTypeError(f"expected at most {4 * cores} threads "
                                         f"(4x the {cores} cores here), found {value}")
    return value



def device_name(text: str) -> str:
    """auto, cpu, cuda, cuda:N or mps, and present on this machine."""
    try:
        check_device(text)
    except MvqError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def top_p_fraction(text: str) -> float:
    """A nucleus mass in (0, 1] (--top-p; 1 keeps every id)."""
    value = _number(text, float)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], found {text}")
    return value


def class_list(text: str) -> list[int]:
    """One class id or a comma list of them, each >= 0 (--class 3, --class 0,1,2)."""
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a class id or a comma list of them (0,1,2), found {text!r}") from None
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected class ids >= 0, found {text}")
    return values
