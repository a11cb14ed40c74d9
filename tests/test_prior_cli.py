"""Token files, prior training and sampling on a tiny tokenizer (shapes, 2 training steps)."""

import csv
import math

import pytest
import torch
from conftest import assert_labelled, tiny_model_config
from PIL import Image

from mvq.configuration.config import Config, DataConfig, TrainConfig
from mvq.data import build_dataset
from mvq.errors import MvqError
from mvq.inference.sample import Sampling, grid_shape, sample_images
from mvq.inference.tokens import encode_dataset, load_tokens
from mvq.models import build_model
from mvq.priors.base import validate_prior
from mvq.saved.checkpoint import save_checkpoint
from mvq.saved.pretrained import load_prior, load_tokenizer
from mvq.train import train
from mvq.train.prior import PriorTraining, train_prior
from mvq.values.decoding import Decoding

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
    settings = PriorTraining(steps=30, batch_size=16, lr=3e-3, val_fraction=0.25, sizes=TINY,
                             val_every=15, log_every=5)
    result = train_prior(tokens, root / "prior", settings, progress=False, device="cpu")
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
    assert info["format"] == "mvq-checkpoint-v1" and info["kind"] == "prior"
    assert info["step"] == 30
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
    with pytest.raises(MvqError, match="holds a MVQVAE, not a Prior"):
        load_prior(run["tok_a"])
    with pytest.raises(MvqError, match="holds no mvq model"):
        load_prior(run["root"])


def test_sample_images_png_and_reproducible(run, tmp_path):
    ckpt = run["prior"]["checkpoint"]
    a = sample_images(run["tok_a"], ckpt, tmp_path / "a.png", Sampling(10, Decoding(seed=3)))
    b = sample_images(run["tok_a"], ckpt, tmp_path / "b.png",
                      Sampling(10, Decoding(seed=3, top_k=8)))
    c = sample_images(run["tok_a"], ckpt, tmp_path / "c.png", Sampling(10, Decoding(seed=4)))
    img_a = Image.open(a)
    rows, cols = grid_shape(10)
    assert (rows, cols) == (2, 8)
    assert img_a.width > cols * 84 and rows * 84 < img_a.height < (rows + 2) * 84  # scale 3
    assert_labelled(a, row_labels=False)
    assert a.read_bytes() == b.read_bytes()  # top_k = K (8 ids) keeps every id
    assert a.read_bytes() != c.read_bytes()


def test_sample_refuses_a_prior_of_another_tokenizer(run, tmp_path):
    with pytest.raises(MvqError, match="trained on codes of tokenizer .* this tokenizer is"):
        sample_images(run["tok_b"], run["prior"]["checkpoint"], tmp_path / "x.png", Sampling(2))
    assert not (tmp_path / "x.png").exists()


# --- sample metrics (mvq evaluate --prior) -------------------------------------------------

@pytest.mark.filterwarnings("ignore:Matrix is singular")  # 12 images: rank-deficient covariances
def test_evaluate_samples_against_hand_computation(run, tmp_path):
    from mvq.evaluation import EvalSettings, evaluate_samples, format_table
    from mvq.inference.sample import sample_codes_and_images
    from mvq.metrics import extract_features, fid_from_features, get_inception, prd_f_scores

    n, ckpt = 12, run["prior"]["checkpoint"]
    res = evaluate_samples(run["tok_a"], ckpt, EvalSettings(
        n=n, batch_size=n, progress=False, device="cpu", cache_dir=str(tmp_path / "stats")),
        decoding=Decoding(seed=5))
    m = res["metrics"]
    assert res["kind"] == "samples" and res["n"] == n and res["prior_step"] == 30
    # by hand: the same seeded samples, the first n real test images, their tokens
    model, cfg, _ = load_tokenizer(run["tok_a"])
    model.eval()
    ds = build_dataset("shapes", split="test", size=cfg.model.image_size,
                       channels=cfg.model.channels, limit=n, seed=0)
    x = torch.stack([ds[i][0] for i in range(n)])
    _, samples = sample_codes_and_images(run["tok_a"], ckpt,
                                         Sampling(n, Decoding(seed=5), batch_size=n))
    ext = get_inception(device="cpu")
    real = extract_features(x, batch_size=n, progress=False, extractor=ext)
    fake = extract_features(samples, batch_size=n, progress=False, extractor=ext)
    assert abs(m["fid_samples"] - fid_from_features(real, fake)) < 1e-3
    f8, f1_8 = prd_f_scores(real, fake, num_clusters=20)
    assert m["prd_f8"] == pytest.approx(f8, abs=1e-6)
    assert m["prd_f1_8"] == pytest.approx(f1_8, abs=1e-6)
    # the timing covers the prior's sampling, then the decoder too: both spent, in that order
    assert 0 < m["tokens_s_per_img"] < m["sample_s_per_img"] < res["seconds"] / n
    assert res["prior_parameters"] == sum(p.numel() for p in load_prior(ckpt)[0].parameters())
    prior, _ = load_prior(ckpt)
    with torch.no_grad():
        want = prior.nll(model.encode(x))
    assert m["nll_primary"] == pytest.approx(want["primary"], rel=1e-5)
    assert m["nll_secondary"] == pytest.approx(want["secondary"], rel=1e-5)
    assert m["nll_secondary_bits"] == pytest.approx(want["secondary"] / math.log(2), rel=1e-5)
    assert "FID* (samples)" in format_table(res)

    # NLL over uneven batches (5 + 5 + 2 images) is the same per-token mean
    nll_only = evaluate_samples(run["tok_a"], ckpt, EvalSettings(
        n=n, batch_size=5, progress=False, device="cpu"), metrics="nll")
    assert set(nll_only["metrics"]) == {"nll_primary", "nll_primary_bits", "nll_secondary",
                                        "nll_secondary_bits"}
    assert nll_only["metrics"]["nll_primary"] == pytest.approx(want["primary"], rel=1e-5)
    assert nll_only["metrics"]["nll_secondary"] == pytest.approx(want["secondary"], rel=1e-5)


