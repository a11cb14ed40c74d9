"""Evaluation metrics: FID / KID (offline Inception), LPIPS, PSNR / SSIM / MS-SSIM,
PRD (F_8, F_1/8), codebook usage / perplexity, and the offline weight resolver.
Nothing here downloads."""

from mvq.metrics.codebook import bits_per_image, code_counts, perplexity, usage
from mvq.metrics.fid import (
    FeatureStats,
    InceptionFeatureExtractor,
    cached_feature_stats,
    extract_features,
    fid_from_features,
    frechet_distance,
    get_inception,
    kid_from_features,
    mean_cov,
)
from mvq.metrics.image import ms_ssim, ms_ssim_or_none, psnr, ssim
from mvq.metrics.perceptual import LPIPS, lpips_distance
from mvq.metrics.prd import f_beta, max_f_beta_pair, prd_curve, prd_f_scores, prd_from_features
from mvq.metrics.weights import inception_weights_path, install_offline_weights, lpips_backbone_path

__all__ = [
    "FeatureStats",
    "InceptionFeatureExtractor",
    "LPIPS",
    "bits_per_image",
    "cached_feature_stats",
    "code_counts",
    "extract_features",
    "f_beta",
    "fid_from_features",
    "frechet_distance",
    "get_inception",
    "inception_weights_path",
    "install_offline_weights",
    "kid_from_features",
    "lpips_backbone_path",
    "lpips_distance",
    "max_f_beta_pair",
    "mean_cov",
    "ms_ssim",
    "ms_ssim_or_none",
    "perplexity",
    "prd_curve",
    "prd_f_scores",
    "prd_from_features",
    "psnr",
    "ssim",
    "usage",
]
