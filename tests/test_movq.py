"""MoVQ: SpatialNorm, F0 modules, multichannel quantizer, taming nets, the tokenizer."""

import itertools
import math

import pytest
import torch

from mvq.errors import MvqError
from mvq.models.movq import MoVQ, MoVQConfig, build_movq
from mvq.nn.spatial_norm import (
    ConstantF0,
    FourierF0,
    PlainGroupNorm,
    SinusoidalF0,
    SpatialNorm,
    build_f0,
    num_groups_for,
)
from mvq.nn.taming import Decoder, Encoder, decoder_norm_factory, spatial_blocks
from mvq.quantize.multichannel import MultiChannelVectorQuantize
from mvq.quantize.vq import VectorQuantize
from mvq.values.codes import Codes


def tiny_movq(**kw) -> MoVQConfig:
    base = dict(image_size=16, channels=3, ch=8, ch_mult=(1, 2), num_res_blocks=1,
                attn_resolutions=(8,), z_channels=8, codebook_size=16, code_dim=4,
                num_channels=4, fourier_frequencies=4, num_groups=4)
    base.update(kw)
    return MoVQConfig(**base)


# ----------------------------------------------------------------------------- SpatialNorm
def test_spatial_norm_equals_formula_by_hand():
    norm = SpatialNorm(f_channels=4, zq_channels=2, num_groups=2, eps=1e-6)
    wy = torch.tensor([[1.0, 0.0], [0.5, -1.0], [0.0, 2.0], [1.0, 1.0]])
    wb = torch.tensor([[0.0, 1.0], [1.0, 0.0], [-1.0, 0.5], [0.0, 0.0]])
    by, bb = torch.tensor([1.0, 0.0, 0.5, -1.0]), torch.tensor([0.0, 0.1, 0.2, 0.3])
    with torch.no_grad():
        norm.conv_y.weight.copy_(wy[:, :, None, None])
        norm.conv_y.bias.copy_(by)
        norm.conv_b.weight.copy_(wb[:, :, None, None])
        norm.conv_b.bias.copy_(bb)
    f = torch.arange(2 * 4 * 4 * 4, dtype=torch.float32).reshape(2, 4, 4, 4).sin() * 3 + 1
    zq = torch.tensor([[[[1.0, -1.0], [0.5, 2.0]], [[0.0, 1.0], [-2.0, 0.25]]]]).repeat(2, 1, 1, 1)
    # group norm by hand: groups = channels {0, 1} and {2, 3}
    expected_norm = torch.empty_like(f)
    for g in range(2):
        part = f[:, 2 * g : 2 * g + 2]
        mean = part.mean(dim=(1, 2, 3), keepdim=True)
        var = part.var(dim=(1, 2, 3), unbiased=False, keepdim=True)
        expected_norm[:, 2 * g : 2 * g + 2] = (part - mean) / torch.sqrt(var + 1e-6)
    # nearest resize 2x2 -> 4x4: every code covers a 2x2 patch
    zq_up = zq.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    scale = torch.einsum("oc,bchw->bohw", wy, zq_up) + by[None, :, None, None]
    bias = torch.einsum("oc,bchw->bohw", wb, zq_up) + bb[None, :, None, None]
    expected = expected_norm * scale + bias
    assert torch.allclose(norm(f, zq), expected, atol=1e-5)
    # plain GroupNorm ignores z_q
    plain = PlainGroupNorm(4, num_groups=2)
    assert torch.allclose(plain(f, zq), plain(f), atol=0)


def test_num_groups_and_spatial_blocks():
    assert num_groups_for(128, 32) == 32 and num_groups_for(8, 32) == 8
    assert num_groups_for(12, 32) == 12 and num_groups_for(48, 32) == 24
    assert spatial_blocks("none", 3) == 0 and spatial_blocks("first3", 3) == 3
    assert spatial_blocks("all", 3) == 5
    with pytest.raises(ValueError):
        spatial_blocks("most", 3)


