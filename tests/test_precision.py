"""train.precision: bf16 autocast trains on a CPU with the quantizers' maths in fp32; fp16 is
refused on a CPU; configs of earlier versions (train.amp) still load."""

import pytest
import torch
from conftest import tiny_model_config

from mvq import (
    FSQ,
    LFQ,
    MaskedVectorQuantize,
    MultiChannelVectorQuantize,
    ResidualVQ,
    VectorQuantize,
)
from mvq.configuration.config import (
    Config,
    DataConfig,
    TrainConfig,
    config_from_dict,
    config_to_dict,
)
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


# ----------------------------------------------------------------------------- cast modules
# issue 33: a layer or tokenizer cast with .to(dtype) / .half() / .double() runs forward; the
# quantizers' maths stay at least fp32 inside, the output comes in the input's dtype
CASTS = [torch.bfloat16, torch.float16, torch.float64]
LAYERS = {
    "vq": (lambda: VectorQuantize(8, 16), 8),
    "mvq": (lambda: MaskedVectorQuantize(8, 16, dim2=4, codebook_size2=8, num_masks=8), 8),
    "mvq-table": (lambda: MaskedVectorQuantize(8, 16, dim2=4, codebook_size2=8, num_masks=8,
                                               mask_sampling="batch", search="table"), 8),
    "multichannel": (lambda: MultiChannelVectorQuantize(8, 16, channels=2), 8),
    "fsq": (lambda: FSQ(levels=[3, 3]), 2),
    "lfq": (lambda: LFQ(bits=3), 3),
    "residual": (lambda: ResidualVQ(dim=8, codebook_size=16, depth=2), 8),
}


@pytest.mark.parametrize("dtype", CASTS, ids=str)
@pytest.mark.parametrize("name", list(LAYERS))
def test_layers_cast_to_a_dtype_run_forward(name, dtype):
    make, dim = LAYERS[name]
    layer = make().to(dtype)
    x = torch.randn(2, 5, dim, dtype=dtype)
    for training in (True, False):
        out = layer.train(training)(x)
        assert out[0].dtype == dtype and out[0].shape == x.shape
        assert out[2].dtype in (torch.float32, torch.float64) and torch.isfinite(out[2])


@pytest.mark.parametrize("dtype", CASTS, ids=str)
@pytest.mark.parametrize("kind", ["vqvae", "mvqvae", "hvqgan", "mvqgan", "movq"])
def test_tokenizers_cast_to_a_dtype_train_encode_and_decode(kind, dtype):
    if kind == "movq":
        from test_movq import tiny_movq

        from mvq.models import MoVQ

        model, x = MoVQ(tiny_movq()), torch.rand(2, 3, 16, 16)
    else:
        from mvq.models import build_model

        model, x = build_model(tiny_model_config(type=kind)), torch.rand(2, 1, 28, 28)
    model = model.to(dtype)
    x = x.to(dtype)
    out = model(x)
    assert torch.isfinite(out.loss) and out.recon.dtype == dtype
    codes = model.eval().encode(x)
    assert model.decode(codes).dtype == dtype


@pytest.mark.parametrize("cast", [None, torch.float64])
def test_the_gan_loss_takes_a_reconstruction_in_another_precision(cast):
    from mvq.losses.vqgan import VQGANLoss

    loss = VQGANLoss(1, perceptual_weight=0.0, disc_start=0, disc_channels=8, disc_layers=1)
    if cast is not None:
        loss = loss.to(cast)
    x = torch.rand(2, 1, 16, 16)
    recon = torch.rand(2, 1, 16, 16, dtype=torch.bfloat16, requires_grad=True)
    total, _ = loss(x, recon, step=1)
    total.backward()
    assert recon.grad is not None and recon.grad.dtype == torch.bfloat16
    d_loss, _ = loss.discriminator_step(x, recon.detach(), step=1)
    assert torch.isfinite(d_loss)


def test_bf16_trains_a_gan_tokenizer(tmp_path):
    from mvq.configuration.sections import VQGANLossConfig

    cfg = _cfg(tmp_path, "bf16")
    cfg = Config(model=tiny_model_config(type="mvqgan", image_size=32, channels=3, factor=8),
                 data=cfg.data, train=cfg.train,
                 loss=VQGANLossConfig(disc_start=0, perceptual_weight=0.0, disc_channels=8,
                                      disc_layers=1))
    assert train(cfg, progress=False).step == 2
