"""Faults: kill -9 at any moment (including inside a checkpoint write), then resume: the final
weights and training state equal an uninterrupted run's bit for bit (CPU). Checkpoints are
all-or-nothing; a second run into the same folder is refused while the first holds it."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mvq.configuration.config import load_config
from mvq.errors import MvqError
from mvq.files import sealed
from mvq.saved import pretrained
from mvq.train import train

STEPS = 8
OVER = ["model.hidden=16", "model.res_blocks=1", "model.res_channels=8", "model.dim=8",
        "model.dim2=8", "model.num_masks=8", "model.codebook_size=16", "data.name=shapes",
        "data.train_limit=24", "data.val_limit=4", f"train.steps={STEPS}",
        "train.batch_size=8", "train.ckpt_every=1", "train.val_every=4", "train.log_every=1",
        "train.grid_images=2"]


def _start(out: Path, *extra: str, sleep: float = 0.0) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", sealed.SLOW_WRITE_ENV: str(sleep)}
    return subprocess.Popen([sys.executable, "-m", "mvq", "train", *OVER,
                             f"train.out_dir={out}", "--no-progress", *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _resume_args(out: Path) -> list[str]:
    return ["--resume"] if sealed.latest(out / "checkpoint") else []


def _wait_for(cond, proc: subprocess.Popen, timeout: float = 120.0) -> bool:
    """Poll ``cond`` until true (True) or the process ends first (False)."""
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.005)
    raise AssertionError("timed out waiting for the training subprocess")


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()


def _assert_same_state(a: Path, b: Path) -> None:
    for name in ("model.safetensors", "train_state.safetensors"):
        x, y = load_file(str(a / name)), load_file(str(b / name))
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k]), (name, k)


def test_kill_9_anywhere_then_resume_is_bit_exact(tmp_path):
    ref = train(load_config(None, [*OVER, f"train.out_dir={tmp_path / 'ref'}"]), progress=False)
    out = tmp_path / "killed"
    ckpt = out / "checkpoint"
    rng = random.Random(1234)
    # 1. inside a checkpoint swap: the old checkpoint retired, the new one not yet in place
    proc = _start(out, sleep=0.5)
    swapping = lambda: not ckpt.exists() and bool(sealed.retired(ckpt))  # noqa: E731
    assert _wait_for(swapping, proc), proc.communicate()[1][-2000:]
    _kill(proc)
    assert not ckpt.exists() and sealed.latest(ckpt) is not None
    # 2. inside a checkpoint write, before its manifest (hidden folder, partly written)
    proc = _start(out, *_resume_args(out), sleep=0.2)
    writing = lambda: any(out.glob(".checkpoint.tmp-*"))  # noqa: E731
    _wait_for(writing, proc)
    _kill(proc)
    # 3.-4. at random moments once the run is under way
    for _ in range(2):
        proc = _start(out, *_resume_args(out), sleep=0.05)
        if _wait_for(lambda: (out / "metrics.csv").is_file(), proc):
            time.sleep(rng.uniform(0.0, 1.0))
        _kill(proc)
    proc = _start(out, *_resume_args(out))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    _assert_same_state(ref.out_dir / "checkpoint", ckpt)
    assert not list(out.glob(".checkpoint.tmp-*")) and not sealed.retired(ckpt)
    steps = [line.split(",")[0] for line in (out / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == [str(s) for s in range(1, STEPS + 1)]  # no row twice after the kills


def test_a_second_run_into_the_same_folder_is_refused(tmp_path):
    out = tmp_path / "run"
    first = _start(out, sleep=5.0)  # slow checkpoint swaps: still running when the second starts
    try:
        assert _wait_for(lambda: (out / "metrics.csv").is_file(), first)
        second = _start(out, "--overwrite")
        _, err = second.communicate(timeout=300)
        assert second.returncode == 2
        assert "is in use by another mvq run" in err and "Traceback" not in err
    finally:
        _kill(first)
    again = _start(out, *_resume_args(out))  # the OS released the killed run's lock
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err[-2000:]


def test_keep_checkpoints_and_a_damaged_checkpoint(tmp_path):
    cfg = load_config(None, [*OVER, "train.steps=3", "train.keep_checkpoints=2",
                             f"train.out_dir={tmp_path / 'run'}"])
    train(cfg, progress=False)
    ckpt = tmp_path / "run" / "checkpoint"
    assert [p.name for p in sealed.retired(ckpt)] == ["checkpoint-000002"]
    assert sealed.read_manifest(ckpt)["step"] == 3
    weights = ckpt / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF  # one flipped byte inside a tensor: safetensors alone would not notice
    weights.write_bytes(bytes(data))
    with pytest.raises(MvqError, match="model.safetensors is damaged"):
        pretrained.load_tokenizer(ckpt)
    weights.write_bytes(bytes(data[: len(data) // 2]))  # truncated
    with pytest.raises(MvqError, match="model.safetensors is damaged"):
        pretrained.load_tokenizer(ckpt)


def test_train_prior_refuses_a_held_folder(tmp_path):
    from test_engine import TINY_PRIOR, toy_tokens

    from mvq.train.engine import locked
    from mvq.train.prior import PriorTraining, train_prior

    tokens = toy_tokens(tmp_path / "tokens.safetensors")
    out = tmp_path / "prior"
    kw = dict(settings=PriorTraining(steps=2, batch_size=8, val_fraction=0.25,
                                     sizes=TINY_PRIOR, val_every=2),
              progress=False, device="cpu")
    with locked(out):  # as another process would hold it (flock: per open file)
        with pytest.raises(MvqError, match="is in use by another mvq run"):
            train_prior(tokens, out, **kw)
        assert not (out / "metrics.csv").exists() and not (out / "checkpoint").exists()
    assert train_prior(tokens, out, **kw)["step"] == 2


def test_a_foreign_checkpoint_folder_is_never_deleted(tmp_path):
    out = tmp_path / "run"
    (out / "checkpoint").mkdir(parents=True)
    (out / "checkpoint" / "notes.txt").write_text("mine")
    with pytest.raises(MvqError, match="is not an mvq checkpoint; move it away"):
        train(load_config(None, [*OVER, "train.steps=1", f"train.out_dir={out}"]),
              progress=False)
    assert (out / "checkpoint" / "notes.txt").read_text() == "mine"
