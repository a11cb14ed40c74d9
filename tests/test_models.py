import math

import pytest
import torch
from conftest import tiny_model_config

from mvq.configuration.config import Config
from mvq.errors import MvqError
from mvq.models import build_model
from mvq.nn.vqvae2 import (
    FACTORS,
    TABLE3,
    Widths,
    build_networks,
    geometry,
    plan_decoder,
    plan_encoder,
)
from mvq.saved.checkpoint import save_checkpoint
from mvq.saved.pretrained import load_tokenizer
from mvq.values.codes import Codes

SIZES = {7: 28, 14: 28, 28: 28, 8: 32, 16: 32, 32: 32, 64: 64}


@pytest.mark.parametrize("factor", FACTORS)
def test_every_table3_factor_builds_and_yields_s_tokens(factor):
    size = SIZES[factor]
    expected_tokens = (size // factor) ** 2  # S = h*w / F^2
    cfg = tiny_model_config(factor=factor, image_size=size, channels=3)
    model = build_model(cfg).eval()
    x = torch.rand(2, 3, size, size)
    codes = model.encode(x)
    assert codes.primary.shape == (2, size // factor, size // factor)
    assert codes.primary[0].numel() == expected_tokens == model.tokens[0]
    assert codes.secondary.shape == (2, 1, 1) and codes.mask.shape == (2, 1, 1, cfg.dim2)
    assert model.decode(codes).shape == x.shape


def test_factors_at_other_sizes_and_bad_factor():
    for factor, size in [(8, 64), (16, 64), (32, 64)]:
        nets = build_networks(factor, size, 3, 4, 4, Widths(hidden=8, res_blocks=0, res_channels=4))
        y = nets["E"](torch.rand(2, 3, size, size))
        assert y.shape[-1] == size // factor
        assert nets["D"](y).shape[-1] == size
        assert nets["f"](nets["E2"](y)).shape == y.shape
    with pytest.raises(ValueError):
        geometry(14, 32)
    with pytest.raises(ValueError):
        geometry(12, 48)


def test_planner_hand_cases():
    # F=28 at 28px: 28 -> 14 -> 7 -> 3 -> 1, then a stride-1 layer (kernels 4,4,4,4,3)
    plan = plan_encoder(TABLE3["28"][0], 28, 1)
    assert [(p.n_in, p.n_out, p.stride) for p in plan] == [(28, 14, 2), (14, 7, 2), (7, 3, 2),
                                                           (3, 1, 2), (1, 1, 1)]
    dec = plan_decoder((3, 3, 4, 4), [4, 7, 14, 28])
    assert [(p.kind, p.n_out) for p in dec] == [("same", 4), ("up", 7), ("up", 14), ("up", 28)]
    with pytest.raises(ValueError):
        plan_encoder((4,), 28, 1)


@pytest.mark.parametrize("kind", ["vqvae", "hvqvae", "mvqvae"])
def test_codes_round_trip_and_bits(kind, tmp_path):
    model = build_model(tiny_model_config(type=kind, factor=14)).eval()
    x = torch.rand(3, 1, 28, 28)
    codes = model.encode(x)
    codes.save(tmp_path / "codes.safetensors")
    back = Codes.load(tmp_path / "codes.safetensors")
    for name in ("primary", "secondary", "mask"):
        a, b = getattr(codes, name), getattr(back, name)
        assert (a is None and b is None) or torch.equal(a, b)
    assert back.meta == codes.meta
    assert torch.allclose(model.decode(back), model(x).recon, atol=1e-6)
    s = 4  # F=14 at 28px
    # K=16: log2(16) per vqvae token, log2(8) per token of the two halves; MVQ's mask is an
    # index into the bank of J_eval = 16 masks: log2(16) = 4 bits, not D' = 8
    expected = {"vqvae": s * 4, "hvqvae": s * 3 + 3, "mvqvae": s * 3 + 3 + 4}[kind]
    assert model.bits_per_image == pytest.approx(expected)


def test_mvq_encode_is_deterministic_and_batch_independent():
    model = build_model(tiny_model_config())
    model.train()  # encode must switch to the seeded search itself
    x = torch.rand(6, 1, 28, 28)
    a, b = model.encode(x), model.encode(x)
    assert torch.equal(a.mask, b.mask) and torch.equal(a.primary, b.primary)
    one = model.encode(x[3:4])
    assert torch.equal(one.mask[0], a.mask[3])
    assert model.training  # mode restored


@pytest.mark.parametrize("kind", ["hvqvae", "mvqvae"])
def test_a_few_steps_lower_the_loss(kind):
    torch.manual_seed(0)
    model = build_model(tiny_model_config(type=kind))
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    x = torch.rand(8, 1, 28, 28).round()  # a fixed batch
    losses = []
    for _ in range(40):
        out = model(x)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.losses["rec"].item())
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


def test_mvq_latents_stay_bounded_over_training():
    """docs/architecture.md: gradient codebooks let MVQ latents grow without bound; EMA keeps
    them bounded."""
    from mvq.data import build_dataset

    ds = build_dataset("shapes", split="train", size=28, channels=1, limit=256)
    data = torch.stack([ds[i][0] for i in range(len(ds))])
    model = build_model(tiny_model_config(num_masks=32))
    opt = torch.optim.Adam(model.parameters(), lr=5e-4, betas=(0.5, 0.9))
    norms = []
    for step in range(300):
        x = data[(step * 16) % 256 : (step * 16) % 256 + 16]
        out = model(x)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        if step % 50 == 49:
            with torch.no_grad():
                norms.append(model.encoder(x * 2 - 1).norm(dim=1).mean().item())
        assert math.isfinite(out.loss.item())
    assert max(norms) < 50 * max(norms[0], 1.0)
    assert model.mvq.primary.embedding.abs().max() < 100


def test_save_load_identical_outputs(tmp_path):
    cfg = Config(model=tiny_model_config())
    model = build_model(cfg.model)
    model(torch.rand(4, 1, 28, 28))  # move EMA buffers away from their init
    model.eval()
    save_checkpoint(tmp_path / "ck", model, cfg, step=1)
    loaded, cfg2, info = load_tokenizer(tmp_path / "ck")
    loaded.eval()
    x = torch.rand(3, 1, 28, 28)
    assert cfg2 == cfg and info["step"] == 1
    assert torch.equal(loaded(x).recon, model(x).recon)
    with pytest.raises(MvqError, match="hvqvae"):
        load_tokenizer(tmp_path / "ck", expect_type="hvqvae")


def test_wrong_channel_count_is_a_clear_error():
    model = build_model(tiny_model_config())
    with pytest.raises(MvqError, match=r"\(B, 1, 28, 28\)"):
        model(torch.rand(2, 3, 28, 28))


def test_every_preset_loads_and_builds():
    """Each shipped preset parses strictly, by name and by its file's path; the CPU presets
    also build their model."""
    from mvq import presets
    from mvq.configuration.config import load_config

    names = presets.names()
    assert len(names) >= 20
    for name in names:
        cfg = load_config(name)
        assert cfg == load_config(presets.path(name)) == load_config(f"{name}.yaml")
        if "quick" in name:
            model = build_model(cfg.model)
            assert model.bits_per_image > 0, name


def test_a_subclass_cannot_take_a_built_in_model_type():
    from mvq.errors import MvqError
    from mvq.models import MVQVAE

    with pytest.raises(MvqError, match="'mvqvae' is built by MVQVAE already"):
        type("Mine", (MVQVAE,), {"model_types": ("mvqvae",)})
