"""Training losses: VQGAN objective (LPIPS + PatchGAN hinge + adaptive weight)."""

from mvq.losses.vqgan import (
    PatchDiscriminator,
    VQGANLoss,
    VQGANLossConfig,
    adaptive_weight,
    build_vqgan_loss,
    find_last_layer,
    generator_adv_loss,
    hinge_d_loss,
    vanilla_d_loss,
)

__all__ = [
    "PatchDiscriminator",
    "VQGANLoss",
    "VQGANLossConfig",
    "adaptive_weight",
    "build_vqgan_loss",
    "find_last_layer",
    "generator_adv_loss",
    "hinge_d_loss",
    "vanilla_d_loss",
]
