"""Issue 33, the third hostile round: each fault found, reproduced here, and its fix."""

import shutil
import subprocess
import sys
import textwrap

import pytest
from conftest import tiny_model_config

import mvq
from mvq.config import Config, DataConfig, TrainConfig
from mvq.errors import MvqError
from mvq.train import train


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny trained tokenizer run (2 steps): OUT/checkpoint with its training state."""
    out = tmp_path_factory.mktemp("r3") / "run"
    cfg = Config(model=tiny_model_config(image_size=32, channels=3, factor=8),
                 data=DataConfig(name="shapes", train_limit=16, val_limit=4),
                 train=TrainConfig(steps=2, batch_size=4, val_every=2, ckpt_every=2, log_every=1,
                                   grid_images=2, out_dir=str(out), device="cpu"))
    train(cfg, progress=False)
    return out


def _copy(run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


# --- 1. save_pretrained never takes a run's training state ----------------------------------

def test_save_pretrained_refuses_a_folder_holding_training_state(run, tmp_path):
    out = _copy(run, tmp_path)
    before = sorted(p.name for p in (out / "checkpoint").iterdir())
    model = mvq.load(out)
    with pytest.raises(MvqError, match="training state .*--resume"):
        model.save_pretrained(out / "checkpoint")
    with pytest.raises(MvqError, match="training run's folder"):
        model.save_pretrained(out)
    assert sorted(p.name for p in (out / "checkpoint").iterdir()) == before
    assert (out / "checkpoint" / "train_state.safetensors").is_file()
    # a retired copy holding training state is refused too (the swap would delete it)
    (out / "checkpoint").rename(out / "checkpoint-000002")
    (out / "checkpoint-000002" / "train_state.safetensors").rename(out / "ts")
    shutil.copytree(out / "checkpoint-000002", out / "checkpoint")
    (out / "ts").rename(out / "checkpoint-000002" / "train_state.safetensors")
    with pytest.raises(MvqError, match="checkpoint-000002 holds a run's training state"):
        model.save_pretrained(out / "checkpoint")
    assert (out / "checkpoint-000002" / "train_state.safetensors").is_file()
    saved = model.save_pretrained(tmp_path / "elsewhere")  # a new folder is fine
    assert isinstance(mvq.load(saved), mvq.Tokenizer)


def test_save_pretrained_takes_the_run_lock(run, tmp_path):
    """While a training holds OUT/.lock, nothing saves into the run."""
    out = _copy(run, tmp_path)
    model = mvq.load(out)
    script = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from mvq.outputs import try_lock
        with try_lock(Path({str(out / '.lock')!r})) as holder:
            print(holder, flush=True)
            time.sleep(30)
    """)
    other = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "None"
        with pytest.raises(MvqError, match="in use by an mvq training"):
            model.save_pretrained(out / "exported")
    finally:
        other.kill()
        other.wait()
    assert not (out / "exported").exists()
    model.save_pretrained(out / "exported")  # the training is gone: the lock is free
