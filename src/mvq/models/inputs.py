"""The checks at the tokenizers' public boundary: images into ``encode``, codes into ``decode``.

Every tokenizer runs these before any network sees the input, so a wrong dtype, shape or value
is one `MvqError` saying what was expected and what was found, never a torch error deep
inside a convolution or, worse, silently wrong codes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch

from mvq.errors import MvqError
from mvq.values.codes import Codes


@dataclass(frozen=True)
class CodeLayout:
    """Per-image shapes of a tokenizer's codes and the codebook each id indexes.

    primary: shape of one image's primary ids, e.g. (h, w) or (h, w, c) for MoVQ.
    secondary / mask: the same for secondary ids / mask bits, or None when the model has none.
    """

    primary: tuple[int, ...]
    primary_codes: int
    secondary: tuple[int, ...] | None = None
    secondary_codes: int = 0
    mask: tuple[int, ...] | None = None


def _shape(t: torch.Tensor) -> str:
    return f"{tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}"


_VALUES_CHECKED: ContextVar[bool] = ContextVar("mvq_values_checked", default=False)


@contextmanager
def values_checked() -> Iterator[None]:
    """Inside, a tokenizer's forward checks its images' shape and dtype but not their values:
    the caller has (the training engine reads its first batch at the door; the data set's
    conversion keeps the rest in [0, 1], and a NaN shows in the loss it watches). Reading the
    values costs a device sync per step on a GPU."""
    token = _VALUES_CHECKED.set(True)
    try:
        yield
    finally:
        _VALUES_CHECKED.reset(token)


def values_deferred() -> bool:
    """Whether `values_checked` is in force."""
    return _VALUES_CHECKED.get()


def check_images(x, channels: int, size: int, model: str, values: bool = True) -> None:
    """MvqError unless ``x`` is a float tensor (B, channels, size, size); with ``values`` its
    entries must also be finite and in [0, 1] (one pass over the batch)."""
    expected = f"images (B, {channels}, {size}, {size}), float in [0, 1]"
    if not isinstance(x, torch.Tensor):
        raise MvqError(f"this {model} tokenizer expects {expected} as a torch.Tensor, found "
                       f"{type(x).__name__}; convert with torch.as_tensor(...).float()")
    if x.dim() != 4 or tuple(x.shape[1:]) != (channels, size, size):
        raise MvqError(f"this {model} tokenizer expects {expected}, found {_shape(x)}: resize "
                       "the images or set data/model channels and image_size to match")
    if not x.is_floating_point():
        hint = ("divide 0..255 pixels by 255.0" if x.dtype == torch.uint8
                else "convert with .float()")
        raise MvqError(f"this {model} tokenizer expects {expected}, found {_shape(x)}: {hint}")
    if values and x.numel():
        # one pass and one device sync (this runs on every training step): NaN propagates
        # through aminmax, and an infinite pixel lands outside [0, 1]
        lo, hi = (float(v) for v in torch.stack(torch.aminmax(x.detach())).tolist())
        if math.isnan(lo) or math.isnan(hi):
            raise MvqError(f"this {model} tokenizer expects {expected}, found NaN or infinite "
                           "pixels: clean the input")
        if lo < 0 or hi > 1:
            if math.isinf(lo) or math.isinf(hi):
                raise MvqError(f"this {model} tokenizer expects {expected}, found NaN or "
                               "infinite pixels: clean the input")
            hint = "divide 0..255 pixels by 255.0" if hi > 1.5 else "clamp them with .clamp(0, 1)"
            raise MvqError(f"this {model} tokenizer expects {expected}, found values in "
                           f"[{lo:g}, {hi:g}]: {hint}")


def _ids(t, name: str, shape: tuple[int, ...], k: int, model: str) -> torch.Tensor:
    expected = f"integer ids (B, {', '.join(map(str, shape))}) in [0, {k})"
    if not isinstance(t, torch.Tensor):
        raise MvqError(f"{model} codes: {name} must be {expected} as a torch.Tensor, found "
                       f"{type(t).__name__}")
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise MvqError(f"{model} codes: {name} must be {expected}, found {_shape(t)}: pass the "
                       "ids encode() returned (int64), or convert with .long()")
    if t.dim() != len(shape) + 1 or tuple(t.shape[1:]) != shape:
        raise MvqError(f"{model} codes: {name} must be {expected}, found {_shape(t)}: codes "
                       "from another model or image size?")
    if t.numel():
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi >= k:
            raise MvqError(f"{model} codes: {name} must be {expected}, found ids in [{lo}, {hi}]: "
                           "codes from a tokenizer with another codebook size?")
    return t.long()


def _mask(t, shape: tuple[int, ...], model: str) -> torch.Tensor:
    expected = f"mask bits (B, {', '.join(map(str, shape))}), bool or 0/1"
    if not isinstance(t, torch.Tensor):
        raise MvqError(f"{model} codes: mask must be {expected} as a torch.Tensor, found "
                       f"{type(t).__name__}")
    if t.dim() != len(shape) + 1 or tuple(t.shape[1:]) != shape:
        raise MvqError(f"{model} codes: mask must be {expected}, found {_shape(t)}")
    if t.dtype == torch.bool:
        return t
    if t.is_complex() or (t.numel() and not bool(((t == 0) | (t == 1)).all())):
        raise MvqError(f"{model} codes: mask must be {expected}, found {_shape(t)} with values "
                       "other than 0 and 1: pass the mask encode() returned")
    return t.bool()


def check_codes(codes, layout: CodeLayout, model: str) -> Codes:
    """``codes`` checked against ``layout``: ids int64 in range, masks bool, one batch size.
    Returns them normalised (ids as int64, 0/1 masks as bool); MvqError otherwise."""
    if not isinstance(codes, Codes):
        raise MvqError(f"{model} decode expects mvq.Codes (from encode or a prior), found "
                       f"{type(codes).__name__}; wrap ids as mvq.values.codes.Codes(primary, ...)")
    primary = _ids(codes.primary, "primary", layout.primary, layout.primary_codes, model)
    parts = {"secondary": codes.secondary, "mask": codes.mask}
    wanted = {"secondary": layout.secondary, "mask": layout.mask}
    for name, have in parts.items():
        if have is None and wanted[name] is not None:
            raise MvqError(f"{model} codes need {name} (B, {', '.join(map(str, wanted[name]))}); "
                           "these codes have none: codes from another model?")
        if have is not None and wanted[name] is None:
            raise MvqError(f"{model} codes have no {name}, found one {_shape(have)}: codes from "
                           "another model?")
    secondary = mask = None
    if layout.secondary is not None:
        secondary = _ids(codes.secondary, "secondary", layout.secondary, layout.secondary_codes,
                         model)
    if layout.mask is not None:
        mask = _mask(codes.mask, layout.mask, model)
    sizes = {len(t) for t in (primary, secondary, mask) if t is not None}
    if len(sizes) > 1:
        raise MvqError(f"{model} codes: primary, secondary and mask must share one batch size, "
                       f"found {sorted(sizes)}")
    return Codes(primary, secondary, mask, dict(codes.meta))