def test_f0_modules():
    zq = torch.randn(2, 8, 4, 4)
    fourier = FourierF0(8, num_frequencies=5, sigma=1.0, learnable=False)
    out = fourier(zq)
    proj = 2 * math.pi * torch.einsum("fc,bchw->bfhw", fourier.B[:, :, 0, 0], zq)
    assert torch.allclose(out, torch.cat([proj.sin(), proj.cos()], 1), atol=1e-5)
    sin = SinusoidalF0(8, 4, 4)
    pe = sin(zq)
    assert pe.shape == (2, 8, 4, 4) and not pe.requires_grad
    # first y-frequency is 1: channel 0 is sin(y), channel 2 cos(y); channel 4 is sin(x)
    ys = torch.arange(4.0)
    assert torch.allclose(pe[0, 0, :, 0], ys.sin(), atol=1e-6)
    assert torch.allclose(pe[0, 2, :, 3], ys.cos(), atol=1e-6)
    assert torch.allclose(pe[1, 4, 1, :], ys.sin(), atol=1e-6)
    const = ConstantF0(6, 4, 4)
    assert const(zq).shape == (2, 6, 4, 4) and torch.equal(const(zq)[0], const(zq)[1])
    assert build_f0("none", 8, 6, (4, 4))(zq).shape == (2, 6, 4, 4)
    with pytest.raises(ValueError, match="f0 must be one of"):
        build_f0("noise", 8, 6, (4, 4))


# ----------------------------------------------------------------------------- taming nets
def test_taming_encoder_decoder_shapes():
    enc = Encoder(3, ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(8,),
                  resolution=32, z_channels=6, num_groups=4)
    z = enc(torch.randn(2, 3, 32, 32))
    assert z.shape == (2, 6, 8, 8)
    for kind in ("none", "first3", "all"):
        dec = Decoder(6, 3, ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(8,),
                      resolution=32, norm=decoder_norm_factory(spatial_blocks(kind, 3), 5, 4))
        n_spatial = sum(isinstance(m, SpatialNorm) for m in dec.modules())
        n_plain = sum(isinstance(m, PlainGroupNorm) for m in dec.modules())
        assert dec(z, torch.randn(2, 5, 8, 8)).shape == (2, 3, 32, 32)
        if kind == "none":
            assert n_spatial == 0
        elif kind == "all":
            assert n_plain == 0
        else:  # blocks 0-2: mid (5 norms), level at 8 px (2 res blocks + 2 attns: 6), 16 px (4)
            assert n_spatial == 5 + 6 + 4 and n_plain == 4 + 1  # 32 px level + output norm
    with pytest.raises(ValueError, match="not divisible"):
        Encoder(3, ch=8, ch_mult=(1, 2, 2), resolution=30)


# ----------------------------------------------------------------------------- quantizer
@pytest.mark.parametrize("c", [1, 2, 4, 8])
def test_multichannel_round_trip(c):
    q = MultiChannelVectorQuantize(16, 32, channels=c, channel_first=True, ema=False,
                                   restart_dead=False)
    q.eval()
    z = torch.randn(2, 16, 3, 5)
    out = q.quantize(z)
    assert out.indices.shape == (2, 3, 5, c) and out.quantized.shape == z.shape
    assert torch.equal(q.encode(z), out.indices)
    assert torch.allclose(q.lookup(out.indices), out.codes)
    assert torch.allclose(out.quantized, out.codes, atol=1e-6)
    # chunk k of the channels is quantized by the shared codebook into id channel k
    n_q = 16 // c
    for k in range(c):
        chunk = z[:, k * n_q : (k + 1) * n_q].permute(0, 2, 3, 1).reshape(-1, n_q)
        assert torch.equal(q.vq.nearest(chunk).view(2, 3, 5), out.indices[..., k])
    ids = torch.randint(0, 32, (3, 4, 2, c))
    assert torch.equal(q.encode(q.lookup(ids)), ids)
    with pytest.raises(MvqError, match="expected ids of shape"):
        q.lookup(ids[..., :1] if c > 1 else ids.repeat(1, 1, 1, 2))


@pytest.mark.parametrize("ema", [True, False])
def test_multichannel_c1_equals_plain_vq(ema):
    kw = dict(beta=0.25, ema=ema, restart_dead=True, dead_threshold=0.5)
    vq = VectorQuantize(6, 8, channel_first=True, **kw)
    mc = MultiChannelVectorQuantize(6, 8, channels=1, channel_first=True, **kw)
    mc.vq.load_state_dict(vq.state_dict())
    for step in range(3):  # training mode: EMA updates and restarts must match too
        z = torch.randn(4, 6, 3, 3) * (step + 1)
        torch.manual_seed(step)
        a = vq.quantize(z)
        torch.manual_seed(step)
        b = mc.quantize(z)
        assert torch.equal(a.quantized, b.quantized) and torch.equal(a.codes, b.codes)
        assert torch.equal(a.indices, b.indices[..., 0])
        for name in ("loss", "codebook_loss", "commit_loss"):
            assert torch.equal(getattr(a, name), getattr(b, name))
        for key, value in vq.state_dict().items():
            assert torch.equal(value, mc.vq.state_dict()[key]), key


