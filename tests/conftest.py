import numpy as np
import pytest
import torch
from PIL import Image

from mvq.configuration.config import ModelConfig
from mvq.files.figures import MARGIN, TITLE_PX


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


def assert_labelled(path, row_labels: bool = True) -> None:
    """A PNG written through mvq.files.figures: a title's ink in the top band and, with
    ``row_labels``, text (dark pixels on a mostly white band) left of the images."""
    img = np.asarray(Image.open(path).convert("L"))
    assert (img[MARGIN : MARGIN + TITLE_PX // 2 + 2] < 128).any(), f"{path}: no title"
    if row_labels:
        band = img[MARGIN + TITLE_PX :, MARGIN : MARGIN + 12]
        assert (band < 128).any() and (band == 255).mean() > 0.5, f"{path}: no row labels"
