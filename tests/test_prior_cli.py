"""Token files, prior training and sampling on a tiny tokenizer (shapes, 2 training steps)."""

import csv
import math

import pytest
import torch
from conftest import tiny_model_config
from PIL import Image

from mvq.checkpoint import load_tokenizer, save_checkpoint
from mvq.config import Config, DataConfig, TrainConfig
from mvq.data import build_dataset
from mvq.errors import MvqError
from mvq.models import build_model
from mvq.sample import grid_shape, sample_images
from mvq.tokens import encode_dataset, load_tokens
from mvq.train import train
from mvq.train.prior import load_prior, train_prior, validate_prior

TINY = {"primary": dict(n_layer=1, n_head=2, n_embd=16),
        "secondary": dict(n_layer=1, n_head=2, n_embd=16)}
N_IMAGES = 64


def _cfg(out_dir, **model_kw) -> Config:
    return Config(model=tiny_model_config(num_masks=8, factor=7, **model_kw),  # 4x4 + 1x1 ids
                  data=DataConfig(name="shapes", train_limit=32, val_limit=8),
                  train=TrainConfig(steps=2, batch_size=8, val_every=2, ckpt_every=2,
                                    log_every=1, grid_images=2, out_dir=str(out_dir)))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Tokenizer A (trained 2 steps), tokenizer B (other config), tokens, a trained prior."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("prior")
    tok_a = train(_cfg(root / "tok_a"), progress=False).out_dir / "checkpoint"
    cfg_b = _cfg(root / "tok_b", codebook_size=32)
    tok_b = save_checkpoint(root / "tok_b" / "checkpoint", build_model(cfg_b.model), cfg_b, 0)
    tokens = encode_dataset(tok_a, root / "tokens.safetensors", limit=N_IMAGES, batch_size=24,
                            device="cpu", progress=False)
    result = train_prior(tokens, root / "prior", steps=30, batch_size=16, lr=3e-3,
                         val_fraction=0.25, sizes=TINY, val_every=15, log_every=5,
                         progress=False, device="cpu")
    return {"root": root, "tok_a": tok_a, "tok_b": tok_b, "tokens": tokens, "prior": result}


def test_token_file_round_trip_equals_encode(run):
    model, cfg, _ = load_tokenizer(run["tok_a"])
    model.eval()
    ds = build_dataset("shapes", split="train", size=cfg.model.image_size,
                       channels=cfg.model.channels, limit=N_IMAGES, seed=cfg.train.seed)
    images = torch.stack([ds[i][0] for i in range(len(ds))])
    want = model.encode(images)
    codes, labels, meta = load_tokens(run["tokens"], expect_hash=want.meta["config_hash"])
    assert len(codes) == N_IMAGES == meta["n"] and meta["split"] == "train"
    assert torch.equal(codes.primary, want.primary)
    assert torch.equal(codes.secondary, want.secondary)
    assert codes.mask is not None and torch.equal(codes.mask, want.mask)
    assert codes.meta == want.meta and meta["config_hash"] == want.meta["config_hash"]
    assert meta["model"] == "mvqvae" and meta["checkpoint"] == str(run["tok_a"])
    assert torch.equal(labels, torch.tensor([ds[i][1] for i in range(len(ds))]))


def test_token_file_from_another_tokenizer_refused(run, tmp_path):
    other = encode_dataset(run["tok_b"], tmp_path / "b.safetensors", limit=4, device="cpu",
                           progress=False)
    hash_a = load_tokens(run["tokens"])[0].meta["config_hash"]
    with pytest.raises(MvqError, match="was made by tokenizer .* re-run mvq encode-dataset"):
        load_tokens(other, expect_hash=hash_a)
    not_tokens = tmp_path / "codes.safetensors"
    load_tokens(run["tokens"])[0].save(not_tokens)  # a plain Codes file: no token metadata
    with pytest.raises(MvqError, match="not an mvq token file"):
        load_tokens(not_tokens)
    (tmp_path / "junk.safetensors").write_text("junk")
    with pytest.raises(MvqError, match="not a safetensors token file"):
        load_tokens(tmp_path / "junk.safetensors")


def test_prior_trains_and_round_trips(run):
    res = run["prior"]
    final, initial = res["metrics"], res["initial"]
    assert res["step"] == 30
    for key in ("val_nll", "val_primary_nll", "val_secondary_nll", "val_primary_bits"):
        assert math.isfinite(final[key]), key
    assert final["val_nll"] < initial["val_nll"]
    assert final["val_primary_bits"] == pytest.approx(final["val_primary_nll"] / math.log(2))
    rows = list(csv.DictReader(open(res["checkpoint"].parent / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == [0, 5, 10, 15, 20, 25, 30]
    assert rows[3]["val_nll"] and rows[-1]["val_secondary_bits"]
    prior, info = load_prior(res["checkpoint"])
    assert info["format"] == "mvq-prior-v1" and info["step"] == 30
    assert info["metrics"] == pytest.approx(final)
    codes, _, _ = load_tokens(run["tokens"])
    assert info["tokenizer_config_hash"] == codes.meta["config_hash"]
    # the same held-out slice (seeded permutation) reproduces the saved metric exactly
    n_val = info["train"]["n_val"]
    val = codes[torch.randperm(len(codes), generator=torch.Generator().manual_seed(0))[:n_val]]
    assert validate_prior(prior, val) == pytest.approx(final)
    again, _ = load_prior(res["checkpoint"])
    assert again.nll(codes) == prior.nll(codes)


def test_load_prior_refuses_a_tokenizer_folder(run):
    with pytest.raises(MvqError, match="format 'mvq-checkpoint-v1', expected 'mvq-prior-v1'"):
        load_prior(run["tok_a"])
    with pytest.raises(MvqError, match="is not an mvq prior checkpoint"):
        load_prior(run["root"])


def test_sample_images_png_and_reproducible(run, tmp_path):
    ckpt = run["prior"]["checkpoint"]
    a = sample_images(run["tok_a"], ckpt, n=10, out=tmp_path / "a.png", seed=3)
    b = sample_images(run["tok_a"], ckpt, n=10, out=tmp_path / "b.png", seed=3, top_k=50)
    c = sample_images(run["tok_a"], ckpt, n=10, out=tmp_path / "c.png", seed=4)
    img_a = Image.open(a)
    rows, cols = grid_shape(10)
    assert (rows, cols) == (2, 8)
    assert img_a.size == (cols * (28 + 2) + 2, rows * (28 + 2) + 2)
    assert a.read_bytes() == b.read_bytes()  # top_k >= K keeps every id: same draws
    assert a.read_bytes() != c.read_bytes()


def test_sample_refuses_a_prior_of_another_tokenizer(run, tmp_path):
    with pytest.raises(MvqError, match="trained on codes of tokenizer .* this tokenizer is"):
        sample_images(run["tok_b"], run["prior"]["checkpoint"], n=2, out=tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
