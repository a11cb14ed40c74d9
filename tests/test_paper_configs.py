"""Every paper-scale configuration of `mvq reproduce` builds and takes one optimisation step on
random images of its true shape (image size, channels, model, J, loss), so a GPU user does not
meet a shape error hours into a job.

The step is the training step's parts (tokenizer forward, the VQGAN generator loss with the
adaptive weight and the discriminator step for GAN models, Adam updates), without the training
loop's validation and checkpoint writing: the 256 px MoVQ presets hold 72 M parameters, whose
checkpoints alone would take minutes to write here. Batch 2 (1 for the 256 px presets)."""

import pytest
import torch

from mvq.models import build_model
from mvq.reproduce import build_plan
from mvq.reproduce.plan import DATASETS

PLANS = [("fig5", None), ("movq-ablation", None)] + [("table1", key) for key in DATASETS]


def _unique_configs():
    seen, out = set(), []
    for experiment, dataset in PLANS:
        for run in build_plan(experiment, "paper", seeds=1, dataset=dataset).runs:
            cfg = run.config("/nonexistent", "x")
            key = (repr(cfg.model),
                   repr(cfg.loss) if cfg.model.type.endswith(("gan", "movq")) else "")
            if key not in seen:
                seen.add(key)
                out.append(pytest.param(cfg, id=f"{experiment}-{run.name}"))
    return out


CONFIGS = _unique_configs()


def test_every_paper_plan_is_covered():
    # fig5 (2 F x 2 K x 6 models), 7 MoVQ presets, table1 (3 x 12: CelebA-64 and ImageNet-64
    # share their models)
    assert len(CONFIGS) == 24 + 7 + 3 * 12


@pytest.mark.parametrize("cfg", CONFIGS)
def test_paper_config_takes_one_step(cfg):
    torch.manual_seed(0)
    m = cfg.model
    model = build_model(m).train()
    batch = 1 if m.image_size >= 128 else 2  # BatchNorm on a 1x1 grid needs 2
    x = torch.rand(batch, m.channels, m.image_size, m.image_size)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, betas=tuple(cfg.train.betas))
    before = [p.detach().clone() for p in model.parameters()]
    out = model(x)
    assert out.recon.shape == x.shape
    loss, gan = out.loss, None
    # the 256 px MoVQ presets share one loss: its GAN terms are run with the full MoVQ only
    full_gan = m.type != "movq" or (m.f0 == "fourier" and m.num_channels == 4)
    if (m.type.endswith("gan") or m.type == "movq") and full_gan:
        from mvq.losses.vqgan import VQGANLoss, find_last_layer

        gan = VQGANLoss(m.channels, cfg.loss)
        step = max(cfg.loss.disc_start, 0)  # with the GAN terms on
        loss, _ = gan.tokenizer_loss(x, out, step, find_last_layer(model))
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    if gan is not None:  # then the discriminator, as the training loop does
        d_loss, _ = gan.discriminator_step(x, out.recon.detach(), step)
        d_opt = torch.optim.Adam(gan.discriminator.parameters(), lr=cfg.train.lr)
        d_loss.backward()
        d_opt.step()
        assert torch.isfinite(d_loss) and d_loss.requires_grad
    moved = sum(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert moved > len(before) // 2
