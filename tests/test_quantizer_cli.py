"""`mvq quantizers`, and each quantizer family end to end on the command line: train a tiny
vqvae, load it, encode a data set to a token file, train a GPT prior on it."""

import pytest
import torch

import mvq
from mvq.cli import main
from mvq.configuration.sections import LISTED_TYPES
from mvq.errors import MvqError
from mvq.quantize.registry import FAMILIES
from mvq.values.codes import Codes

TINY = ["model.type=vqvae", "model.factor=7", "model.hidden=16", "model.res_blocks=1",
        "model.res_channels=8", "model.dim=8", "model.levels=[5,3]", "model.bits=4",
        "model.depth=2", "model.heads=2", "data.name=shapes", "data.train_limit=32",
        "data.val_limit=8",
        "train.steps=2", "train.batch_size=4", "train.val_every=2", "train.grid_images=4"]


def test_quantizers_lists_each_family_on_one_line_with_its_bits(capsys):
    assert main(["quantizers"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == [*FAMILIES, *LISTED_TYPES]
    assert {"vq", "hierarchical", "rvq", "fsq", "lfq", "mvq", "multichannel"} <= {
        line.split()[0] for line in lines}
    for line, fam in zip(lines, FAMILIES.values()):
        assert f"bits/token {fam.bits}" in line and fam.summary in line
    for line, records in zip(lines[len(FAMILIES):], LISTED_TYPES.values()):
        assert f"bits/token {records[0].bits}" in line and records[0].summary in line


# the keys of TINY's backbone that the two-level tokenizers read too (no family keys)
TWO_LEVEL = [a for a in TINY if a.split("=")[0] not in {
    "model.type", *(f"model.{k}" for f in FAMILIES.values() for k in f.fields)}]
# what each listed name trains from the mvqvae preset, given alone (no model.type)
TYPES = {**{name: "vqvae" for name in FAMILIES}, "hierarchical": "hvqvae", "mvq": "mvqvae"}


@pytest.mark.parametrize("name", [*FAMILIES, *LISTED_TYPES])
def test_each_listed_quantizer_trains_from_the_preset_given_alone(name, tmp_path, capsys):
    """`mvq train --config fmnist_f28_k16_quick model.quantizer=NAME` (no model.type) trains
    that quantizer's tokenizer, and mvq.load of the run decodes what it encodes."""
    assert set(TYPES) == {*FAMILIES, *LISTED_TYPES}
    run = tmp_path / "tok"
    keys = TWO_LEVEL + ([a for a in _keys(name) if a not in TWO_LEVEL and a != "model.type=vqvae"]
                        if name in FAMILIES else [])
    assert main(["train", "--config", "fmnist_f28_k16_quick", *keys, f"model.quantizer={name}",
                 f"train.out_dir={run}", "--no-progress"]) == 0
    said = capsys.readouterr().out
    assert f"trained {TYPES[name]}{f' ({name})' if name in FAMILIES else ''} for 2 steps" in said
    model = mvq.load(run / "checkpoint")
    assert model.cfg.type == TYPES[name]
    if name in FAMILIES:
        assert model.cfg.quantizer == name
    x = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(model.decode(model.encode(x)), model(x).recon, atol=1e-5,
                               rtol=1e-5)


def test_a_two_level_name_keeps_the_gan_loss_and_refuses_a_clashing_type(tmp_path):
    from mvq.configuration.config import load_config

    assert load_config("fmnist_f28_k16_hvqgan_quick", ["model.quantizer=mvq"]).model.type == \
        "mvqgan"
    assert load_config("fmnist_f28_k16_quick", ["model.quantizer=hierarchical"]).model.type == \
        "hvqvae"
    with pytest.raises(MvqError, match="model.quantizer=mvq is model.type=mvqvae or mvqgan"):
        load_config("fmnist_f28_k16_quick", ["model.quantizer=mvq", "model.type=hvqvae"])
    with pytest.raises(MvqError, match="one-level VQ-VAE backbone.*VQGAN loss"):
        load_config("fmnist_f28_k16_hvqgan_quick", ["model.quantizer=fsq"])
    with pytest.raises(MvqError, match="whose model section is not this config's"):
        load_config("movq_fmnist_movq_quick", ["model.quantizer=mvq"])
    with pytest.raises(MvqError, match="must be one of vq, .*hierarchical, mvq"):
        load_config("fmnist_f28_k16_quick", ["model.quantizer=Mvq"])
    # both in one file: the type is not silently replaced
    both = tmp_path / "both.yaml"
    both.write_text("model:\n  type: hvqvae\n  quantizer: fsq\n")
    with pytest.raises(MvqError, match="needs the one-level backbone"):
        load_config(both)
    # a family with its type given stays as given; the record of a two-level model is unchanged
    assert load_config("fmnist_f28_k16_quick", ["model.quantizer=vq"]).model.type == "vqvae"
    plain = load_config("fmnist_f28_k16_quick", ["model.type=hvqvae"])
    named = load_config("fmnist_f28_k16_quick", ["model.quantizer=hierarchical"])
    assert plain.model == named.model


def _keys(name: str) -> list[str]:
    """TINY without the family keys that ``name`` does not read."""
    unread = {f"model.{k}" for f in FAMILIES.values() for k in f.fields} - {
        f"model.{k}" for k in FAMILIES[name].fields}
    return [a for a in TINY if a.split("=")[0] not in unread]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_each_family_trains_loads_encodes_a_dataset_and_trains_a_gpt(name, tmp_path, capsys):
    run = tmp_path / "tok"
    assert main(["train", "--config", "fmnist_f28_k16_quick", *_keys(name),
                 f"model.quantizer={name}", f"train.out_dir={run}", "--no-progress"]) == 0
    model = mvq.load(run / "checkpoint")
    x = torch.rand(3, 1, 28, 28)
    codes = model.encode(x)
    torch.testing.assert_close(model.decode(codes), model(x).recon, atol=1e-5, rtol=1e-5)
    tokens = tmp_path / "tokens.safetensors"
    assert main(["encode-dataset", "--checkpoint", str(run / "checkpoint"), "--out",
                 str(tokens), "--limit", "16", "--no-progress"]) == 0
    stored = Codes.load(tokens)
    fam = FAMILIES[name]
    depth = fam.depth(model.cfg)
    assert stored.primary.shape == ((16, 4, 4) if depth == 1 else (16, 4, 4, depth))
    assert stored.meta["codebook_sizes"] == [fam.codebook_size(model.cfg)]
    capsys.readouterr()
    assert main(["train-prior", str(tokens), "--type", "gpt", "--out", str(tmp_path / "prior"),
                 "--steps", "2", "--val-every", "2", "--batch-size", "4", "--no-progress"]) == 0
    assert "val NLL" in capsys.readouterr().out
    prior = mvq.load(tmp_path / "prior" / "checkpoint")
    sample = prior.sample(2, generator=torch.Generator().manual_seed(0))
    assert model.decode(sample).shape == (2, 1, 28, 28)


def test_resume_refuses_another_quantizer_by_name(tmp_path, capsys):
    """--resume keeps the run's model: a quantizer name that would change it is refused as a
    fixed key, with both values (not as the key clash it would cause)."""
    run = tmp_path / "tok"
    keys = [a for a in _keys("fsq") if a != "model.type=vqvae"]
    assert main(["train", "--config", "fmnist_f28_k16_quick", *keys, "model.quantizer=fsq",
                 f"train.out_dir={run}", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", "--config", "fmnist_f28_k16_quick", *keys,
                 "model.quantizer=mvq", "train.steps=4", f"train.out_dir={run}",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.quantizer is fixed for a run's life" in err[0]
    assert "'fsq'" in err[0] and "'mvq'" in err[0]
    # another family whose defaults the run lacks (LFQ's bits): still the quantizer named
    assert main(["train", "--resume", "--config", "fmnist_f28_k16_quick", "model.quantizer=lfq",
                 f"train.out_dir={run}", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.quantizer is fixed for a run's life" in err[0]
    assert "'fsq'" in err[0] and "'lfq'" in err[0]
    # the run's own keys (here without model.quantizer, which the preset would make mvqvae):
    # the preset with them is no valid config, and the resume goes on with the run's own
    assert main(["train", "--resume", "--config", "fmnist_f28_k16_quick", *keys,
                 "train.steps=4", f"train.out_dir={run}", "--no-progress"]) == 0
    assert "trained vqvae (fsq) for 4 steps" in capsys.readouterr().out
