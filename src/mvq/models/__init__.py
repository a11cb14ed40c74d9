"""Tokenizers: vqvae, hvqvae (VQ-VAE-2 baseline), mvqvae (and their GAN-trained hvqgan /
mvqgan), movq. Importing this package registers every ``model.type`` with `build_model`."""

from mvq.models.base import MODELS, Tokenizer, TokenizerOutput, build_model, model_class
from mvq.models.movq import MoVQ
from mvq.models.tokenizers import HVQVAE, MVQVAE, VQVAE

__all__ = ["HVQVAE", "MODELS", "MVQVAE", "MoVQ", "VQVAE", "Tokenizer", "TokenizerOutput",
           "build_model", "model_class"]
