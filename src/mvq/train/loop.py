"""Tokenizer training: what a tokenizer hands the shared engine (mvq.train.engine) — its step
(with the VQGAN loss and EMA weights when configured), its validation and grids, and the
contents of its checkpoint folder."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from mvq.configuration.choice import quantizer_picks_type
from mvq.configuration.config import (
    GAN_TYPES,
    MODEL_TYPES,
    RESUME_MAY_CHANGE,
    Config,
    apply_overrides,
    changed_keys,
    check_ready,
    check_resume,
    config_from_dict,
    config_to_dict,
    resume_changes,
)
from mvq.data import build_dataset
from mvq.errors import MvqError
from mvq.files import sealed
from mvq.files.figures import Figure, save_png
from mvq.losses.vqgan import VQGANLoss, find_last_layer
from mvq.metrics.image import MSE_FLOOR, psnr_from_mse
from mvq.models import Tokenizer, build_model
from mvq.models.base import SIZE_FIX, model_bytes
from mvq.models.inputs import check_images, values_checked
from mvq.quantize import MaskedVectorQuantize
from mvq.runtime import distributed
from mvq.runtime.devices import pick_device
from mvq.runtime.memory import check_fits
from mvq.runtime.modes import eval_mode
from mvq.saved import checkpoint, pretrained
from mvq.train.batches import StepSampler
from mvq.train.ema import WeightEMA, check_decay
from mvq.train.engine import (
    Schedule,
    StepOutput,
    Trainee,
    fit,
    set_lr,
)
from mvq.train.runs import claim_run

__all__ = ["TrainResult", "build_data", "train", "validate"]


def build_data(cfg: Config):
    """(train set, fixed validation subset) at the model's size and channels."""
    kw = dict(root=cfg.data.root, size=cfg.model.image_size, channels=cfg.model.channels,
              seed=cfg.train.seed)
    train_set = build_dataset(cfg.data.name, split="train", limit=cfg.data.train_limit, **kw)
    val_set = build_dataset(cfg.data.name, split="test", limit=cfg.data.val_limit or None, **kw)
    return train_set, val_set


@torch.no_grad()
def validate(model: Tokenizer, images: torch.Tensor, batch_size: int = 256,
             device: torch.device | str = "cpu") -> dict[str, float]:
    """Reconstruction through the discrete codes: MSE, PSNR (mean per image), code usage."""
    se, psnr, ids1, ids2 = [], [], [], []
    with eval_mode(model):
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size].to(device)
            codes = model.encode(x)
            rec = model.decode(codes).clamp(0, 1)
            err = (rec - x).pow(2).flatten(1).mean(1)
            se.append(err.cpu())
            psnr.append(psnr_from_mse(err, floor=MSE_FLOOR).cpu())
            ids1.append(codes.primary.flatten().cpu())
            if codes.secondary is not None:
                ids2.append(codes.secondary.flatten().cpu())
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
    finished_before: bool = False  # --resume of a run that had already reached train.steps


