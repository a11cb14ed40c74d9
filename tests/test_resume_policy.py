"""Resume tells the truth (issue 19): every config key may change on resume (applied, logged)
or is fixed (refused naming the key and both values); a run's step target is its own; the
thread count is recorded with the run and taken again on resume, so that an exact resume does
not depend on what the resuming process would pick."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from test_engine import toy_tokens

from mvq.cli import main
from mvq.configuration.config import RESUME_MAY_CHANGE, Config
from mvq.runtime import threads
from mvq.train.prior import PRIOR_DEFAULTS, PRIOR_MAY_CHANGE

TINY = ["model.hidden=16", "model.res_blocks=1", "model.res_channels=8", "model.dim=8",
        "model.dim2=8", "model.num_masks=8", "data.name=shapes", "data.train_limit=16",
        "data.val_limit=4", "train.batch_size=4", "train.grid_images=2", "train.ckpt_every=2",
        "train.val_every=2", "train.log_every=1"]


def _preset(tmp_path: Path) -> Path:
    """A preset whose step count (50) no test reaches: the run's own target must win."""
    path = tmp_path / "preset.yaml"
    path.write_text("model:\n  hidden: 16\n  res_blocks: 1\n  res_channels: 8\n  dim: 8\n"
                    "  dim2: 8\n  num_masks: 8\ndata:\n  name: shapes\n  train_limit: 16\n"
                    "  val_limit: 4\ntrain:\n  steps: 50\n  batch_size: 4\n  grid_images: 2\n"
                    "  ckpt_every: 2\n  val_every: 2\n")
    return path


def _info(out: Path) -> dict:
    return json.loads((out / "checkpoint" / "config.json").read_text())


def _optimizer_lrs(out: Path) -> list[float]:
    with safe_open(str(out / "checkpoint" / "train_state.safetensors"), "pt") as fh:
        groups = json.loads(fh.metadata()["optimizer"])["param_groups"]
    return [g["lr"] for g in groups]


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "checkpoint").iterdir())}


def _same_weights(a: Path, b: Path) -> bool:
    x, y = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


# ----------------------------------------------------------------------------- the policy
def test_every_key_named_may_change_exists():
    cfg = Config()
    for key in RESUME_MAY_CHANGE:
        section, name = key.split(".")
        assert name in {f.name for f in dataclasses.fields(getattr(cfg, section))}, key
    assert set(PRIOR_MAY_CHANGE) < {f.name for f in dataclasses.fields(PRIOR_DEFAULTS)}


def test_a_new_lr_on_resume_is_applied_logged_and_written(tmp_path, capsys):
    run = lambda out, *extra: main(["train", *TINY, f"train.out_dir={out}",  # noqa: E731
                                    "--no-progress", *extra])
    for name in ("new", "old"):
        assert run(tmp_path / name, "train.steps=2") == 0
    assert _optimizer_lrs(tmp_path / "new") == [5e-4]
    capsys.readouterr()
    assert run(tmp_path / "new", "train.steps=4", "train.lr=1e-4", "--resume") == 0
    assert "train.lr 0.0005 -> 0.0001" in capsys.readouterr().err
    assert run(tmp_path / "old", "train.steps=4", "--resume") == 0
    assert _optimizer_lrs(tmp_path / "new") == [1e-4]  # the restored optimizer's rate
    assert _optimizer_lrs(tmp_path / "old") == [5e-4]
    assert _info(tmp_path / "new")["config"]["train"]["lr"] == 1e-4  # config.json says so
    assert not _same_weights(tmp_path / "new" / "checkpoint", tmp_path / "old" / "checkpoint")


