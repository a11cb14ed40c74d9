"""Lookup-free quantization (MAGVIT-v2): a sign per channel, 2^bits implicit codes."""

from __future__ import annotations

from mvq.quantize.family import Family
from mvq.quantize.lfq import LFQ
from mvq.values.fields import Range

MAX_BITS = 20  # 2^20 ids: the largest codebook a token file takes (mvq.values.codes.MAX_CODEBOOK)

FAMILY = Family(
    name="lfq",
    summary="lookup-free quantization: one sign per channel, 2^bits implicit codes, "
            "commitment + entropy loss",
    bits="bits",
    build=lambda cfg: LFQ(cfg.bits, dim=cfg.dim, channel_first=True),
    codebook_size=lambda cfg: 1 << cfg.bits,
    fields={"bits": Range(low=1, high=MAX_BITS)},
    # MVQ over LFQ: the mask covers the bits signs
    secondary=lambda cfg: LFQ(cfg.bits, channel_first=True),
    rate=lambda bits: {"bits": bits},
)