def train(cfg: Config, resume: bool = False, progress: bool | str = True,
          desc: str | None = None, data=None, overwrite: bool = False) -> TrainResult:
    """Train the tokenizer of ``cfg`` into ``cfg.train.out_dir``; returns final validation metrics.

    A finished or interrupted run already in ``out_dir`` is never replaced silently: pass
    ``resume=True`` to continue it or ``overwrite=True`` to start again over it. Resuming a
    run that has reached ``train.steps`` trains nothing and returns its final metrics. On
    resume, ``cfg`` may differ from the run's config only in keys of
    ``config.RESUME_MAY_CHANGE`` (applied and logged); other differences are refused.
    ``progress``: as `mvq.train.engine.fit`.

    Under ``torchrun --nproc_per_node N`` the N processes train one model with DDP: each takes
    1/N of every batch (train.batch_size stays the global batch), the EMA codebooks and the
    GAN loss's adaptive weight see the global batch (BatchNorm layers see each rank's share),
    and rank 0 alone validates, logs and writes checkpoints. A resumed DDP run continues
    from the same weights and optimizer state; exactly the same trajectory is guaranteed for
    one process only (ranks above 0 re-seed their random draws, e.g. MH-Dropout masks).
    """
    check_ready(cfg)  # device, data set name, writable out_dir: before anything is written
    check_fits(4 * model_bytes(cfg.model), f"training this {cfg.model.type} (weights, "
               "gradients and Adam's two moments)", SIZE_FIX, pick_device(cfg.train.device))
    tc = cfg.train
    out = Path(tc.out_dir)
    source = claim_run(out, "tokenizer", resume, overwrite, "train.out_dir")
    changes = []
    if source is not None:
        changes = resume_changes(config_from_dict(checkpoint.read_info(source)["config"]), cfg,
                                 str(out))
    if tc.ema_decay:
        check_decay(tc.ema_decay)  # on every rank, before any process group
    schedule = Schedule(tc.steps, tc.batch_size, tc.seed, tc.log_every, tc.val_every,
                        tc.ckpt_every, tc.keep_checkpoints)

    def run(launch, device) -> TrainResult:
        trainee = TokenizerTrainee(cfg, launch, device, source, data)
        trainee.name, trainee.changes = desc or cfg.model.type, changes
        r = fit(trainee, schedule, out, launch, device, source, progress)
        return TrainResult(r.step, r.metrics, out, r.seconds, r.finished_before)

    return distributed.run(pick_device(tc.device), tc.batch_size, "train.batch_size", run)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``train.precision`` on ``device`` (None: fp32, no autocast);
    MvqError for fp16 on a CPU (no fp16 training there: use bf16)."""
    if precision == "fp32":
        return None
    if precision == "fp16" and device.type != "cuda":
        raise MvqError(f"train.precision=fp16 needs a CUDA GPU, this run is on {device.type}; "
                       "use train.precision=bf16 (or fp32) on a CPU")
    return torch.bfloat16 if precision == "bf16" else torch.float16


def run_config(cfg: Config, overrides: list[str]) -> tuple[Config, list[str]]:
    """The config a ``--resume`` of the run in ``cfg.train.out_dir`` trains with: the run's own
    (its config.json, so its own train.steps) plus only the command line's ``overrides``; and
    the keys in which ``cfg`` (the preset) differs from the run and which were not overridden
    (the preset's values there are not used). ``cfg`` and no keys when there is no run."""
    source = sealed.latest(Path(cfg.train.out_dir) / "checkpoint")
    try:
        saved = checkpoint.read_info(source)["config"] if source is not None else None
    except MvqError:
        saved = None  # train() names what is wrong with it
    if not isinstance(saved, dict):
        return cfg, []
    saved = {**saved, "train": {**(saved.get("train") or {}), "out_dir": cfg.train.out_dir}}
    merged = apply_overrides(saved, overrides)
    # a key the run cannot change, said as such first (rather than as what it would break, or
    # as another key it would change: a quantizer name brings its family's defaults)
    _refuse_fixed(saved, merged, overrides, cfg.train.out_dir)
    run = config_from_dict(quantizer_picks_type(merged, overrides))
    given = {o.split("=", 1)[0] for o in overrides}
    ignored = [key for key, _, _ in changed_keys(config_to_dict(run), config_to_dict(cfg))
               if key not in given]
    return run, ignored


def _default(saved: dict, section: str, name: str):
    """The default of ``section.name`` for the run of config ``saved`` (its record leaves keys
    at their defaults out), as a record holds it (lists, not tuples)."""
    if section == "model":
        record = MODEL_TYPES.get(str((saved.get("model") or {}).get("type")))
        holder = record.section() if record else None
    else:
        holder = getattr(Config(), section, None)
    value = getattr(holder, name, None)
    return list(value) if isinstance(value, tuple) else value


def _refuse_fixed(saved: dict, merged: dict, overrides: list[str], where: str) -> None:
    """MvqError naming the first override that changes a key fixed for the run's life."""
    for key in (o.split("=", 1)[0].strip() for o in overrides):
        section, _, name = key.partition(".")
        default = _default(saved, section, name)
        old = (saved.get(section) or {}).get(name, default)
        new = (merged.get(section) or {}).get(name, default)
        if key not in RESUME_MAY_CHANGE and new != old:
            check_resume([(key, old, new)], RESUME_MAY_CHANGE, where,
                         "start a new run (--overwrite, or another train.out_dir)")


@dataclass
class GanParts:
    """The VQGAN loss's pieces beside the tokenizer: the loss (with its PatchGAN), the
    discriminator's own optimizer, and the decoder's last layer for the adaptive weight."""

    loss: torch.nn.Module
    optimizer: torch.optim.Optimizer
    last_layer: torch.Tensor


FIELDS = ("rec", "vq", "vq2", "mhd", "usage", "perplexity", "usage2", "perplexity2",
          "val_mse", "val_psnr", "val_usage", "val_usage2",
          # GAN models (VQGAN loss): its own reconstruction term (L1 on [-1, 1]), the rest
          "gan_rec", "gan_perceptual", "gan_nll", "gan_g_adv", "gan_d_weight",
          "gan_disc_factor", "d_loss", "logits_real", "logits_fake")  # metrics.csv's columns


class TokenizerTrainee(Trainee):
    """A tokenizer (plus VQGAN loss and EMA weights when configured) for the engine."""

    what = "training"
    lower_lr = "lower train.lr or keep model.ema=true"

    def __init__(self, cfg: Config, launch, device: torch.device, resume_from: Path | None,
                 data=None) -> None:
        super().__init__(FIELDS)
        tc = self.tc = cfg.train
        self.cfg, self.device = cfg, device
        main = launch.rank == 0
        torch.manual_seed(tc.seed)
        train_set, val_set = data if data is not None else build_data(cfg)
        if train_set.channels != cfg.model.channels:
            raise MvqError(f"data has {train_set.channels} channels, model.channels is "
                           f"{cfg.model.channels}")
        self.train_set, self.size = train_set, len(train_set)
        if resume_from is not None:
            model = self._resumed_model(resume_from)
        else:
            model = build_model(cfg.model).to(device)
        for layer in model.modules():  # how MH-Dropout draws its training masks (resumed too)
            if isinstance(layer, MaskedVectorQuantize):
                layer.mask_sampling = tc.mask_sampling
        self.model = model
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.autocast = autocast_dtype(tc.precision, device)
        # fp16 gradients underflow without loss scaling; a disabled scaler is a plain step
        self.scaler = torch.amp.GradScaler(device.type, enabled=tc.precision == "fp16")
        self.optimizer = torch.optim.Adam(self.params, lr=tc.lr, betas=tuple(tc.betas))
        self.gan = None
        if cfg.model.type in GAN_TYPES:  # L1 + LPIPS + PatchGAN with its own optimizer
            loss = VQGANLoss(cfg.model.channels, cfg.loss).to(device)
            d_opt = torch.optim.Adam(loss.discriminator.parameters(), lr=tc.disc_lr or tc.lr,
                                     betas=tuple(tc.betas))
            self.gan = GanParts(loss, d_opt, find_last_layer(model))
        self.ema = None
        if tc.ema_decay and main:  # model.safetensors: the average; train_state: the trained
            self.ema = WeightEMA(model, tc.ema_decay)  # (resumed: from the average)
        self.val_images = val_set.stacked()[0] if main else None
        self.door_checked = False

    def _resumed_model(self, source: Path) -> Tokenizer:
        cfg, tc = self.cfg, self.tc
        model, saved, _ = pretrained.load_tokenizer(source, expect_type=cfg.model.type,
                                                    device=str(self.device))
        if saved.model != cfg.model or saved.train.ema_decay != tc.ema_decay:  # train() said
            raise MvqError(f"cannot resume {source}: its model or train.ema_decay differ")
        return model

    def restored(self) -> None:
        set_lr(self.optimizer, self.tc.lr)  # may change on resume (config.RESUME_MAY_CHANGE)
        if self.gan is not None:
            set_lr(self.gan.optimizer, self.tc.disc_lr or self.tc.lr)

    def aux_state(self) -> dict:
        aux = {}
        if self.gan is not None:
            aux["discriminator"] = (self.gan.loss.discriminator, self.gan.optimizer)
        if self.tc.ema_decay:
            aux["trained"] = (self.model, None)
        return aux

    def batches(self, sampler: StepSampler) -> Iterable[torch.Tensor]:
        """Each step's images, stacked on the host: by `batch` in this process
        (train.num_workers 0), else by a DataLoader over the same step-seeded ``sampler`` in
        train.num_workers worker processes, which make the next steps' batches while this one
        trains. The items are a pure function of their index, so the batches are the same for
        any number of workers (tests/test_train_loop.py); the loader draws its workers' seeds
        from its own generator, not from the global one that MH-Dropout's masks draw from."""
        if not self.tc.num_workers:
            return map(self.batch, sampler)
        return DataLoader(self.train_set, batch_sampler=sampler, num_workers=self.tc.num_workers,
                          collate_fn=stack_images,
                          generator=torch.Generator().manual_seed(self.tc.seed))

    def batch(self, indices: list[int]) -> torch.Tensor:
        """The images of the data set's ``indices``, stacked on the host."""
        return stack_images([self.train_set[j] for j in indices])

    def step(self, step: int, images: torch.Tensor) -> StepOutput:
        """One step on the ``images`` of `batches` (on the host)."""
        x = images.to(self.device)
        if not self.door_checked:  # the first batch's pixels, read once; then the data set's
            check_images(x, self.cfg.model.channels, self.cfg.model.image_size,  # conversion
                         self.cfg.model.type)  # holds them in [0, 1] and a NaN shows in the loss
            self.door_checked = True
        with torch.autocast(self.device.type, dtype=self.autocast,
                            enabled=self.autocast is not None), values_checked():
            result = self.net(x)
        logs: dict = {}
        total = result.loss
        gan = self.gan
        if gan is not None:
            total, logs = gan.loss.tokenizer_loss(x, result, step, gan.last_layer)
            logs = {f"gan_{k}": v for k, v in logs.items()}
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if self.tc.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, self.tc.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(step)
        if gan is not None:
            d_loss, d_logs = gan.loss.discriminator_step(x, result.recon.detach(), step)
            gan.optimizer.zero_grad(set_to_none=True)
            if d_loss.requires_grad:
                d_loss.backward()
                distributed.average_gradients_(gan.loss.discriminator.parameters())
                gan.optimizer.step()
            logs.update(d_logs)
        terms = {**{k: v.detach() for k, v in result.losses.items()}, **result.stats, **logs}
        return StepOutput(total, terms)

    def published(self) -> Tokenizer:
        """What validation and users see: the EMA weights when there are some."""
        return self.ema.synced(self.model) if self.ema is not None else self.model

    def validate(self, step: int, out_dir: Path) -> dict[str, float]:
        used = self.published()
        metrics = validate(used, self.val_images, device=self.device)
        grid = write_recon_grid(used, self.val_images[: self.tc.grid_images],
                                out_dir / f"recon_{step:06d}.png", self.device,
                                f"{self.cfg.model.type} at step {step}: validation images "
                                f"(MSE {metrics['val_mse']:.4f}, "
                                f"PSNR {metrics['val_psnr']:.2f} dB)")
        self.grids = {"reconstructions": grid}
        return metrics

    def write(self, directory: Path, step: int, metrics: dict[str, float]) -> None:
        checkpoint.write_tokenizer(directory, self.published(), self.cfg, step,  # threads:
                                   extra={"metrics": metrics,  # a resume takes them again
                                          "threads": torch.get_num_threads()})

    def postfix(self, loss: float, terms: dict[str, float]) -> dict[str, str]:
        return {"loss": f"{loss:.4f}", "usage": f"{terms.get('usage', 0):.2f}"}


def stack_images(items: list) -> torch.Tensor:
    """The images of data set items ``(image, label)`` as one batch (the DataLoader's collate)."""
    return torch.stack([image for image, _ in items])


@torch.no_grad()
def write_recon_grid(model: Tokenizer, images: torch.Tensor, path: Path, device, title: str):
    """A labelled figure of the originals (top row) over reconstructions from the codes (bottom
    row), titled ``title``; returns it as a uint8 (H, W, 3) array (for TensorBoard)."""
    with eval_mode(model):
        rec = model.reconstruct(images.to(device)).cpu()
    img = Figure([images, rec], title, ["original", "reconstruction"]).render()
    save_png(img, path)
    return np.asarray(img)
