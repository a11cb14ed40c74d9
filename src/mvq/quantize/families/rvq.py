"""Residual VQ: model.depth VQ stages of K entries, each quantizing the residual of the ones
before; ids (B, H, W, depth), one per stage, first stage first."""

from __future__ import annotations

from mvq.quantize.families.vq import check_codebook, split_rate, vq_settings
from mvq.quantize.family import Family
from mvq.quantize.residual import ResidualVQ
from mvq.values.fields import at_least

RATE_DEPTH = 2  # a rate sweep's stages: K = 2^(bits / 2) each

FAMILY = Family(
    name="rvq",
    summary="residual VQ: depth stages of K entries, each quantizing what the earlier ones "
            "left; depth ids per position",
    bits="depth * log2 K",
    build=lambda cfg: ResidualVQ(cfg.dim, cfg.codebook_size, cfg.depth, channel_first=True,
                                 **vq_settings(cfg)),
    codebook_size=lambda cfg: cfg.codebook_size,
    fields={"depth": at_least(1)},
    reads_codebook_size=True,
    depth=lambda cfg: cfg.depth,
    check=check_codebook,
    rate=split_rate("depth", RATE_DEPTH),
)
