"""One prior interface: every registered prior trains a few steps on real token files, samples
codes its tokenizer decodes and resumes exactly; wrong code layouts are refused by name; MaskGIT
reveals at least one token per step; class labels steer samples (issue 12)."""

import pytest
import torch
from conftest import tiny_model_config

from mvq.configuration.config import Config, DataConfig, TrainConfig
from mvq.errors import MvqError
from mvq.inference.sample import Sampling, sample_codes_and_images
from mvq.inference.tokens import encode_dataset, load_tokens
from mvq.losses.vqgan import VQGANLossConfig
from mvq.models import build_model
from mvq.models.movq import MoVQConfig
from mvq.priors import PRIORS, MaskGITPrior, default_kind, layout_of, prior_class
from mvq.saved.checkpoint import save_checkpoint
from mvq.saved.pretrained import load_prior, load_tokenizer
from mvq.train import train
from mvq.train.prior import PriorTraining, train_prior
from mvq.values.codes import Codes
from mvq.values.decoding import Decoding

SIZES = {"gpt": {"primary": dict(n_layer=1, n_head=2, n_embd=16),
                 "secondary": dict(n_layer=1, n_head=2, n_embd=16)},
         "maskgit": dict(n_layer=1, n_head=2, n_embd=16),
         "pixelcnn": dict(channels=8, n_layers=2)}
# (prior, tokenizer): every registered prior on a layout it models
CASES = [("gpt", "mvq"), ("pixelcnn", "mvq"), ("gpt", "movq"), ("maskgit", "movq")]


