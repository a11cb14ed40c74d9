"""Finite scalar quantization (Mentzer et al. 2023): no codebook to learn, prod(levels) codes."""

from __future__ import annotations

import math

from mvq.quantize.family import Family
from mvq.quantize.fsq import FSQ
from mvq.values.fields import at_least

FAMILY = Family(
    name="fsq",
    summary="finite scalar quantization: channels rounded to their levels, prod(levels) "
            "implicit codes, no codebook, no auxiliary loss",
    bits="sum(log2 levels)",
    build=lambda cfg: FSQ(list(cfg.levels), dim=cfg.dim, channel_first=True),
    codebook_size=lambda cfg: math.prod(cfg.levels),
    fields={"levels": at_least(3)},
)