@pytest.mark.parametrize("override, old", [
    ("model.num_masks=16", 8), ("model.type=hvqvae", "mvqvae"), ("train.batch_size=8", 4),
    ("train.seed=1", 0), ("train.betas=[0.9,0.99]", [0.5, 0.9]), ("train.ema_decay=0.5", 0.0),
    ("data.train_limit=12", 16), ("data.val_limit=3", 4), ("loss.disc_start=7", 10000),
])
def test_a_fixed_key_is_refused_naming_it_and_both_values(tmp_path, capsys, override, old):
    out = tmp_path / "run"
    assert main(["train", *TINY, "train.steps=2", f"train.out_dir={out}", "--no-progress"]) == 0
    before = _files(out)
    capsys.readouterr()
    assert main(["train", *TINY, override, "train.steps=4", f"train.out_dir={out}",
                 "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    key, new = override.split("=")
    assert len(err) == 1 and f"{key} is fixed for a run's life; the run has {old!r}" in err[0]
    assert new.replace("[", "").split(",")[0] in err[0]
    assert _files(out) == before


def test_resume_trains_to_the_runs_own_step_target_not_the_presets(tmp_path, capsys):
    preset, out = _preset(tmp_path), tmp_path / "run"
    base = ["train", "--config", str(preset), f"train.out_dir={out}", "--no-progress"]
    assert main([*base, "train.steps=2"]) == 0
    before = _files(out)
    capsys.readouterr()
    assert main([*base, "--resume"]) == 0  # the run's 2 steps, not the preset's 50
    said = capsys.readouterr()
    assert "had already finished 2 steps (nothing trained)" in said.out
    assert "kept the run's own train.steps (the preset's differ)" in said.err
    assert main([*base, "--resume", "model.dim=4"]) == 2  # refused in one line
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert _files(out) == before
    assert main([*base, "--resume", "train.steps=4"]) == 0  # a new target, said on the line
    assert _info(out)["step"] == 4 and _info(out)["config"]["train"]["steps"] == 4
    assert main(["train", "--config", str(preset), f"train.out_dir={out}", "--resume"]) == 0
    assert _info(out)["step"] == 4  # again the run's own (now 4)


def test_a_prior_resume_keeps_its_settings_and_refuses_fixed_ones(tmp_path, capsys):
    tokens, out = toy_tokens(tmp_path / "tokens.safetensors"), tmp_path / "prior"
    base = ["train-prior", str(tokens), "--out", str(out), "--val-every", "2", "--no-progress"]
    assert main([*base, "--steps", "2", "--batch-size", "8", "--val-fraction", "0.25",
                 "--lr", "1e-3"]) == 0
    before = _files(out)
    assert main([*base, "--resume"]) == 0  # its own 2 steps (not 2000), batch 8, fraction 0.25
    assert "had already finished 2 steps" in capsys.readouterr().out and _files(out) == before
    for option, value, old in (("--batch-size", "16", 8), ("--seed", "3", 0),
                               ("--val-fraction", "0.5", 0.25)):
        assert main([*base, "--resume", "--steps", "4", option, value]) == 2
        err = capsys.readouterr().err
        assert f"{option} is fixed for a run's life; the run has {old!r}" in err
        assert _files(out) == before
    assert main([*base, "--resume", "--steps", "4", "--lr", "2e-4"]) == 0
    assert "--lr 0.001 -> 0.0002" in capsys.readouterr().err
    assert _optimizer_lrs(out) == [2e-4] * len(_optimizer_lrs(out))
    assert _info(out)["train"]["lr"] == 2e-4 and _info(out)["train"]["batch_size"] == 8


# ----------------------------------------------------------------------------- threads
def test_resume_threads_policy(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    monkeypatch.setattr(threads, "_chosen", (1, "torch default 2 shared by 2 mvq processes"))
    assert threads.resume_threads(2)[0] == 2  # the run's own, said in the note
    assert "the run's own 2 threads, not 1" in threads.resume_threads(2)[1]
    assert threads.resume_threads(1) == (1, None)
    for missing in (None, 0, "2", True):  # a run that recorded none (or nonsense)
        n, note = threads.resume_threads(missing)
        assert n == 1 and "did not record its thread count" in note
    monkeypatch.setattr(threads, "_chosen", (1, "--threads"))
    n, note = threads.resume_threads(2)  # --threads asked for another: honoured, warned
    assert n == 1 and "the weights will differ" in note


def _cli(out: Path, steps: int, *extra: str, env_threads: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": env_threads}
    return subprocess.run([sys.executable, "-m", "mvq", "train", *TINY, f"train.steps={steps}",
                           f"train.out_dir={out}", "--no-progress", *extra],
                          env=env, capture_output=True, text=True, check=True)


def test_a_run_resumed_under_another_default_thread_count_continues_exactly(tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    _cli(full, 2, "--threads", "2", env_threads="1")
    _cli(part, 1, "--threads", "2", env_threads="1")
    assert _info(part)["threads"] == 2
    # the resuming process would pick 1 thread (OMP_NUM_THREADS=1): it takes the run's 2
    done = _cli(part, 2, "--resume", env_threads="1")
    assert "resuming with the run's own 2 threads" in done.stderr
    for name in ("model.safetensors", "train_state.safetensors"):
        a = load_file(str(full / "checkpoint" / name))
        b = load_file(str(part / "checkpoint" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert _info(part)["threads"] == 2
