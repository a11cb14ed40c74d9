"""Finite scalar quantization (Mentzer et al. 2023): no codebook to learn, prod(levels) codes."""

from __future__ import annotations

import math

from mvq.quantize.family import Family
from mvq.quantize.fsq import FSQ
from mvq.values.fields import at_least

# the FSQ paper's levels for about 2^8 ... 2^16 codes (Mentzer et al. 2023, Table 1); below
# 2^8, channels of 4 levels (2 bits each)
PAPER_LEVELS = {8: (8, 6, 5), 10: (8, 5, 5, 5), 12: (7, 5, 5, 5, 5), 14: (8, 8, 8, 6, 5),
                16: (8, 8, 8, 5, 5, 5)}


def levels_for(bits: int) -> tuple[int, ...]:
    """Levels of about ``bits`` bits per token: the paper's where it gives some, one channel
    of 2^bits levels (at least 3) up to 3 bits, else ceil(bits / 2) channels of 4 levels."""
    if bits <= 3:  # one channel of about 2^bits levels (at least 3)
        return PAPER_LEVELS.get(bits, (max(3, 2**bits),))
    return PAPER_LEVELS.get(bits, (4,) * -(-bits // 2))


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
    rate=lambda bits: {"levels": levels_for(bits)},
)
