"""MoVQ's multichannel VQ on the one-level backbone: each D-vector cut into model.heads chunks
of D / heads, every chunk looked up in one shared codebook of K entries; ids (B, H, W, heads),
chunk k at id k (vector-quantize-pytorch's ``heads`` with one shared codebook)."""

from __future__ import annotations

from mvq.errors import MvqError
from mvq.quantize.families.vq import check_codebook, split_rate, vq_settings
from mvq.quantize.family import Family
from mvq.quantize.multichannel import MultiChannelVectorQuantize
from mvq.values.fields import at_least

RATE_HEADS = 2  # a rate sweep's chunks per vector: K = 2^(bits / 2) each


def _check(cfg) -> None:
    check_codebook(cfg)
    if cfg.dim % cfg.heads:
        divisors = [d for d in range(1, cfg.dim + 1) if cfg.dim % d == 0]
        raise MvqError(f"model.heads={cfg.heads} must divide model.dim={cfg.dim} (each vector "
                       f"is cut into heads equal chunks); pick one of {divisors}")


FAMILY = Family(
    name="multichannel",
    summary="MoVQ's multichannel VQ: each vector cut into heads chunks, all looked up in one "
            "shared codebook of K entries; heads ids per position",
    bits="heads * log2 K",
    build=lambda cfg: MultiChannelVectorQuantize(cfg.dim, cfg.codebook_size, channels=cfg.heads,
                                                 channel_first=True, **vq_settings(cfg)),
    codebook_size=lambda cfg: cfg.codebook_size,
    fields={"heads": at_least(1)},
    reads_codebook_size=True,
    depth=lambda cfg: cfg.heads,
    check=_check,
    rate=split_rate("heads", RATE_HEADS),
)
