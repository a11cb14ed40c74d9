"""Finite scalar quantization (Mentzer et al. 2023): no codebook to learn, prod(levels) codes."""

from __future__ import annotations

import math

from mvq.fields import at_least
from mvq.quantize.family import Family
from mvq.quantize.fsq import FSQ

FAMILY = Family(
    name="fsq",
    summary="finite scalar quantization: channels rounded to their levels, prod(levels) "
            "implicit codes, no codebook, no auxiliary loss",
    bits="sum(log2 levels)",
    build=lambda cfg: FSQ(list(cfg.levels), dim=cfg.dim, channel_first=True),
    codebook_size=lambda cfg: math.prod(cfg.levels),
    fields={"levels": at_least(3)},
    # MVQ over FSQ: the mask covers the len(levels) rounded channels
    secondary=lambda cfg: FSQ(list(cfg.levels), channel_first=True),
)
