"""Loading checks integrity and names the file; divergence never writes non-finite weights; a
prior samples only through the exact tokenizer weights it was trained on (unless forced)."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from conftest import tiny_model_config
from safetensors.torch import load_file, save_file

from mvq.cli import main
from mvq.configuration.config import Config, DataConfig, TrainConfig, load_config
from mvq.errors import MvqError
from mvq.files import sealed
from mvq.inference.tokens import encode_dataset, load_tokens
from mvq.models import build_model
from mvq.saved import checkpoint, pretrained
from mvq.train import train
from mvq.train.prior import PriorTraining, train_prior

TINY = {"primary": dict(n_layer=1, n_head=2, n_embd=16),
        "secondary": dict(n_layer=1, n_head=2, n_embd=16)}


def _cfg(out, **train_kw) -> Config:
    kw = dict(steps=2, batch_size=8, grid_images=2, out_dir=str(out))
    kw.update(train_kw)
    return Config(model=tiny_model_config(num_masks=8, factor=7),  # 4x4 + 1x1 ids
                  data=DataConfig(name="shapes", train_limit=16, val_limit=4),
                  train=TrainConfig(**kw))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("loading")
    tok = train(_cfg(root / "a"), progress=False).out_dir / "checkpoint"
    tokens = encode_dataset(tok, root / "tokens.safetensors", limit=32, device="cpu",
                            progress=False)
    return {"root": root, "tok": tok, "tokens": tokens}


def _bad_tokens(run, tmp_path, name: str, **change) -> str:
    tensors = load_file(str(run["tokens"]))
    from safetensors import safe_open

    with safe_open(str(run["tokens"]), framework="pt") as fh:
        header = fh.metadata()
    tensors.update(change)
    path = tmp_path / f"{name}.safetensors"
    save_file(tensors, str(path), metadata=header)
    return str(path)


@pytest.mark.parametrize("name, change, problem", [
    ("float_ids", lambda t: {"primary": t["primary"].float()}, "primary ids are torch.float32"),
    ("out_of_range", lambda t: {"secondary": t["secondary"] + 8},
     "outside the codebook [0, 8)"),
    ("negative", lambda t: {"primary": t["primary"] * 0 - 1}, "outside the codebook"),
    ("float_mask", lambda t: {"mask": t["mask"].float()}, "mask is torch.float32"),
    ("mask_shape", lambda t: {"mask": t["mask"][:, :, :, :0]}, None),
    ("mask_values", lambda t: {"mask": t["mask"] * 3}, "mask holds values other than 0 and 1"),
    ("short_mask", lambda t: {"mask": t["mask"][:5]}, "mask has shape"),
    ("labels", lambda t: {"labels": t["labels"][:3]}, "labels have shape"),
])
def test_a_bad_token_file_is_named_with_its_problem(run, tmp_path, capsys, name, change,
                                                    problem):
    path = _bad_tokens(run, tmp_path, name, **change(load_file(str(run["tokens"]))))
    if problem is None:  # an empty mask dimension is harmless: it still loads
        load_tokens(path)
        return
    with pytest.raises(MvqError, match=rf"{re.escape(path)}: .*{re.escape(problem)}"):
        load_tokens(path)
    assert main(["train-prior", path, "--out", str(tmp_path / "p"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert path in err and problem.split()[0] in err and "Traceback" not in err


def test_truncated_token_file(run, tmp_path):
    data = run["tokens"].read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) - 40])
    with pytest.raises(MvqError, match="cut.safetensors is not a safetensors token file"):
        load_tokens(cut)


def test_damaged_checkpoints_are_named(run, tmp_path, capsys):
    ck = tmp_path / "ck"
    shutil.copytree(run["tok"], ck)
    (ck / "manifest.json").unlink()  # as written before manifests: only the content checks
    info = json.loads((ck / "config.json").read_text())
    info["config"]["model"]["dim"] = 12
    (ck / "config.json").write_text(json.dumps(info))
    with pytest.raises(MvqError, match=r"weights do not fit .* other shape"):
        pretrained.load_tokenizer(ck, verify=False)
    (ck / "config.json").write_text("{not json")
    with pytest.raises(MvqError, match="config.json is not valid JSON"):
        pretrained.load_tokenizer(ck, verify=False)
    shutil.copy(run["tok"] / "config.json", ck / "config.json")
    data = (ck / "model.safetensors").read_bytes()
    (ck / "model.safetensors").write_bytes(data[:100])
    assert main(["reconstruct", "--no-verify", "--checkpoint", str(ck), "--out",
                 str(tmp_path / "r.png"), "--n", "2"]) == 2
    err = capsys.readouterr().err
    assert "model.safetensors is damaged" in err and "Traceback" not in err


def test_divergence_keeps_the_last_finite_checkpoint(tmp_path):
    over = ["model.hidden=16", "model.res_blocks=1", "model.res_channels=8", "model.dim=8",
            "model.dim2=8", "model.num_masks=8", "data.name=shapes", "data.train_limit=16",
            "data.val_limit=4", "train.steps=30", "train.batch_size=4", "train.grid_images=2",
            "train.ckpt_every=1", "train.val_every=100", "model.ema=false",
            "train.lr=1000.0", f"train.out_dir={tmp_path}"]
    with pytest.raises(MvqError, match=r"diverged .* last finite checkpoint \(step (\d+)\)"):
        train(load_config(None, over), progress=False)
    ck = tmp_path / "checkpoint"
    for name in ("model.safetensors", "train_state.safetensors"):
        for k, v in load_file(str(ck / name)).items():
            assert not v.is_floating_point() or bool(torch.isfinite(v).all()), (name, k)
    step = sealed.read_manifest(ck)["step"]
    model = build_model(load_config(None, over).model)
    checkpoint.fit_weights(model, load_file(str(ck / "model.safetensors")), ck, "model")
    with torch.no_grad():  # a model that goes non-finite is refused, the checkpoint kept
        next(model.parameters()).fill_(float("nan"))
    with pytest.raises(checkpoint.NonFiniteError, match="non-finite values in"):
        checkpoint.save_checkpoint(ck, model, load_config(None, over), step + 1)
    assert sealed.read_manifest(ck)["step"] == step
    assert not list(tmp_path.glob(".checkpoint.tmp-*"))


def test_a_prior_samples_only_through_its_own_tokenizer_weights(run, tmp_path, capsys):
    settings = PriorTraining(steps=2, batch_size=8, val_fraction=0.25, sizes=TINY, val_every=2)
    prior = train_prior(run["tokens"], tmp_path / "prior", settings, progress=False,
                        device="cpu")["checkpoint"]
    info = json.loads((prior / "config.json").read_text())
    model, cfg, _ = pretrained.load_tokenizer(run["tok"])
    assert info["tokenizer_weights_sha256"] == checkpoint.tensors_sha256(model)
    other = tmp_path / "other" / "checkpoint"  # same architecture, other weights
    torch.manual_seed(5)
    checkpoint.save_checkpoint(other, build_model(cfg.model), cfg, 0)
    args = ["--tokenizer", str(other), "--prior", str(prior), "--n", "2"]
    assert main(["sample", *args, "--out", str(tmp_path / "s.png")]) == 2
    err = capsys.readouterr().err
    assert "trained on tokens of other weights" in err and "--force" in err
    assert not (tmp_path / "s.png").exists()
    assert main(["evaluate", "--checkpoint", str(other), "--prior", str(prior), "--n", "4",
                 "--metrics", "nll", "--no-progress", "--json", str(tmp_path / "e.json")]) == 2
    assert "trained on tokens of other weights" in capsys.readouterr().err
    assert main(["sample", *args, "--out", str(tmp_path / "s.png"), "--force"]) == 0
    assert main(["sample", "--tokenizer", str(run["tok"]), "--prior", str(prior), "--n", "2",
                 "--out", str(tmp_path / "own.png")]) == 0