def test_decoding_is_checked_once_per_command(run, tmp_path, monkeypatch):
    """`mvq sample` / `mvq evaluate --prior`: the decoding values are checked once, and the
    prior asked once which options it takes, however many batches are drawn."""
    import mvq.values.decoding
    from mvq.cli import main
    from mvq.priors.base import Prior

    values, options = [], []
    check, ask = mvq.values.decoding.check_sampling, Prior.check_decoding
    monkeypatch.setattr(mvq.values.decoding, "check_sampling",
                        lambda *a: (values.append(a), check(*a))[1])
    monkeypatch.setattr(Prior, "check_decoding",
                        lambda self, opts: (options.append(dict(opts)), ask(self, opts))[1])
    ckpt = str(run["prior"]["checkpoint"])
    assert main(["sample", "--tokenizer", str(run["tok_a"]), "--prior", ckpt, "--n", "5",
                 "--top-k", "7", "--seed", "2", "--out", str(tmp_path / "s.png")]) == 0
    assert values == [(1.0, 7, None)] and options == [{"temperature": 1.0, "top_k": 7}]
    values.clear(), options.clear()
    assert main(["evaluate", "--checkpoint", str(run["tok_a"]), "--prior", ckpt, "--n", "4",
                 "--batch-size", "2", "--metrics", "nll", "--temperature", "0.5",
                 "--json", str(tmp_path / "e.json"), "--no-progress", "--device", "cpu"]) == 0
    assert values == [(0.5, None, None)] and options == [{"temperature": 0.5}]
    values.clear(), options.clear()
    from mvq.inference.sample import sample_codes_and_images

    codes, _ = sample_codes_and_images(run["tok_a"], ckpt, Sampling(5, Decoding(top_p=0.9),
                                                                    batch_size=2))
    assert len(codes) == 5  # three batches
    assert values == [(1.0, None, 0.9)] and options == [{"temperature": 1.0, "top_p": 0.9}]


def test_evaluate_samples_errors_and_cli(run, tmp_path, capsys):
    from mvq.cli import main
    from mvq.evaluation import EvalSettings, evaluate_samples

    ckpt = run["prior"]["checkpoint"]
    with pytest.raises(MvqError, match="trained on codes of tokenizer .* this tokenizer is"):
        evaluate_samples(run["tok_b"], ckpt, EvalSettings(n=4, progress=False, device="cpu"),
                         metrics="nll")
    with pytest.raises(MvqError, match="unknown sample metric 'rfid'"):
        evaluate_samples(run["tok_a"], ckpt, EvalSettings(n=4, progress=False, device="cpu"),
                         metrics="rfid")
    out = tmp_path / "s.json"
    code = main(["evaluate", "--checkpoint", str(run["tok_a"]), "--prior", str(ckpt), "--n", "6",
                 "--metrics", "nll", "--json", str(out), "--no-progress", "--device", "cpu"])
    assert code == 0
    import json
    saved = json.loads(out.read_text())
    assert saved["kind"] == "samples" and saved["n"] == 6
    assert math.isfinite(saved["metrics"]["nll_primary_bits"])
    assert "NLL primary (bits/token)" in capsys.readouterr().out
    code = main(["evaluate", "--checkpoint", str(run["tok_a"]), "--prior", str(ckpt), "--n", "6",
                 "--metrics", "ssim", "--no-progress"])
    assert code == 2 and "unknown sample metric 'ssim'" in capsys.readouterr().err
