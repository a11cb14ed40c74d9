"""The training engine shared by `mvq train` and `mvq train-prior`.

The pinned losses below were logged by the two separate loops (tokenizer loop and prior loop)
before they became one engine, on CPU with one thread: the engine must reproduce them, so the
refactor changed no batch, seed or step. Torch on CPU is deterministic on one machine, but its
kernels round differently on other CPUs (the pins were logged on an Intel CPU; an AMD EPYC
gives the last float32 digits differently, and a few steps grow that to ~4e-5; another Intel
Xeon moves the GAN's discriminator loss at step 3 by 7.4e-4), so they are compared to a relative
2e-3: a changed batch, seed or step moves a loss by far more (a seed moves the first loss by
10%, one step the discriminator loss by 10%).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_model_config

from mvq.configuration.config import Config, DataConfig, TrainConfig, load_config
from mvq.inference.tokens import TOKENS_FORMAT
from mvq.train import train
from mvq.train.prior import PriorTraining, train_prior
from mvq.values.codes import Codes

TINY_PRIOR = {"primary": dict(n_layer=1, n_head=2, n_embd=16),
              "secondary": dict(n_layer=1, n_head=2, n_embd=16)}


def _logged(out: Path, keys: list[str]) -> list[list[str]]:
    return [[r[k] for k in keys] for r in csv.DictReader(open(out / "metrics.csv"))]


def _assert_rows(got: list[list[str]], want: list[list[str]]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):  # parsed, so that 0.0 vs 0 formatting does not matter
        want_values = [pytest.approx(float(v), rel=2e-3, abs=1e-6) if v else None for v in w]
        assert [float(v) if v else None for v in g] == want_values, g


def tokenizer_config(out: Path) -> Config:
    return Config(model=tiny_model_config(num_masks=8),
                  data=DataConfig(name="shapes", train_limit=32, val_limit=8),
                  train=TrainConfig(steps=4, batch_size=8, val_every=2, ckpt_every=2,
                                    log_every=1, grid_images=2, out_dir=str(out)))


def gan_config(out: Path, **train_kw) -> Config:
    over = ["data.name=shapes", "data.train_limit=16", "data.val_limit=4", "loss.disc_start=1",
            "loss.disc_channels=8", "model.type=mvqgan", f"train.out_dir={out}",
            "train.steps=3", "train.batch_size=4", "train.val_every=3", "train.ckpt_every=3",
            "train.log_every=1", "train.grid_images=2", "model.hidden=16", "model.res_blocks=1",
            "model.res_channels=8", "model.dim=8", "model.dim2=8", "model.num_masks=8"]
    return load_config(None, over + [f"train.{k}={v}" for k, v in train_kw.items()])


def toy_tokens(path: Path, n: int = 48) -> Path:
    """Random MVQ-shaped codes (2x2 primary, 1x1 secondary, 4 mask bits) as a token file."""
    gen = torch.Generator().manual_seed(0)
    codes = Codes(torch.randint(0, 8, (n, 2, 2), generator=gen),
                  torch.randint(0, 8, (n, 1, 1), generator=gen),
                  torch.rand(n, 1, 1, 4, generator=gen) > 0.5,
                  {"model": "mvqvae", "config_hash": "test", "codebook_sizes": [8, 8]})
    codes.save(path, extra={"labels": torch.zeros(n, dtype=torch.int64)},
               metadata={"mvq_tokens": json.dumps({"format": TOKENS_FORMAT, "n": n})})
    return path


def test_tokenizer_losses_pinned(tmp_path):
    train(tokenizer_config(tmp_path / "tok"), progress=False)
    _assert_rows(_logged(tmp_path / "tok", ["step", "loss", "mhd", "val_mse"]), [
        ["1", "1.3727668523788452", "0.9878981709480286", ""],
        ["2", "1.2819076776504517", "0.9038913249969482", "0.14900869131088257"],
        ["3", "1.1094746589660645", "0.7711197733879089", ""],
        ["4", "1.1394402980804443", "0.8001305460929871", "0.1484234482049942"]])


def test_gan_losses_pinned(tmp_path):
    train(gan_config(tmp_path / "gan"), progress=False)
    _assert_rows(_logged(tmp_path / "gan", ["step", "loss", "d_loss", "val_mse"]), [
        ["1", "2.5310888290405273", "0.0", ""],
        ["2", "2.5205130577087402", "1.0091443061828613", ""],
        ["3", "2.2404274940490723", "0.9358135461807251", "0.1583777666091919"]])


def test_prior_losses_pinned(tmp_path):
    tokens = toy_tokens(tmp_path / "tokens.safetensors")
    train_prior(tokens, tmp_path / "prior", PriorTraining(
        steps=6, batch_size=8, lr=3e-3, val_fraction=0.25, sizes=TINY_PRIOR, val_every=3,
        log_every=2), progress=False, device="cpu")
    _assert_rows(_logged(tmp_path / "prior", ["step", "loss", "secondary", "val_nll"]), [
        ["0", "", "", "4.120430946350098"],
        ["2", "4.124070644378662", "2.0420033931732178", ""],
        ["3", "4.182155609130859", "", "4.020831346511841"],
        ["4", "4.071605682373047", "2.0109410285949707", ""],
        ["6", "4.0546875", "2.0598316192626953", "4.0378910303115845"]])


def _assert_same_files(a: Path, b: Path, names=("model.safetensors", "train_state.safetensors")):
    from safetensors.torch import load_file

    for name in names:
        x, y = load_file(str(a / name)), load_file(str(b / name))
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k]), (name, k)


def test_prior_resumes_exactly_and_a_finished_run_is_not_retrained(tmp_path):
    tokens = toy_tokens(tmp_path / "tokens.safetensors")
    def settings(steps):
        return PriorTraining(steps=steps, batch_size=8, lr=3e-3, val_fraction=0.25,
                             sizes=TINY_PRIOR, val_every=3, log_every=1)
    kw = dict(progress=False, device="cpu")
    full = train_prior(tokens, tmp_path / "full", settings(6), **kw)
    train_prior(tokens, tmp_path / "part", settings(3), **kw)
    resumed = train_prior(tokens, tmp_path / "part", settings(6), resume=True, **kw)
    _assert_same_files(full["checkpoint"], resumed["checkpoint"])
    assert resumed["metrics"] == full["metrics"] and resumed["initial"] == full["initial"]
    assert _logged(tmp_path / "part", ["step", "loss"]) == _logged(tmp_path / "full",
                                                                   ["step", "loss"])
    again = train_prior(tokens, tmp_path / "part", settings(6), resume=True, **kw)
    assert again["finished_before"] and again["metrics"] == full["metrics"]
    import pytest

    from mvq.errors import MvqError

    with pytest.raises(MvqError, match="already holds a prior run .* --resume"):
        train_prior(tokens, tmp_path / "part", settings(6), **kw)


def test_resume_of_a_finished_run_prints_its_metrics(tmp_path, capsys):
    from mvq.cli import main

    out = tmp_path / "tok"
    over = ["model.hidden=16", "model.res_blocks=1", "model.res_channels=8", "model.dim=8",
            "model.dim2=8", "model.num_masks=8", "data.name=shapes", "data.train_limit=16",
            "data.val_limit=4", "train.steps=2", "train.batch_size=4", "train.grid_images=2",
            f"train.out_dir={out}"]
    assert main(["train", *over, "--no-progress"]) == 0
    first = capsys.readouterr().out
    mtime = (out / "checkpoint" / "model.safetensors").stat().st_mtime_ns
    assert main(["train", *over, "--resume", "--no-progress"]) == 0
    said = capsys.readouterr().out
    assert "had already finished 2 steps (nothing trained)" in said
    assert "nan" not in said and first.split("val MSE")[1] == said.split("val MSE")[1]
    assert (out / "checkpoint" / "model.safetensors").stat().st_mtime_ns == mtime


def test_tensorboard_events_mirror_the_csv(tmp_path):
    import pytest

    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(tokenizer_config(tmp_path / "tok"), progress=False)
    events = EventAccumulator(str(tmp_path / "tok" / "tb"), size_guidance={"images": 0})
    events.Reload()
    rows = _logged(tmp_path / "tok", ["step", "loss", "val_mse"])
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == [int(r[0]) for r in rows]
    assert [e.value for e in loss] == [float(torch.tensor(float(r[1]))) for r in rows]
    assert [e.step for e in events.Scalars("val/mse")] == [2, 4]
    assert [e.step for e in events.Images("val/reconstructions")] == [2, 4]