def tiny_movq_config(out_dir, steps: int = 2) -> Config:
    model = MoVQConfig(type="movq", image_size=16, channels=1, ch=8, ch_mult=(1, 2),
                       num_res_blocks=1, attn_resolutions=(8,), z_channels=8, codebook_size=16,
                       code_dim=4, num_channels=2, fourier_frequencies=4, num_groups=4)
    return Config(model=model, data=DataConfig(name="shapes", train_limit=16, val_limit=4),
                  train=TrainConfig(steps=steps, batch_size=4, val_every=steps,
                                    ckpt_every=steps, log_every=1, grid_images=2,
                                    out_dir=str(out_dir)),
                  loss=VQGANLossConfig(perceptual_weight=0.0, disc_start=100))


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    """Token files of an MVQ tokenizer (4x4 + 1x1 ids, masks) and a MoVQ one ((8, 8, 2) ids)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("interface")
    cfg = Config(model=tiny_model_config(num_masks=8, factor=7),
                 data=DataConfig(name="shapes", train_limit=16, val_limit=4),
                 train=TrainConfig(out_dir=str(root / "mvq")))
    mvq = save_checkpoint(root / "mvq" / "checkpoint", build_model(cfg.model), cfg, 0)
    movq = train(tiny_movq_config(root / "movq"), progress=False).out_dir / "checkpoint"
    out = {"root": root}
    for name, ckpt in (("mvq", mvq), ("movq", movq)):
        out[name] = {"tokenizer": ckpt, "tokens": encode_dataset(
            ckpt, root / f"{name}.safetensors", limit=24, device="cpu", progress=False)}
    return out


def _train(tokens, out, kind, steps, **kw):
    settings = PriorTraining(steps=steps, batch_size=8, lr=3e-3, val_fraction=0.25, kind=kind,
                             sizes=SIZES[kind], val_every=2, log_every=1)
    return train_prior(tokens, out, settings, progress=False, device="cpu", **kw)


def test_cases_cover_the_registry():
    assert {kind for kind, _ in CASES} == set(PRIORS) == {"gpt", "maskgit", "pixelcnn"}


@pytest.mark.parametrize("kind,tok", CASES)
def test_prior_trains_samples_decodable_codes_and_resumes_exactly(tokens, kind, tok, tmp_path):
    files = tokens[tok]
    full = _train(files["tokens"], tmp_path / "full", kind, 4)
    _train(files["tokens"], tmp_path / "part", kind, 2)
    resumed = _train(files["tokens"], tmp_path / "part", kind, 4, resume=True)
    assert full["kind"] == resumed["kind"] == kind and resumed["step"] == 4
    assert resumed["metrics"] == full["metrics"]
    a, info = load_prior(full["checkpoint"])
    b, _ = load_prior(resumed["checkpoint"])
    assert info["prior_type"] == kind and type(a) is prior_class(kind)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name
    codes, _, _ = load_tokens(files["tokens"])
    assert set(a.nll(codes[:6])) == {k for k in a.stages if k != "secondary"
                                     or codes.secondary is not None}
    sampled = a.sample(3, generator=torch.Generator().manual_seed(1))
    assert layout_of(sampled) == layout_of(codes)
    assert sampled.primary.shape[1:] == codes.primary.shape[1:]
    model, cfg, _ = load_tokenizer(files["tokenizer"])
    assert model.decode(sampled).shape == (3, cfg.model.channels, cfg.model.image_size,
                                           cfg.model.image_size)
    got, images = sample_codes_and_images(files["tokenizer"], full["checkpoint"],
                                          Sampling(3, Decoding(seed=2)))
    assert images.shape[0] == 3 and torch.isfinite(images).all()
    from mvq.evaluation import (  # evaluate --prior: the NLL of every prior type
        EvalSettings,
        evaluate_samples,
    )

    res = evaluate_samples(files["tokenizer"], full["checkpoint"],
                           EvalSettings(n=4, progress=False, device="cpu"), metrics="nll")
    stages = {k[4:] for k in res["metrics"] if not k.endswith("_bits")}
    assert stages == set(a.nll(codes[:2])) and res["prior_type"] == kind


@pytest.mark.parametrize("kind,tok,layout", [("pixelcnn", "movq", "multichannel"),
                                             ("maskgit", "mvq", "two-level\\+mask")])
def test_wrong_layout_refused_before_training(tokens, kind, tok, layout, tmp_path):
    with pytest.raises(MvqError, match=f"the {kind} prior cannot model {layout} codes .* "
                                       "Use --type"):
        _train(tokens[tok]["tokens"], tmp_path / "p", kind, 2)
    assert not (tmp_path / "p").exists()
    codes, _, _ = load_tokens(tokens[tok]["tokens"])
    with pytest.raises(MvqError, match=f"cannot model {layout} codes"):
        prior_class(kind).from_codes(codes)


def test_default_prior_per_layout(tokens):
    assert default_kind(load_tokens(tokens["movq"]["tokens"])[0]) == "maskgit"
    assert default_kind(load_tokens(tokens["mvq"]["tokens"])[0]) == "gpt"
    one = Codes(torch.zeros(2, 3, 3, dtype=torch.long), meta={"codebook_sizes": [4]})
    assert layout_of(one) == "single-channel" and default_kind(one) == "gpt"


def test_maskgit_reveals_at_least_one_token_per_step_and_ends_with_none_masked():
    prior = MaskGITPrior((2, 3, 2), 5, sizes=dict(n_layer=1, n_head=2, n_embd=16))
    net, total = prior.net, 12
    for steps in (1, 4, 7, total):
        out, history = net.generate(3, steps, choice_temperature=4.5, return_history=True,
                                    generator=torch.Generator().manual_seed(steps))
        masked = [total] + [int((h == net.mask_id).view(3, -1).sum(1).max()) for h in history]
        fewest = [int((h == net.mask_id).view(3, -1).sum(1).min()) for h in history]
        assert all(after < before for before, after in zip(masked, masked[1:])), masked
        assert masked[-1] == fewest[-1] == 0 and (out < 5).all() and out.min() >= 0
    with pytest.raises(MvqError, match=r"steps must be in \[1, 12\] .* at least one revealed"):
        prior.sample(2, steps=13)
    assert prior.sample(2, steps=12).primary.shape == (2, 2, 3, 2)


@pytest.mark.parametrize("kind", ["gpt", "maskgit", "pixelcnn"])
def test_class_labels_change_samples(kind):
    """A memorized toy set, one fixed code per class: sampling class k mostly gives k's code."""
    torch.manual_seed(0)
    per_class = torch.tensor([[[0, 1], [2, 3]], [[3, 3], [0, 0]], [[1, 2], [1, 2]]])
    codes = Codes(per_class.repeat(8, 1, 1), meta={"codebook_sizes": [4]})
    labels = torch.arange(3).repeat(8)
    sizes = {"gpt": {"primary": dict(n_layer=2, n_head=2, n_embd=32)},
             "maskgit": dict(n_layer=2, n_head=2, n_embd=32),
             "pixelcnn": dict(channels=16, n_layers=3)}[kind]
    prior = prior_class(kind).from_codes(codes, num_classes=3, sizes=sizes)
    opt = torch.optim.Adam(prior.parameters(), lr=1e-2)
    for _ in range(150):
        loss, _ = prior.loss(codes, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    gen = torch.Generator().manual_seed(0)
    for k in range(3):
        extra = {"steps": 4} if kind == "maskgit" else {}
        out = prior.sample(20, torch.full((20,), k), gen, **extra).primary
        hits = (out == per_class[k]).flatten(1).all(1).float().mean()
        assert hits >= 0.8, (k, hits)


def test_interface_refuses_bad_labels_and_options():
    codes = Codes(torch.zeros(2, 2, 2, dtype=torch.long), meta={"codebook_sizes": [4]})
    sizes = {"primary": dict(n_layer=1, n_head=1, n_embd=8)}
    plain = prior_class("gpt").from_codes(codes, sizes=sizes)
    cond = prior_class("gpt").from_codes(codes, num_classes=2, sizes=sizes)
    with pytest.raises(MvqError, match="unconditional .* takes no class labels"):
        plain.loss(codes, torch.zeros(2))
    with pytest.raises(MvqError, match="class conditional \\(2 classes\\): pass one class"):
        cond.sample(2)
    with pytest.raises(MvqError, match="this prior knows classes 0..1"):
        cond.sample(2, torch.tensor([0, 2]))
    with pytest.raises(MvqError, match="3 class labels for 2 items"):
        cond.nll(codes, torch.tensor([0, 1, 1]))
    with pytest.raises(MvqError, match="gpt prior has no decoding option 'steps'; it takes"):
        Decoding(steps=4).for_prior(plain)
    with pytest.raises(MvqError, match="top_p must be None or a number in \\(0, 1\\]"):
        Decoding(top_p=1.5).for_prior(plain)


def test_pixelcnn_spatial_condition_keeps_raster_causality():
    from mvq.priors import PixelCNN

    model = PixelCNN(5, channels=8, n_layers=3, spatial=True).double().eval()
    ids = torch.randint(0, 5, (1, 3, 4))
    where = torch.randn(1, 8, 3, 4, dtype=torch.float64)
    with torch.no_grad():
        base = model(ids, where=where).flatten(2)
        for t in range(12):
            changed = ids.clone().view(-1)
            changed[t] = (changed[t] + 1) % 5
            out = model(changed.view(1, 3, 4), where=where).flatten(2)
            assert torch.equal(out[..., : t + 1], base[..., : t + 1]), t
        assert not torch.allclose(model(ids, where=where + 1), model(ids, where=where))
    with pytest.raises(MvqError, match="spatially conditioned: pass where"):
        model(ids)
