"""The comparison's ground rules: the hierarchical baseline is VQ-VAE-2's (MVQ paper A.6), the
models compared have similar parameter counts, and the rate counts only what a code carries."""

import math

import pytest
import torch
from conftest import tiny_model_config
from torch import nn

from mvq.configuration.config import ModelConfig
from mvq.models import build_model


class _Constant(nn.Module):
    """Stands in for the primary encoder: the same output whatever the image."""

    def __init__(self, like: torch.Tensor) -> None:
        super().__init__()
        self.like = like

    def forward(self, x):
        return self.like.expand(x.shape[0], *self.like.shape[1:])


@pytest.mark.parametrize("factor", [28, 14])
def test_baseline_secondary_code_sees_image_content_beyond_the_mean(factor):
    """Two images with the same primary encoder output and the same mean pixel but different
    content must reach the secondary encoder differently (pooling x onto the 1x1 grid at F=28,
    as an earlier baseline did, would give them identical secondary outputs)."""
    torch.manual_seed(0)
    model = build_model(tiny_model_config(type="hvqvae", factor=factor)).eval()
    g = model.geo.grid
    model.encoder = _Constant(torch.randn(1, model.cfg.dim, g, g))
    a = torch.full((1, 1, 28, 28), 0.5)  # flat grey
    b = torch.zeros(1, 1, 28, 28)
    b[..., :, :14] = 1.0  # left half white: the same mean, other content
    assert a.mean() == b.mean()
    y = model.encoder(a)
    ina, inb = model._secondary_input(a * 2 - 1, y), model._secondary_input(b * 2 - 1, y)
    # what E' sees differs (a mean pixel would make it identical), and so does its output (a
    # random-init E' shrinks the gap a lot; it is exactly 0 through a mean pixel)
    assert (ina - inb).abs().max() > 1e-3 * ina.abs().mean()
    assert not torch.equal(model._encode(a)[1], model._encode(b)[1])
    # the secondary output's gradient w.r.t. the image varies over the pixels (through a mean
    # pixel it would be the same 1/784 everywhere)
    x = torch.rand(1, 1, 28, 28, requires_grad=True)
    model._encode(x)[1].sum().backward()
    assert x.grad.abs().sum() > 0 and x.grad.std() > 0.05 * x.grad.abs().mean()


@pytest.mark.parametrize("factor", [28, 14, 7])
def test_baseline_and_mvq_parameter_counts_within_about_ten_percent(factor):
    """At the paper's Table 3 sizes (128 channels, D = D' = 16) the baseline's own image stem
    costs at most 10% more parameters than MVQ (the baseline is the larger one)."""
    counts = {t: build_model(ModelConfig(type=t, factor=factor)).num_parameters
              for t in ("hvqvae", "mvqvae")}
    ratio = counts["hvqvae"] / counts["mvqvae"]
    assert 1.0 <= ratio <= 1.10, counts


def test_bits_per_image_hand_count_for_a_mask_bank():
    # F=14 at 28 px: S = 4 primary tokens, S' = 1; K = 16 -> 8 entries per codebook (3 bits)
    model = build_model(tiny_model_config(factor=14, num_masks=64, eval_masks=128, dim2=16))
    s, s2 = model.tokens
    assert (s, s2) == (4, 1)
    assert model.mask_bits == pytest.approx(7.0)  # log2(J_eval = 128), not D' = 16
    assert model.bits_per_image == pytest.approx(4 * 3 + 1 * 3 + 7)
    # the training J does not matter, only the bank encode() searches
    other = build_model(tiny_model_config(factor=14, num_masks=2048, eval_masks=128, dim2=16))
    assert other.bits_per_image == model.bits_per_image
    # one mask in the bank: the mask carries nothing
    assert build_model(tiny_model_config(num_masks=1)).mask_bits == 0.0


def test_bits_per_image_free_masks_cap_at_d_prime():
    """A bank larger than the 2^D' possible masks still names one of 2^D' masks: D' bits, the
    count for freely chosen masks."""
    model = build_model(tiny_model_config(dim2=4, num_masks=64))
    assert model.mask_bits == pytest.approx(4.0)
    assert model.bits_per_image == pytest.approx(3 + 3 + 4)
    assert math.log2(64) > 4
