"""Construction-time checks shared by every quantizer layer (``VectorQuantize``,
``MaskedVectorQuantize``, ``MultiChannelVectorQuantize``, ``FSQ``, ``LFQ``, ``ResidualVQ``):
each refusal is an ``MvqError`` that names the layer, the argument, the value found and a valid
example; arguments spelled as vector-quantize-pytorch spells them are refused with mvq's
equivalent. The VQ codebook arguments (``beta``, ``ema``, ...) are checked by one function,
`check_vq_kwargs`, for every layer that owns codebooks."""

from __future__ import annotations

import math

import torch
from torch import nn

from mvq.errors import MvqError
from mvq.runtime.memory import check_fits

# vector-quantize-pytorch's VectorQuantize / ResidualVQ arguments and what to give mvq instead
VQ_RENAMED = {
    "commitment_weight": "give beta=, the commitment weight (e.g. beta=0.25)",
    "ema_update": "give ema=True or ema=False",
    "learnable_codebook": "give ema=False for codebooks trained by the gradient codebook loss",
    "threshold_ema_dead_code": "give restart_dead=True and dead_threshold= (expected "
                               "assignments per batch, e.g. dead_threshold=0.03)",
    "accept_image_fmap": "pass channel_first=True for (B, D, H, W) maps",
    "codebook_dim": "not supported by this layer: VectorQuantize takes codebook_dim= (a "
                    "low-dimensional lookup); here project the input to the size you want first",
    "heads": "not supported: mvq's VQ has one head (MultiChannelVectorQuantize splits each "
             "vector into channels= chunks over one shared codebook)",
    "separate_codebook_per_head": "not supported: mvq's VQ has one head",
    "use_cosine_sim": "not supported by this layer (Euclidean distance): VectorQuantize takes "
                      "cosine=True",
    "rotation_trick": "not supported by this layer (straight-through estimator): "
                      "VectorQuantize takes rotation_trick=True",
    "orthogonal_reg_weight": "not supported",
    "stochastic_sample_codes": "not supported: mvq's VQ takes the nearest code",
    "sample_codebook_temp": "not supported: mvq's VQ takes the nearest code",
    "kmeans_iters": "not supported: give kmeans_init=True (10 iterations)",
    "sync_kmeans": "not supported: k-means runs on rank 0 and is broadcast",
    "sync_codebook": "not supported: EMA statistics are always all-reduced under DDP",
}
# VectorQuantize's own spellings of vector-quantize-pytorch's lookup options
LOOKUP_RENAMED = {"use_cosine_sim": "give cosine=True (inputs and codes l2-normalised)"}
VQ_ARGUMENTS = ("beta", "ema", "decay", "restart_dead", "dead_threshold", "kmeans_init", "eps")


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


def check_optional_int(layer: str, name: str, value: object, low: int, example: str) -> int | None:
    """None (the documented default) or an int >= low; 0 is refused, not read as None."""
    return None if value is None else check_int(layer, name, value, low, example)


def check_choice(layer: str, name: str, value: object, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise MvqError(f"{layer}: {name} must be one of {', '.join(map(repr, choices))}, "
                       f"found {value!r}")
    return value


def check_module(layer: str, name: str, value: object) -> nn.Module | None:
    if value is not None and not isinstance(value, nn.Module):
        raise MvqError(f"{layer}: {name} must be a torch.nn.Module (or None for the default), "
                       f"found {type(value).__name__}")
    return value


def check_codebook(layer: str, codebook_size: int, dim: int) -> None:
    """MvqError when a K x D codebook (its weights and EMA sums, fp32) does not fit in memory."""
    check_fits(3 * 4 * codebook_size * dim, f"{layer}'s {codebook_size} x {dim} codebook",
               "lower codebook_size or dim")


def check_projections(layer: str, dim: int, inner: int) -> None:
    """MvqError when the dim <-> inner projections (two fp32 matrices) do not fit in memory."""
    check_fits(2 * 4 * dim * inner, f"{layer}'s {dim} x {inner} projections", "lower dim")


def check_vq_kwargs(layer: str, kwargs: dict, accepted: str,
                    renamed: dict[str, str] | None = None) -> dict:
    """The codebook arguments of a VQ layer (``beta``, ``ema``, ``decay``, ``restart_dead``,
    ``dead_threshold``, ``kmeans_init``, ``eps``), checked; any other keyword is refused by
    name (vector-quantize-pytorch's with mvq's equivalent; ``renamed`` adds the layer's own).
    ``accepted`` lists the layer's other arguments for the message. Returns the known ones."""
    known = {name: kwargs[name] for name in VQ_ARGUMENTS if name in kwargs}
    refuse_unknown(layer, {k: v for k, v in kwargs.items() if k not in known},
                   {**VQ_RENAMED, **(renamed or {})},
                   f"{accepted} and the codebooks' {', '.join(VQ_ARGUMENTS)}")
    for name in ("ema", "restart_dead", "kmeans_init"):
        if name in known:
            check_bool(layer, name, known[name])
    if "beta" in known:
        check_number(layer, "beta", known["beta"], "beta=0.25")
    if "decay" in known:
        check_number(layer, "decay", known["decay"], "decay=0.99", low_open=True, high=1.0)
    if "dead_threshold" in known:
        check_number(layer, "dead_threshold", known["dead_threshold"], "dead_threshold=0.03")
    if "eps" in known:
        check_number(layer, "eps", known["eps"], "eps=1e-5", low_open=True)
    return known


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
    """Inverse of `tokens_of`: ``(B*M, D)`` rows back to the input's layout."""
    out = rows.reshape(batch, *grid, rows.shape[-1])
    return out.movedim(-1, 1) if channel_first else out
