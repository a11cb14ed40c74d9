"""Nearest-code vector quantization (VQ-VAE): one learned codebook of K entries."""

from __future__ import annotations

from mvq.errors import MvqError
from mvq.quantize.family import Family
from mvq.quantize.vq import VectorQuantize
from mvq.values.fields import ANY, at_least


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


def split_rate(key: str, parts: int):
    """A rate sweep's keys for a family of ``parts`` ids per position, each of K entries:
    ``key`` = parts and K = 2^ceil(bits / parts) (residual VQ's stages, multichannel's heads)."""
    return lambda bits: {key: parts, "codebook_size": 2 ** -(-bits // parts)}


def lookup_options(cfg) -> dict:
    """VectorQuantize's modern lookup options from the model keys: ``lookup_dim`` (0: look up
    in ``dim`` itself, else a linear map down to it and back, ViT-VQGAN's low-dimensional
    lookup), ``cosine`` (l2-normalised vectors and codes) and ``rotation_trick``."""
    return dict(codebook_dim=cfg.lookup_dim or None, cosine=cfg.cosine,
                rotation_trick=cfg.rotation_trick)


def _check(cfg) -> None:
    check_codebook(cfg)
    if cfg.lookup_dim > cfg.dim:
        raise MvqError(f"model.lookup_dim={cfg.lookup_dim} is larger than model.dim={cfg.dim}: "
                       "the lookup space is a low-dimensional one; pick lookup_dim <= dim "
                       "(0 = no projection)")


# the lookup options came after models of this family were written: recorded only when set
LOOKUP_KEYS = frozenset({"lookup_dim", "cosine", "rotation_trick"})

FAMILY = Family(
    name="vq",
    summary="nearest-code VQ: one learned codebook of K entries (VQ-VAE, EMA updates); "
            "optional low-dimensional / cosine lookup and the rotation trick",
    bits="log2 K",
    build=lambda cfg: VectorQuantize(cfg.dim, cfg.codebook_size, channel_first=True,
                                     **vq_settings(cfg), **lookup_options(cfg)),
    codebook_size=lambda cfg: cfg.codebook_size,
    fields={"lookup_dim": at_least(0), "cosine": ANY, "rotation_trick": ANY},
    reads_codebook_size=True,
    check=_check,
    optional=LOOKUP_KEYS,
    rate=lambda bits: {"codebook_size": 2 ** bits},
)
