"""MVQ over an FSQ or LFQ secondary code (``model.secondary``): the masks cover the secondary's
channels (FSQ's rounded channels, LFQ's signs); the tokenizer trains, encodes, decodes, counts
its bits, saves, loads and writes token files; configs without the key keep their hashes."""

import math

import pytest
import torch
from conftest import tiny_model_config

import mvq
from mvq.cli import main
from mvq.configuration.config import (
    codebook_sizes,
    config_from_dict,
    config_to_dict,
    load_config,
    model_hash,
)
from mvq.errors import MvqError
from mvq.models import build_model
from mvq.quantize import FSQ, LFQ
from mvq.quantize.registry import DEFAULT, SECONDARIES
from mvq.values.codes import Codes

# the secondary families and what their code is: (keys, D', K')
CODES = {"fsq": ({"levels": (5, 3, 4)}, 3, 60), "lfq": ({"bits": 5}, 5, 32)}


def tiny(secondary: str, **kw):
    keys, _, _ = CODES[secondary]
    return tiny_model_config(secondary=secondary, dim2=16, **keys, **kw)  # dim2: not read


def test_the_secondaries_are_vq_and_the_channel_code_families():
    assert SECONDARIES[0] == DEFAULT and set(SECONDARIES) == {DEFAULT, *CODES}


@pytest.mark.parametrize("secondary", sorted(CODES))
def test_mvqvae_over_a_channel_code_trains_encodes_decodes_and_counts_bits(secondary):
    torch.manual_seed(0)
    cfg = tiny(secondary)
    _, dim2, k2 = CODES[secondary]
    model = build_model(cfg)
    layer = model.mvq.secondary.layer
    assert isinstance(layer, FSQ if secondary == "fsq" else LFQ) and model.mvq.dim2 == dim2
    assert model.codebook_sizes == codebook_sizes(cfg) == [8, k2]
    x = torch.rand(4, 1, 28, 28)
    out = model(x)
    out.loss.backward()
    for part in (model.encoder, model.encoder2, model.mvq.f, model.decoder):
        assert all(p.grad is not None for p in part.parameters()), type(part).__name__
    assert sum(p.grad.abs().sum() for p in model.encoder2.parameters()) > 0  # through e'
    assert out.codes.mask.shape == (4, 1, 1, dim2) and int(out.codes.secondary.max()) < k2
    model.eval()
    codes = model.encode(x)
    assert codes.mask.shape == (4, 1, 1, dim2) and codes.meta["codebook_sizes"] == [8, k2]
    # e' is the secondary's own code of E'(y): its rounded channels / signs
    with torch.no_grad():
        y2 = model.encoder2(model.encoder(x * 2 - 1))
        assert torch.equal(codes.secondary, layer(y2)[1])
    torch.testing.assert_close(model.decode(codes), model(x).recon, atol=1e-5, rtol=1e-5)
    # bits: S log2(K/2) + S' log2(K') + S' min(log2 J_eval, D')
    s, s2 = model.tokens
    assert model.bits_per_image == pytest.approx(
        s * 3 + s2 * math.log2(k2) + s2 * min(math.log2(16), dim2))
    assert model.refined_mask_bits == s2 * dim2
    refined = model.encode(x, refine=True)
    assert refined.mask.shape == codes.mask.shape


def test_the_record_and_hash_change_only_with_a_secondary():
    base = load_config("fmnist_f28_k16_quick", ["model.type=mvqvae"])
    assert model_hash(base.model) == "3179ae6fd6e3"  # tests/test_quantizer_registry.py PINNED
    assert "secondary" not in config_to_dict(base)["model"]
    fsq = load_config("fmnist_f28_k16_quick", ["model.type=mvqvae", "model.secondary=fsq"])
    record = config_to_dict(fsq)["model"]
    assert record["secondary"] == "fsq" and record["levels"] == [8, 5, 5, 5]
    assert "dim2" not in record and "bits" not in record  # D' is the code's channels
    assert model_hash(fsq.model) != model_hash(base.model)
    assert config_from_dict(config_to_dict(fsq)) == fsq
    gan = load_config("fmnist_f28_k16_quick", ["model.type=mvqgan", "model.secondary=lfq"])
    assert codebook_sizes(gan.model) == [8, 1 << 10]


@pytest.mark.parametrize(("overrides", "message"), [
    (["model.type=mvqvae", "model.secondary=nope"], "model.secondary"),
    (["model.type=mvqvae", "model.secondary=rvq"], "model.secondary"),
    (["model.type=hvqvae", "model.secondary=fsq"], "masked secondary code"),
    (["model.type=vqvae", "model.secondary=lfq"], "masked secondary code"),
    (["model.type=mvqvae", "model.secondary=fsq", "model.dim2=8"], "model.dim2 is not read"),
    (["model.type=mvqvae", "model.secondary=fsq", "model.bits=4"],
     "model.bits is a key of model.quantizer=lfq, not read by model.type=mvqvae"),
    (["model.type=mvqvae", "model.levels=[5,5]"],
     "model.levels is a key of model.quantizer=fsq.*or set model.secondary=fsq"),
    (["model.type=mvqvae", "model.secondary=fsq", "model.levels=[64,64,64,64]"], "token file"),
])
def test_bad_secondary_keys_are_one_line_errors(overrides, message):
    with pytest.raises(MvqError, match=message):
        load_config("fmnist_f28_k16_quick", overrides)


TINY = ["model.type=mvqvae", "model.hidden=16", "model.res_blocks=1", "model.res_channels=8",
        "model.dim=8", "model.num_masks=8", "data.name=shapes", "data.train_limit=32",
        "data.val_limit=8", "train.steps=3", "train.batch_size=4", "train.val_every=3",
        "train.grid_images=4"]


@pytest.mark.parametrize(("secondary", "keys"), [("fsq", "model.levels=[5,3,4]"),
                                                 ("lfq", "model.bits=5")])
def test_cli_trains_loads_and_writes_token_files_over_a_channel_code(secondary, keys, tmp_path,
                                                                     capsys):
    run = tmp_path / "tok"
    assert main(["train", "--config", "fmnist_f28_k16_quick", *TINY, f"model.secondary={secondary}",
                 keys, f"train.out_dir={run}", "--no-progress"]) == 0
    model = mvq.load(run / "checkpoint")
    _, dim2, k2 = CODES[secondary]
    assert model.cfg.secondary == secondary and model.codebook_sizes == [8, k2]
    x = torch.rand(3, 1, 28, 28)
    codes = model.encode(x)
    torch.testing.assert_close(model.decode(codes), model(x).recon, atol=1e-5, rtol=1e-5)
    tokens = tmp_path / "tokens.safetensors"
    assert main(["encode-dataset", "--checkpoint", str(run / "checkpoint"), "--out",
                 str(tokens), "--limit", "16", "--no-progress"]) == 0
    stored = Codes.load(tokens)
    assert stored.meta["codebook_sizes"] == [8, k2] and stored.mask.shape == (16, 1, 1, dim2)
    assert model.decode(stored[:2]).shape == (2, 1, 28, 28)
    capsys.readouterr()
    assert main(["train-prior", str(tokens), "--type", "gpt", "--out", str(tmp_path / "prior"),
                 "--steps", "2", "--val-every", "2", "--batch-size", "4", "--no-progress"]) == 0
    prior = mvq.load(tmp_path / "prior" / "checkpoint")
    sample = prior.sample(2, generator=torch.Generator().manual_seed(0))
    assert sample.mask.shape == (2, 1, 1, dim2)
    assert model.decode(sample).shape == (2, 1, 28, 28)
