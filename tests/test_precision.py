"""train.precision: bf16 autocast trains on a CPU with the quantizers' maths in fp32; fp16 is
refused on a CPU; configs of earlier versions (train.amp) still load."""

import pytest
import torch
from conftest import tiny_model_config

from mvq import MaskedVectorQuantize, VectorQuantize
from mvq.config import Config, DataConfig, TrainConfig, config_from_dict, config_to_dict
from mvq.errors import MvqError
from mvq.train import train


def test_quantizer_maths_stay_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    vq = VectorQuantize(16, 64, ema=False, restart_dead=False)
    x = torch.randn(4, 32, 16)
    _, want, want_loss = vq(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q, ids, loss = vq(x)
    assert torch.equal(ids, want)  # nearest codes found in fp32, not bf16
    assert loss.dtype == torch.float32 and torch.allclose(loss, want_loss)
    mvq = MaskedVectorQuantize(8, 16, num_masks=8).eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, _, loss, mask = mvq(torch.randn(2, 5, 8))
    assert loss.dtype == torch.float32 and mask.dtype == torch.bool


def _cfg(tmp_path, precision: str) -> Config:
    return Config(model=tiny_model_config(image_size=32, channels=3, factor=8),
                  data=DataConfig(name="shapes", train_limit=16, val_limit=4),
                  train=TrainConfig(steps=2, batch_size=4, val_every=2, ckpt_every=2,
                                    log_every=1, grid_images=2, out_dir=str(tmp_path / precision),
                                    device="cpu", precision=precision))


def test_bf16_trains_on_cpu_and_fp16_is_refused(tmp_path):
    result = train(_cfg(tmp_path, "bf16"), progress=False)
    assert result.step == 2
    assert all(torch.isfinite(torch.tensor(v)) for v in result.metrics.values())
    with pytest.raises(MvqError, match="fp16 needs a CUDA GPU"):
        train(_cfg(tmp_path, "fp16"), progress=False)


def test_precision_is_checked_and_old_amp_configs_load():
    data = config_to_dict(Config())
    with pytest.raises(MvqError, match="precision"):
        config_from_dict({**data, "train": {**data["train"], "precision": "fp8"}})
    old = {**data, "train": {k: v for k, v in data["train"].items() if k != "precision"}}
    assert (config_from_dict({**old, "train": {**old["train"], "amp": True}}).train.precision
            == "fp16")
    assert (config_from_dict({**old, "train": {**old["train"], "amp": False}}).train.precision
            == "fp32")
