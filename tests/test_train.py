import csv
from dataclasses import replace

import pytest
import torch
from conftest import tiny_model_config
from safetensors.torch import load_file

from mvq.config import Config, DataConfig, TrainConfig
from mvq.errors import MvqError
from mvq.train import train


def _cfg(tmp_path, name="run", **train_kw) -> Config:
    kw = dict(steps=6, batch_size=8, val_every=3, ckpt_every=3, log_every=1, grid_images=4,
              out_dir=str(tmp_path / name))
    kw.update(train_kw)
    return Config(model=tiny_model_config(num_masks=8),
                  data=DataConfig(name="shapes", train_limit=64, val_limit=16),
                  train=TrainConfig(**kw))


def test_resume_continues_the_same_trajectory(tmp_path):
    full = train(_cfg(tmp_path, "full"), progress=False)
    part_cfg = _cfg(tmp_path, "part")
    train(replace(part_cfg, train=replace(part_cfg.train, steps=3)), progress=False)
    resumed = train(part_cfg, resume=True, progress=False)
    assert full.step == resumed.step == 6
    a = load_file(str(full.out_dir / "checkpoint" / "model.safetensors"))
    b = load_file(str(resumed.out_dir / "checkpoint" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed.metrics == pytest.approx(full.metrics)


def test_outputs_written(tmp_path):
    result = train(_cfg(tmp_path), progress=False)
    out = result.out_dir
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[2]["val_mse"] and rows[5]["val_psnr"]
    assert (out / "recon_000006.png").is_file()
    for name in ("config.json", "model.safetensors", "train_state.safetensors"):
        assert (out / "checkpoint" / name).is_file()
    assert 0 < result.metrics["val_mse"] < 1


def test_resume_refuses_another_model_type(tmp_path):
    train(_cfg(tmp_path), progress=False)
    cfg = _cfg(tmp_path)
    cfg.model = tiny_model_config(type="hvqvae")
    with pytest.raises(MvqError, match="mvqvae checkpoint, expected hvqvae"):
        train(cfg, resume=True, progress=False)
