"""One training loop for tokenizers: seeds, progress bar, validation, grids, CSV log, resume,
data-parallel (DDP) under torchrun.

Batches are a pure function of (seed, step), and the RNG state is checkpointed, so a resumed
run continues the exact trajectory of an uninterrupted one (tests/test_train.py).
"""

from __future__ import annotations

import csv
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from mvq import distributed
from mvq.checkpoint import load_tokenizer, load_train_state, read_info, save_checkpoint
from mvq.config import GAN_TYPES, Config, check_ready
from mvq.data import build_dataset
from mvq.errors import MvqError
from mvq.images import save_grid
from mvq.models import Tokenizer, build_model


def pick_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; anything else as torch names it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise MvqError(f"unknown device {name!r}: expected auto, cpu, cuda or cuda:N") from None


def build_data(cfg: Config):
    """(train set, fixed validation subset) at the model's size and channels."""
    kw = dict(root=cfg.data.root, size=cfg.model.image_size, channels=cfg.model.channels,
              seed=cfg.train.seed)
    train_set = build_dataset(cfg.data.name, split="train", limit=cfg.data.train_limit, **kw)
    val_set = build_dataset(cfg.data.name, split="test", limit=cfg.data.val_limit or None, **kw)
    return train_set, val_set


class StepBatches:
    """Batch for step s = a slice of a per-epoch permutation seeded by (seed, epoch)."""

    def __init__(self, dataset, batch_size: int, seed: int, shard: tuple[int, int] = (0, 1)
                 ) -> None:
        """shard (rank, world): this rank's share of every batch, items rank, rank + world, ..."""
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.rank, self.world = shard
        self.per_epoch = max(1, len(dataset) // batch_size)
        self._epoch, self._perm = -1, None

    def __call__(self, step: int) -> torch.Tensor:
        epoch, i = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(len(self.dataset), generator=gen)
        idx = self._perm[i * self.batch_size : (i + 1) * self.batch_size][self.rank :: self.world]
        return torch.stack([self.dataset[int(j)][0] for j in idx])


def stack_images(dataset, n: int | None = None) -> torch.Tensor:
    n = len(dataset) if n is None else min(n, len(dataset))
    return torch.stack([dataset[i][0] for i in range(n)])


@torch.no_grad()
def validate(model: Tokenizer, images: torch.Tensor, batch_size: int = 256,
             device: torch.device | str = "cpu") -> dict[str, float]:
    """Reconstruction through the discrete codes: MSE, PSNR (mean per image), code usage."""
    was = model.training
    model.eval()
    se, psnr, ids1, ids2 = [], [], [], []
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].to(device)
        codes = model.encode(x)
        rec = model.decode(codes).clamp(0, 1)
        err = (rec - x).pow(2).flatten(1).mean(1)
        se.append(err.cpu())
        psnr.append((10 * torch.log10(1.0 / err.clamp_min(1e-10))).cpu())
        ids1.append(codes.primary.flatten().cpu())
        if codes.secondary is not None:
            ids2.append(codes.secondary.flatten().cpu())
    model.train(was)
    sizes = model.codebook_sizes
    out = {"val_mse": float(torch.cat(se).mean()), "val_psnr": float(torch.cat(psnr).mean()),
           "val_usage": float(torch.cat(ids1).unique().numel() / sizes[0])}
    if ids2:
        out["val_usage2"] = float(torch.cat(ids2).unique().numel() / sizes[1])
    return out


@dataclass
class TrainResult:
    step: int
    metrics: dict[str, float]
    out_dir: Path
    seconds: float


