"""VQGAN objective: adaptive weight, hinge loss, disc_start gating, LPIPS term, wiring."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_model_config
from torch import nn

from mvq.losses import (
    PatchDiscriminator,
    VQGANLoss,
    adaptive_weight,
    find_last_layer,
    generator_adv_loss,
    hinge_d_loss,
)
from mvq.metrics import LPIPS


@pytest.fixture(scope="module")
def lpips_module() -> LPIPS:
    return LPIPS("alex")


def make_loss(lpips_module, channels: int = 3, **kw) -> VQGANLoss:
    base = dict(disc_start=0, disc_layers=2, disc_channels=8)
    base.update(kw)
    return VQGANLoss(channels, lpips=lpips_module, **base)


class TinyGenerator(nn.Module):
    """features -> conv (the 'last layer') -> sigmoid image in [0, 1]."""

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        self.body = nn.Conv2d(4, 8, 3, padding=1)
        self.conv_out = nn.Conv2d(8, channels, 3, padding=1)

    last_layer = property(lambda self: self.conv_out.weight)

    def forward(self, h):
        return torch.sigmoid(self.conv_out(torch.relu(self.body(h))))


# ----------------------------------------------------------------------------- pieces
def test_adaptive_weight_is_grad_norm_ratio_by_hand():
    w = nn.Parameter(torch.randn(3, 4))
    inp, target, a = torch.randn(5, 4), torch.randn(5, 3), torch.randn(5, 3)
    out = inp @ w.t()
    nll = (out - target).pow(2).mean()
    g = -(out * a).mean()
    # analytic gradients of the two losses w.r.t. the linear layer's weight
    grad_nll = 2 * (out - target).detach().t() @ inp / out.numel()
    grad_g = -a.t() @ inp / out.numel()
    expected = grad_nll.norm() / (grad_g.norm() + 1e-4)
    got = adaptive_weight(nll, g, w)
    assert not got.requires_grad
    assert torch.allclose(got, expected, rtol=1e-5)
    # the same through torch.autograd.grad, and the clamp
    gn, = torch.autograd.grad(nll, w, retain_graph=True)
    gg, = torch.autograd.grad(g, w, retain_graph=True)
    assert torch.allclose(got, gn.norm() / (gg.norm() + 1e-4), rtol=1e-6)
    assert float(adaptive_weight(nll, g, w, max_weight=1e-3)) == pytest.approx(1e-3)
    (nll + got * g).backward()  # graphs are retained for the caller's backward
    assert w.grad is not None


def test_hinge_and_generator_loss_hand_case():
    real = torch.tensor([2.0, 0.5, -1.0])
    fake = torch.tensor([-2.0, 0.5, 1.0])
    # relu(1 - real) = [0, .5, 2] -> 2.5/3 ; relu(1 + fake) = [0, 1.5, 2] -> 3.5/3
    assert float(hinge_d_loss(real, fake)) == pytest.approx(0.5 * (2.5 / 3 + 3.5 / 3))
    assert float(generator_adv_loss(fake)) == pytest.approx(-(-2.0 + 0.5 + 1.0) / 3)


def test_patch_discriminator_shapes():
    d = PatchDiscriminator(3, ch=8, n_layers=3)
    assert d(torch.randn(2, 3, 32, 32)).shape == (2, 1, 2, 2)
    assert d.min_input_size() == 24
    with pytest.raises(ValueError, match="at least 24 px"):
        d(torch.randn(1, 3, 16, 16))
    d2 = PatchDiscriminator(1, ch=8, n_layers=2, norm="none")
    assert d2(torch.randn(2, 1, 16, 16)).shape == (2, 1, 2, 2)


# ----------------------------------------------------------------------------- VQGANLoss
def test_adaptive_weight_inside_vqgan_loss(lpips_module):
    loss_fn = make_loss(lpips_module, disc_weight=0.5)
    gen = TinyGenerator()
    h, x = torch.randn(2, 4, 32, 32), torch.rand(2, 3, 32, 32)
    recon = gen(h)
    loss, logs = loss_fn(x, recon, step=0, last_layer=gen.last_layer)
    # by hand with the same pieces
    nll = F.l1_loss(2 * recon - 1, 2 * x - 1) + lpips_module(x, recon).mean()
    g = -loss_fn.discriminator(2 * recon - 1).mean()
    gn, = torch.autograd.grad(nll, gen.last_layer, retain_graph=True)
    gg, = torch.autograd.grad(g, gen.last_layer, retain_graph=True)
    expected = 0.5 * gn.norm() / (gg.norm() + 1e-4)
    assert float(logs["d_weight"]) == pytest.approx(float(expected), rel=1e-4)
    assert float(logs["nll"]) == pytest.approx(float(nll.detach()), rel=1e-5)
    assert float(loss.detach()) == pytest.approx(float((nll + expected * g).detach()), rel=1e-5)
    loss.backward()
    assert gen.conv_out.weight.grad is not None
    # the generator pass leaves no gradient in the discriminator
    assert all(p.grad is None for p in loss_fn.discriminator.parameters())


def test_lpips_term_equals_metric(lpips_module):
    loss_fn = VQGANLoss(3, disc_layers=2, disc_channels=8)  # builds its own LPIPS
    assert isinstance(loss_fn.lpips, LPIPS) and loss_fn.lpips is not lpips_module
    x, y = torch.rand(3, 3, 32, 32), torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loss_fn.perceptual(x, y), lpips_module(x, y).mean(), atol=1e-6)
        # below 32 px (AlexNet's limit) both images are bilinearly resized up first
        small_x, small_y = x[:, :, :16, :16], y[:, :, :16, :16]

        def up(t):
            return F.interpolate(t, size=(32, 32), mode="bilinear", align_corners=False)

        assert torch.allclose(loss_fn.perceptual(small_x, small_y),
                              lpips_module(up(small_x), up(small_y)).mean(), atol=1e-6)


def test_discriminator_untouched_before_disc_start(lpips_module):
    loss_fn = make_loss(lpips_module, disc_start=3, perceptual_weight=0.0)
    opt = torch.optim.Adam(loss_fn.discriminator.parameters(), lr=1e-2)
    before = {k: v.clone() for k, v in loss_fn.discriminator.state_dict().items()}
    gen = TinyGenerator()
    real = torch.rand(2, 3, 16, 16)
    for step in range(3):
        fake = gen(torch.randn(2, 4, 16, 16))
        g_loss, g_logs = loss_fn(real, fake, step, last_layer=gen.last_layer)
        assert float(g_logs["g_adv"]) == 0.0 and float(g_logs["d_weight"]) == 0.0
        d_loss, logs = loss_fn.discriminator_step(real, fake, step)
        assert float(d_loss) == 0.0 and float(logs["d_loss"]) == 0.0
        opt.zero_grad()
        d_loss.backward()
        opt.step()
    after = loss_fn.discriminator.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN statistics

    fake = gen(torch.randn(2, 4, 16, 16))
    d_loss, logs = loss_fn.discriminator_step(real, fake, 3)
    assert float(d_loss) > 0 and math.isfinite(float(logs["logits_real"]))
    opt.zero_grad()
    d_loss.backward()
    assert gen.conv_out.weight.grad is None  # fake was detached
    opt.step()
    after = loss_fn.discriminator.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("rec_loss", ["l1", "l2"])
def test_movq_with_vqgan_loss_trains(lpips_module, rec_loss):
    """The wiring the training loop needs: generator step, then discriminator step."""
    from mvq.models.movq import MoVQ, MoVQConfig

    model = MoVQ(MoVQConfig(image_size=16, ch=8, ch_mult=(1, 2), num_res_blocks=1,
                            attn_resolutions=(), z_channels=8, codebook_size=16, code_dim=4,
                            num_channels=2, fourier_frequencies=4))
    loss_fn = make_loss(lpips_module, disc_start=1, rec_loss=rec_loss)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.5, 0.9))
    d_opt = torch.optim.Adam(loss_fn.discriminator.parameters(), lr=1e-3, betas=(0.5, 0.9))
    x = torch.rand(4, 3, 16, 16)
    for step in range(3):
        out = model(x)
        loss, logs = loss_fn.tokenizer_loss(x, out, step, find_last_layer(model))
        opt.zero_grad()
        loss.backward()
        opt.step()
        d_loss, d_logs = loss_fn.discriminator_step(x, out.recon, step)
        d_opt.zero_grad()
        d_loss.backward()
        d_opt.step()
        assert set(logs) >= {"rec", "perceptual", "nll", "g_adv", "d_weight", "vq", "total"}
        assert all(math.isfinite(float(v)) for v in {**logs, **d_logs}.values())
    assert float(logs["d_weight"]) > 0 and float(logs["disc_factor"]) == 1.0
    assert find_last_layer(model) is model.decoder.conv_out.weight


def test_mvqgan_wiring_uses_vqvae2_decoder_output_layer(lpips_module):
    """MVQGAN = the mvqvae networks + VQGANLoss (28 px: LPIPS resizes to 32)."""
    from mvq.models import build_model

    model = build_model(tiny_model_config())
    last = find_last_layer(model)
    assert last is list(model.decoder.net)[-1].weight
    loss_fn = make_loss(lpips_module, channels=1, disc_start=0)
    x = torch.rand(4, 1, 28, 28)
    out = model(x)
    loss, logs = loss_fn.tokenizer_loss(x, out, 0, last)
    assert {"vq", "vq2", "mhd"} <= set(logs) and "rec" in logs
    loss.backward()
    assert math.isfinite(float(loss)) and float(logs["d_weight"]) > 0
