"""Construction-time checks shared by the field's quantizer layers (:mod:`mvq.quantize.fsq`,
:mod:`mvq.quantize.lfq`, :mod:`mvq.quantize.residual`): each refusal is an ``MvqError`` that
names the argument, the value found and a valid example; arguments spelled as
vector-quantize-pytorch spells them are refused with mvq's equivalent."""

from __future__ import annotations

import math

import torch
from torch import nn

from mvq.errors import MvqError


def check_int(layer: str, name: str, value: object, low: int, example: str,
              high: int | None = None) -> int:
    """``value`` as an int in [low, high]; MvqError otherwise."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
    if not ok or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise MvqError(f"{layer}: {name} must be an integer {bound}, found {value!r}; e.g. "
                       f"{example}")
    return value


def check_number(layer: str, name: str, value: object, example: str, *, low: float = 0.0,
                 low_open: bool = False, high: float | None = None) -> float:
    """``value`` as a finite float >= low (> low with ``low_open``, <= high); MvqError
    otherwise."""
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value) and (value > low if low_open else value >= low)
          and (high is None or value <= high))
    if not ok:
        bound = f"{'>' if low_open else '>='} {low:g}" + ("" if high is None else f", <= {high:g}")
        raise MvqError(f"{layer}: {name} must be a finite number {bound}, found {value!r}; "
                       f"e.g. {example}")
    return float(value)


def check_bool(layer: str, name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise MvqError(f"{layer}: {name} must be True or False, found {value!r}")
    return value


def refuse_unknown(layer: str, given: dict, renamed: dict[str, str], accepted: str) -> None:
    """MvqError for the first keyword of ``given``: ``renamed`` maps the other library's names
    to what to use in mvq; anything else is listed against the ``accepted`` arguments."""
    for name in given:
        if name in renamed:
            raise MvqError(f"{layer}: {name}= is vector-quantize-pytorch's argument; "
                           f"{renamed[name]}")
        raise MvqError(f"{layer}: unknown argument {name}={given[name]!r}; its arguments are "
                       f"{accepted}")


def linear(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` (an ``nn.Linear`` or ``nn.Identity``) in x's dtype, whatever the weights'
    dtype (fp32 maths under autocast: the caller has disabled it)."""
    if isinstance(layer, nn.Identity):
        return x
    bias = None if layer.bias is None else layer.bias.to(x.dtype)
    return nn.functional.linear(x, layer.weight.to(x.dtype), bias)


def tokens_of(x: torch.Tensor, channel_first: bool) -> tuple[torch.Tensor, tuple[int, ...]]:
    """``(B, ..., D)`` (or channel-first ``(B, D, ...)``) as ``(B*M, D)`` rows in position
    order, in at least fp32; also returns the grid ``...``."""
    if channel_first:
        x = x.movedim(1, -1)
    grid = tuple(x.shape[1:-1])
    rows = x.reshape(math.prod(x.shape[:-1]), x.shape[-1])  # (-1 fails on an empty batch)
    return (rows if rows.dtype == torch.float64 else rows.float()), grid


def from_tokens(rows: torch.Tensor, batch: int, grid: tuple[int, ...],
                channel_first: bool) -> torch.Tensor:
    """Inverse of :func:`tokens_of`: ``(B*M, D)`` rows back to the input's layout."""
    out = rows.reshape(batch, *grid, rows.shape[-1])
    return out.movedim(-1, 1) if channel_first else out
