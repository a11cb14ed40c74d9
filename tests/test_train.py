import csv
from dataclasses import replace

import pytest
import torch
from conftest import assert_labelled, tiny_model_config
from safetensors.torch import load_file

from mvq.configuration.config import Config, DataConfig, TrainConfig
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
    assert_labelled(out / "recon_000006.png")
    for name in ("config.json", "model.safetensors", "train_state.safetensors"):
        assert (out / "checkpoint" / name).is_file()
    assert 0 < result.metrics["val_mse"] < 1


def test_resume_refuses_another_model_type(tmp_path):
    train(_cfg(tmp_path), progress=False)
    cfg = _cfg(tmp_path)
    cfg.model = tiny_model_config(type="hvqvae")
    with pytest.raises(MvqError, match="model.type is fixed for a run.s life; the run has "
                       ".mvqvae., this command gives .hvqvae."):
        train(cfg, resume=True, progress=False)


def _assert_same_checkpoint(run_a, run_b) -> None:
    """Weights and training state (optimizers, RNG, aux modules) equal bit for bit."""
    for name in ("model.safetensors", "train_state.safetensors"):
        a = load_file(str(run_a / "checkpoint" / name))
        b = load_file(str(run_b / "checkpoint" / name))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)


def _gan_cfg(tmp_path, name, model_type="mvqgan", **train_kw) -> Config:
    from mvq.configuration.config import load_config

    over = ["data.name=shapes", "data.train_limit=32", "data.val_limit=8", "loss.disc_start=1",
            "loss.disc_channels=8", f"model.type={model_type}", f"train.out_dir={tmp_path / name}",
            "train.steps=4", "train.batch_size=4", "train.val_every=2", "train.ckpt_every=2",
            "train.log_every=1", "train.grid_images=2"]
    if model_type == "movq":
        over += ["model.image_size=32", "model.channels=1", "model.ch=8", "model.ch_mult=[1,2]",
                 "model.attn_resolutions=[16]", "model.z_channels=8", "model.codebook_size=16",
                 "model.code_dim=4", "model.num_channels=4", "model.num_groups=4",
                 "model.fourier_frequencies=4"]
    else:
        over += ["model.hidden=16", "model.res_blocks=1", "model.res_channels=8", "model.dim=8",
                 "model.dim2=8", "model.num_masks=8"]
    over += [f"train.{k}={v}" for k, v in train_kw.items()]
    return load_config(None, over)


@pytest.mark.parametrize("model_type", ["mvqgan", "movq"])
def test_gan_training_logs_and_resumes_exactly(tmp_path, model_type):
    full = train(_gan_cfg(tmp_path, "full", model_type), progress=False)
    rows = list(csv.DictReader(open(full.out_dir / "metrics.csv")))
    assert rows[0]["d_loss"] == "0.0" and float(rows[-1]["logits_real"]) != 0.0  # disc_start=1
    assert all(float(r["gan_perceptual"]) > 0 for r in rows)
    train(_gan_cfg(tmp_path, "part", model_type, steps=2), progress=False)
    resumed = train(_gan_cfg(tmp_path, "part", model_type), resume=True, progress=False)
    _assert_same_checkpoint(full.out_dir, resumed.out_dir)


def test_ema_weights_follow_the_recurrence_and_resume_exactly(tmp_path):
    """train.ema_decay=d: model.safetensors holds ema_t = d_t ema_{t-1} + (1 - d_t) w_t with
    d_t = min(d, (t + 1) / (t + 10)) over the trained weights w_t (the same trajectory as
    without EMA), train_state the trained ones."""
    from mvq.models import build_model
    from mvq.train.loop import build_data

    d = 0.2  # below the warm-up's 3 / 12 at the third step: both branches of the min
    raw = {}
    for steps in (1, 2, 3):  # w_1, w_2, w_3 of the plain run
        r = train(_cfg(tmp_path, f"plain{steps}", steps=steps), progress=False)
        raw[steps] = load_file(str(r.out_dir / "checkpoint" / "model.safetensors"))
    cfg = _cfg(tmp_path, "w0")
    torch.manual_seed(cfg.train.seed)  # w_0 as train() builds it
    build_data(cfg)
    w0 = build_model(cfg.model).state_dict()
    ema_run = train(_cfg(tmp_path, "ema", steps=3, ema_decay=d), progress=False)
    got = load_file(str(ema_run.out_dir / "checkpoint" / "model.safetensors"))
    trained = load_file(str(ema_run.out_dir / "checkpoint" / "train_state.safetensors"))
    model = build_model(cfg.model)
    averaged = {n for n, p in model.named_parameters() if p.requires_grad}
    assert averaged and set(got) == set(raw[3])
    for name in got:
        assert torch.equal(trained[f"aux.trained.{name}"], raw[3][name]), name  # same training
        if name in averaged:
            want = w0[name]
            for t in (1, 2, 3):  # after the step with 0-based index t - 1
                d_t = min(d, t / (t + 9))
                want = d_t * want + (1 - d_t) * raw[t][name]
            torch.testing.assert_close(got[name], want, rtol=1e-5, atol=1e-6, msg=name)
        else:  # codebooks, code counts, BatchNorm statistics: the trained model's own
            assert torch.equal(got[name], raw[3][name]), name
    assert sum(not torch.equal(got[n], raw[3][n]) for n in averaged) > len(averaged) // 2
    # resume: 2 steps + 1 give the same averaged and trained weights as 3 at once
    part = _cfg(tmp_path, "ema_part", steps=2, ema_decay=d)
    train(part, progress=False)
    resumed = train(replace(part, train=replace(part.train, steps=3)), resume=True,
                    progress=False)
    _assert_same_checkpoint(ema_run.out_dir, resumed.out_dir)
    with pytest.raises(MvqError, match="train.ema_decay is fixed for a run.s life; "
                       "the run has 0.2, this command gives 0.0"):
        train(replace(part, train=replace(part.train, steps=4, ema_decay=0.0)), resume=True,
              progress=False)
    with pytest.raises(MvqError, match="must be in"):
        train(_cfg(tmp_path, "bad", ema_decay=1.5), progress=False)