def train(cfg: Config, resume: bool = False, progress: bool = True, desc: str | None = None,
          data=None, overwrite: bool = False) -> TrainResult:
    """Train the tokenizer of ``cfg`` into ``cfg.train.out_dir``; returns final validation metrics.

    A finished or interrupted run already in ``out_dir`` is never replaced silently: pass
    ``resume=True`` to continue it or ``overwrite=True`` to start again over it.

    Under ``torchrun --nproc_per_node N`` the N processes train one model with DDP: each takes
    1/N of every batch (train.batch_size stays the global batch), the EMA codebooks and the
    GAN loss's adaptive weight see the global batch (BatchNorm layers see each rank's share),
    and rank 0 alone validates, logs and writes checkpoints. A resumed DDP run continues
    from the same weights and optimizer state; exactly the same trajectory is guaranteed for
    one process only (ranks above 0 re-seed their random draws, e.g. MH-Dropout masks).
    """
    check_ready(cfg)  # device, data set name, writable out_dir: before anything is written
    tc = cfg.train
    out = Path(tc.out_dir)
    ckpt = out / "checkpoint"
    if not resume and not overwrite and (ckpt / "config.json").is_file():
        try:
            at = f"checkpoint at step {read_info(ckpt).get('step', '?')}"
        except MvqError:
            at = "an unreadable checkpoint"
        raise MvqError(f"{out} already holds a run ({at}); pass --resume to continue it, "
                       "--overwrite to start again over it, or train.out_dir=NEW_DIR")
    if tc.ema_decay:
        from mvq.train.ema import check_decay

        check_decay(tc.ema_decay)  # on every rank, before any process group
    return distributed.run(
        pick_device(tc.device), tc.batch_size, "train.batch_size",
        lambda launch, device: _train(cfg, launch, device, resume, progress, desc, data))


