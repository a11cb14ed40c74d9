"""How a prior's codes are drawn: one `Decoding` value, checked once where it is made.

`mvq sample`, `mvq evaluate --prior`, `mvq.inference.sample` and `mvq.evaluation` all take a
`Decoding` instead of listing the options again; the prior checks which of them it takes
(`Decoding.for_prior`), once per call path, before any work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from mvq.errors import MvqError


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_sampling(temperature: float, top_k: int | None, top_p: float | None = None) -> None:
    """MvqError unless temperature is finite and >= 0 (0: greedy), top_k is None or >= 1 and
    top_p is None or in (0, 1]."""
    if not _number(temperature) or not math.isfinite(temperature) or temperature < 0:
        raise MvqError(f"temperature must be a finite number >= 0 (0: greedy), got {temperature!r}")
    if top_k is not None and (not _integer(top_k) or top_k < 1):
        raise MvqError(f"top_k must be None or an integer >= 1, got {top_k!r}")
    if top_p is not None and (not _number(top_p) or not 0 < top_p <= 1):
        raise MvqError(f"top_p must be None or a number in (0, 1], got {top_p!r}")


SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1  # torch.Generator.manual_seed's range


@dataclass(frozen=True)
class Draw:
    """How the networks draw each token: temperature (0: greedy), top_k / top_p filtering.

    The per-token part of a `Decoding`, as the networks (GPT, MaskGIT, PixelCNN) take it. It
    checks nothing: a prior checks the values once (``check_sample``) before it builds one.
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None


@dataclass(frozen=True)
class Decoding:
    """The decoding of a prior's sample: temperature (0: greedy), top_k / top_p filtering,
    MaskGIT's ``steps`` and ``choice_temperature`` (refused by the other priors), and the
    ``seed`` of the generator the codes (and MVQ's random mask bits) are drawn from.

    None leaves an option at the prior's own default. Invalid values raise `MvqError` when the
    value is made, so a `Decoding` in hand is a checked one.
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    steps: int | None = None
    choice_temperature: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        check_sampling(self.temperature, self.top_k, self.top_p)
        if self.steps is not None and (not _integer(self.steps) or self.steps < 1):
            raise MvqError(f"steps must be None or an integer >= 1, got {self.steps!r}")
        ct = self.choice_temperature
        if ct is not None and (not _number(ct) or not math.isfinite(ct) or ct < 0):
            raise MvqError(f"choice_temperature must be None or a finite number >= 0, got {ct!r}")
        if not _integer(self.seed) or not SEED_MIN <= self.seed <= SEED_MAX:
            raise MvqError(f"seed must be an integer in [{SEED_MIN}, {SEED_MAX}] (what a torch "
                           f"generator takes), got {str(self.seed)[:40]}")

    def options(self) -> dict:
        """The keywords for ``prior.sample`` that are set (the seed is not one of them)."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name != "seed" and getattr(self, f.name) is not None}

    def for_prior(self, prior) -> dict:
        """`options`, checked against ``prior``: an option it does not take (``steps`` for a
        GPT) is refused naming the options it does take."""
        opts = self.options()
        prior.check_decoding(opts)
        return opts
