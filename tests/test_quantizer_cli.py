"""`mvq quantizers`, and each quantizer family end to end on the command line: train a tiny
vqvae, load it, encode a data set to a token file, train a GPT prior on it."""

import pytest
import torch

import mvq
from mvq.cli import main
from mvq.quantize.registry import FAMILIES
from mvq.values.codes import Codes

TINY = ["model.type=vqvae", "model.factor=7", "model.hidden=16", "model.res_blocks=1",
        "model.res_channels=8", "model.dim=8", "model.levels=[5,3]", "model.bits=4",
        "model.depth=2", "data.name=shapes", "data.train_limit=32", "data.val_limit=8",
        "train.steps=2", "train.batch_size=4", "train.val_every=2", "train.grid_images=4"]


def test_quantizers_lists_each_family_on_one_line_with_its_bits(capsys):
    assert main(["quantizers"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == list(FAMILIES)
    for line, fam in zip(lines, FAMILIES.values()):
        assert f"bits/token {fam.bits}" in line and fam.summary in line


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
