"""Nearest-code vector quantization (VQ-VAE): one learned codebook of K entries."""

from __future__ import annotations

from mvq.errors import MvqError
from mvq.quantize.family import Family
from mvq.quantize.layers import VectorQuantize


def vq_settings(cfg) -> dict:
    """The codebook settings of the model config (beta, EMA, dead-code restart, k-means)."""
    return dict(beta=cfg.beta, ema=cfg.ema, decay=cfg.decay, restart_dead=cfg.restart_dead,
                kmeans_init=cfg.kmeans_init)


def check_codebook(cfg) -> None:
    """K >= 2: a one-entry codebook is a 0-bit code."""
    if cfg.codebook_size < 2:
        raise MvqError(f"model.codebook_size must be >= 2 for model.quantizer={cfg.quantizer} "
                       f"(one entry is a 0-bit code), found {cfg.codebook_size}; set "
                       "model.codebook_size=16 or more")


FAMILY = Family(
    name="vq",
    summary="nearest-code VQ: one learned codebook of K entries (VQ-VAE, EMA updates)",
    bits="log2 K",
    build=lambda cfg: VectorQuantize(cfg.dim, cfg.codebook_size, channel_first=True,
                                     **vq_settings(cfg)),
    codebook_size=lambda cfg: cfg.codebook_size,
    reads_codebook_size=True,
    check=check_codebook,
)
