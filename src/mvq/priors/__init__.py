"""Priors over discrete codes: causal GPT with a KV cache, the two-stage MVQ prior, a MaskGIT
bidirectional prior over multichannel tokens (MoVQ) and a gated PixelCNN (VQ-VAE-2).

Every prior answers one interface (`Prior`, mvq.priors.base); `PRIORS` maps the names
"gpt", "maskgit", "pixelcnn" to their classes (mvq.priors.registry).
"""

from mvq.priors.base import LAYOUTS, Prior, layout_of
from mvq.priors.gpt import (
    GPT,
    TABLE4,
    GPTConfig,
    KVCache,
    filter_top_k,
    filter_top_p,
    sample_logits,
    table4_size,
)
from mvq.priors.maskgit import (
    MaskGIT,
    MaskGITConfig,
    MaskGITPrior,
    mask_schedule,
    training_mask,
)
from mvq.priors.pixelcnn import PixelCNN, PixelCNNPrior
from mvq.priors.registry import PRIORS, build_prior, default_kind, prior_class
from mvq.priors.two_stage import MVQPrior

__all__ = [
    "GPT", "GPTConfig", "KVCache", "TABLE4", "table4_size", "sample_logits", "filter_top_k",
    "filter_top_p", "MVQPrior", "MaskGIT", "MaskGITConfig", "MaskGITPrior", "mask_schedule",
    "training_mask", "PixelCNN", "PixelCNNPrior", "Prior", "LAYOUTS", "layout_of", "PRIORS",
    "build_prior", "default_kind", "prior_class",
]
