import warnings

import pytest
import torch

import mvq  # noqa: F401  (torchvision compat shim first)
from mvq.config import ModelConfig

warnings.filterwarnings("ignore", message="Using padding='same' with even kernel")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    torch.set_num_threads(1)  # a shared 2-core machine: 2 threads under load thrash


def tiny_model_config(**kw) -> ModelConfig:
    """A model small enough to train for a few steps in a test."""
    base = dict(type="mvqvae", image_size=28, channels=1, factor=28, codebook_size=16, dim=8,
                dim2=8, hidden=16, res_blocks=1, res_channels=8, num_masks=16, chunk_size=8)
    base.update(kw)
    return ModelConfig(**base)