def _train(cfg: Config, launch, device: torch.device, resume: bool, progress: bool,
           desc: str | None, data) -> TrainResult:
    tc = cfg.train
    out = Path(tc.out_dir)
    ckpt = out / "checkpoint"
    main = launch.rank == 0
    torch.manual_seed(tc.seed)
    train_set, val_set = data if data is not None else build_data(cfg)
    if launch.world > 1 and len(train_set) < tc.batch_size:
        raise MvqError(f"{len(train_set)} training images, fewer than one global batch of "
                       f"{tc.batch_size}: lower train.batch_size")
    if train_set.channels != cfg.model.channels:
        raise MvqError(f"data has {train_set.channels} channels, model.channels is {cfg.model.channels}")
    step = 0
    if resume:
        info = read_info(ckpt)
        model, saved, _ = load_tokenizer(ckpt, expect_type=cfg.model.type, device=str(device))
        if saved.model != cfg.model:
            diff = [k for k in vars(cfg.model) if getattr(cfg.model, k) != getattr(saved.model, k)]
            raise MvqError(f"cannot resume {ckpt}: its model was trained with other settings "
                           f"({', '.join(f'model.{k}' for k in diff)}); drop those overrides")
        step = int(info["step"])
        if saved.train.ema_decay != tc.ema_decay:
            raise MvqError(f"cannot resume {ckpt}: it was trained with train.ema_decay="
                           f"{saved.train.ema_decay}, not {tc.ema_decay}; resume with the same")
    else:
        model = build_model(cfg.model).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=tc.lr, betas=tuple(tc.betas))
    gan, aux = None, None
    if cfg.model.type in GAN_TYPES:  # VQGAN loss: L1 + LPIPS + PatchGAN with its own optimizer
        from mvq.losses.vqgan import VQGANLoss, find_last_layer

        loss_fn = VQGANLoss(cfg.model.channels, cfg.loss).to(device)
        d_opt = torch.optim.Adam(loss_fn.discriminator.parameters(), lr=tc.disc_lr or tc.lr,
                                 betas=tuple(tc.betas))
        gan = (loss_fn, d_opt, find_last_layer(model))
        aux = {"discriminator": (loss_fn.discriminator, d_opt)}
    ema = None
    if tc.ema_decay:  # model.safetensors holds the average, train_state the trained weights
        from mvq.train.ema import WeightEMA

        ema = WeightEMA(model, tc.ema_decay) if main else None  # (resumed: from the average)
        aux = {**(aux or {}), "trained": (model, None)}
    if resume:
        load_train_state(ckpt, opt, aux)
    net = model
    if launch.world > 1:
        if launch.rank:  # own random draws (MH-Dropout masks) per rank; rank 0 as alone
            torch.manual_seed(tc.seed + 7919 * launch.rank + step)
        # buffers are not synced by DDP: the quantizers keep theirs in step (mvq.distributed);
        # BatchNorm statistics stay per rank, the checkpoint holds rank 0's
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            forward_sync_buffers=False)
    if main:
        out.mkdir(parents=True, exist_ok=True)
    batches = StepBatches(train_set, tc.batch_size, tc.seed, (launch.rank, launch.world))
    val_images = stack_images(val_set) if main else None
    grid_images = val_images[: tc.grid_images] if main else None
    log_path = out / "metrics.csv"
    log_file = open(log_path, "a" if resume else "w", newline="") if main else None
    writer = None
    metrics: dict[str, float] = {}
    t0 = time.time()
    bar = tqdm(total=tc.steps, initial=step, desc=desc or cfg.model.type,
               disable=not (progress and main),
               file=sys.stderr, dynamic_ncols=True, leave=True,
               mininterval=0.1 if sys.stderr.isatty() else 30.0)  # logs: a line per 30 s
    model.train()
    try:
        while step < tc.steps:
            x = batches(step).to(device)
            with torch.autocast(device.type, enabled=tc.amp and device.type == "cuda"):
                result = net(x)
            logs: dict = {}
            total = result.loss
            if gan:
                total, logs = gan[0].tokenizer_loss(x, result, step, gan[2])
                logs = {f"gan_{k}": v for k, v in logs.items()}
            opt.zero_grad(set_to_none=True)
            total.backward()
            if tc.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
            opt.step()
            if ema is not None:
                ema.update(step)
            if gan:
                d_loss, d_logs = gan[0].discriminator_step(x, result.recon.detach(), step)
                gan[1].zero_grad(set_to_none=True)
                if d_loss.requires_grad:
                    d_loss.backward()
                    distributed.average_gradients_(gan[0].discriminator.parameters())
                    gan[1].step()
                logs.update(d_logs)
            step += 1
            loss = distributed.mean_over_ranks({"loss": total.detach()}, device)["loss"]
            if not math.isfinite(loss):
                raise MvqError(f"training diverged at step {step} (loss {loss}); lower train.lr "
                               "or keep model.ema=true")
            bar.update(1)
            log_now = step % tc.log_every == 0 or step == tc.steps
            if log_now:  # on every rank: the logged terms are means over the ranks' shares
                terms = distributed.mean_over_ranks(
                    {**{k: v.detach() for k, v in result.losses.items()}, **result.stats, **logs},
                    device)
            if not main:
                continue
            row = None
            if log_now:
                row = {"step": step, "loss": loss, **terms}
                bar.set_postfix(loss=f"{loss:.4f}", usage=f"{terms.get('usage', 0):.2f}")
            val_now = step % tc.val_every == 0 or step == tc.steps
            save_now = step % tc.ckpt_every == 0 or step == tc.steps
            # what validation and users see: the EMA weights when there are some
            used = ema.synced(model) if ema is not None and (val_now or save_now) else model
            if val_now:
                metrics = validate(used, val_images, device=device)
                row = {**(row or {"step": step, "loss": loss}), **metrics}
                write_recon_grid(used, grid_images, out / f"recon_{step:06d}.png", device)
            if row is not None:
                if writer is None:
                    writer = csv.DictWriter(log_file, fieldnames=_FIELDS, extrasaction="ignore")
                    if not resume:
                        writer.writeheader()
                writer.writerow(row)
                log_file.flush()
            if save_now:
                save_checkpoint(ckpt, used, cfg, step, opt, extra={"metrics": metrics}, aux=aux)
    finally:
        bar.close()
        if log_file is not None:
            log_file.close()
    return TrainResult(step, metrics, out, time.time() - t0)


_FIELDS = ["step", "loss", "rec", "vq", "vq2", "mhd", "usage", "perplexity", "usage2",
           "perplexity2", "val_mse", "val_psnr", "val_usage", "val_usage2",
           # GAN models (VQGAN loss): its own reconstruction term (L1 on [-1, 1]) and the rest
           "gan_rec", "gan_perceptual", "gan_nll", "gan_g_adv", "gan_d_weight", "gan_disc_factor",
           "d_loss", "logits_real", "logits_fake"]


@torch.no_grad()
def write_recon_grid(model: Tokenizer, images: torch.Tensor, path: Path, device) -> None:
    """Originals (top row) over reconstructions from the codes (bottom row)."""
    was = model.training
    model.eval()
    rec = model.reconstruct(images.to(device)).cpu()
    model.train(was)
    save_grid([images, rec], path)
