"""Tokenizers: vqvae, hvqvae (VQ-VAE-2 baseline), mvqvae."""

from mvq.models.tokenizers import (
    HVQVAE,
    MODELS,
    MVQVAE,
    VQVAE,
    Tokenizer,
    TokenizerOutput,
    build_model,
)

__all__ = ["HVQVAE", "MODELS", "MVQVAE", "VQVAE", "Tokenizer", "TokenizerOutput", "build_model"]