# ----------------------------------------------------------------------------- MoVQ
VARIANTS = [
    (sn, f0, c)
    for sn, f0, c in itertools.product(("none", "first3", "all"),
                                       ("fourier", "sinusoidal", "constant", "none"), (1, 4))
    if not (sn == "none" and f0 in ("sinusoidal", "constant"))
]


@pytest.mark.parametrize("spatial_norm,f0,c", VARIANTS)
def test_movq_variant_trains(spatial_norm, f0, c):
    cfg = tiny_movq(spatial_norm=spatial_norm, f0=f0, num_channels=c, code_dim=8 // c)
    model = MoVQ(cfg)
    x = torch.rand(4, 3, 16, 16)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.5, 0.9))
    for _ in range(2):
        out = model(x)
        assert math.isfinite(float(out.loss.detach())) and set(out.losses) == {"rec", "vq"}
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert out.recon.shape == x.shape and out.codes.primary.shape == (4, 8, 8, c)
    model.eval()
    codes = model.encode(x)
    assert codes.primary.shape == (4, 8, 8, c) and codes.primary.dtype == torch.int64
    rec = model.decode(codes)
    assert rec.shape == x.shape
    with torch.no_grad():
        assert torch.allclose(rec, model(x).recon, atol=1e-5)
    assert model.tokens == (8 * 8 * c, 0)
    assert model.bits_per_image == pytest.approx(8 * 8 * c * 4)


def test_movq_32px_three_levels_and_codes_file(tmp_path):
    model = MoVQ(tiny_movq(image_size=32, ch_mult=(1, 2, 2), spatial_norm="all", channels=1,
                           f0="fourier"))
    x = torch.rand(2, 1, 32, 32)
    codes = model.encode(x)
    assert codes.primary.shape == (2, 8, 8, 4) and codes.meta["latent_shape"] == [8, 8, 4]
    codes.save(tmp_path / "c.safetensors")
    back = Codes.load(tmp_path / "c.safetensors")
    assert torch.equal(back.primary, codes.primary)
    assert torch.allclose(model.decode(back), model.decode(codes))
    # encode is deterministic and leaves the training mode as it was
    model.train()
    assert torch.equal(model.encode(x).primary, codes.primary) and model.training


def test_movq_spatial_norm_sees_quantized_map():
    """SpatialNorm layers get z_q (c * n_q channels), not the post_quant_conv output."""
    model = MoVQ(tiny_movq(spatial_norm="all", f0="constant"))
    seen = []
    for m in model.decoder.modules():
        if isinstance(m, SpatialNorm):
            m.register_forward_hook(lambda mod, args, out: seen.append(args[1]))
    x = torch.rand(2, 3, 16, 16)
    model.eval()
    codes = model.encode(x)
    model.decode(codes)
    zq = model.quantizer.lookup(codes.primary)
    assert seen and all(torch.equal(s, zq) for s in seen)


def test_movq_config_errors():
    with pytest.raises(MvqError, match="never see the codes"):
        MoVQ(tiny_movq(spatial_norm="none", f0="constant"))
    with pytest.raises(MvqError, match="divisible"):
        MoVQ(tiny_movq(image_size=18, ch_mult=(1, 2, 2)))
    with pytest.raises(MvqError, match="spatial_norm"):
        build_movq(tiny_movq(spatial_norm="half"))
    model = MoVQ(tiny_movq())
    with pytest.raises(MvqError, match="ids"):
        model.decode(Codes(torch.zeros(1, 8, 8, dtype=torch.long)))
    with pytest.raises(MvqError, match="expects images"):
        model(torch.rand(1, 3, 32, 32))


def test_multichannel_quantize_checks_its_map():
    q = MultiChannelVectorQuantize(8, 4, channels=2)
    ints = torch.zeros(1, 8, 1, 1, dtype=torch.long)
    for bad, found in (("x", "found str"), (ints, "found a torch.int64")):
        with pytest.raises(MvqError, match=rf"quantize takes a float \(B, 8, H, W\) map, {found}"):
            q.quantize(bad)
