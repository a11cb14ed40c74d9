"""Train the two-stage MVQ prior (`MVQPrior`, kind "gpt") on a token file, with the shared
engine (mvq.train.engine): this file supplies the prior's step, validation and checkpoint.

Validation is the mean NLL over a fixed held-out slice of the token file, in nats and bits per
token for the primary and secondary ids. The checkpoint folder ``out_dir/checkpoint`` holds
config.json (format "mvq-prior-v1"), model.safetensors, train_state.safetensors (resume) and
manifest.json.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

import mvq
from mvq import checkpoint, distributed
from mvq.codes import Codes
from mvq.errors import MvqError
from mvq.priors.two_stage import MVQPrior
from mvq.tokens import load_tokens
from mvq.train.engine import Schedule, StepOutput, Trainee, fit, pick_device

PRIOR_FORMAT = "mvq-prior-v1"
KINDS = ("gpt",)


@torch.no_grad()
def validate_prior(prior: MVQPrior, codes: Codes, batch_size: int = 256) -> dict[str, float]:
    """Mean NLL over ``codes`` (N items): val_{primary,secondary}_{nll (nats),bits} per token.

    ``val_nll`` is the sum of the per-stage means (the training loss).
    """
    sums: dict[str, float] = {}
    for start in range(0, len(codes), batch_size):
        chunk = codes[start : start + batch_size]
        for k, v in prior.nll(chunk).items():
            sums[k] = sums.get(k, 0.0) + v * len(chunk)
    out: dict[str, float] = {}
    for k, s in sums.items():
        out[f"val_{k}_nll"] = s / len(codes)
        out[f"val_{k}_bits"] = out[f"val_{k}_nll"] / math.log(2)
    out["val_nll"] = sum(out[f"val_{k}_nll"] for k in sums)
    return out


def write_prior(directory: Path, prior: MVQPrior, info: dict) -> None:
    """model.safetensors + config.json (format mvq-prior-v1, prior config) into ``directory``."""
    checkpoint.save_tensors(prior.state_dict(), directory / "model.safetensors")
    full = {"format": PRIOR_FORMAT, "mvq_version": mvq.__version__, "kind": "prior",
            "prior": prior.config(), **info}
    (directory / "config.json").write_text(json.dumps(full, indent=2))


def save_prior(directory: str | Path, prior: MVQPrior, info: dict) -> Path:
    """Write a prior checkpoint folder (all or nothing; ``info`` must hold its step)."""
    with checkpoint.writing(Path(directory), int(info.get("step", 0))) as tmp:
        write_prior(tmp, prior, info)
    return Path(directory)


def load_prior(directory: str | Path, device: str = "cpu") -> tuple[MVQPrior, dict]:
    """Rebuild a prior saved by `train_prior`; returns (prior in eval mode, config.json dict)."""
    directory = Path(directory)
    path = directory / "config.json"
    weights = directory / "model.safetensors"
    if not directory.is_dir() or not path.is_file() or not weights.is_file():
        raise MvqError(f"{directory} is not an mvq prior checkpoint: it needs config.json and "
                       "model.safetensors (written by `mvq train-prior`)")
    info = checkpoint.read_json(path)
    if info.get("format") != PRIOR_FORMAT:
        raise MvqError(f"{path} has format {info.get('format')!r}, expected {PRIOR_FORMAT!r} "
                       "(a prior written by `mvq train-prior`)")
    checkpoint.verify(directory)
    try:
        prior = MVQPrior(**info["prior"])
    except (KeyError, TypeError) as err:
        raise MvqError(f"{path}: the prior's config does not build a prior ({err})") from None
    checkpoint.fit_weights(prior, checkpoint.load_weights(weights, device), directory, "prior")
    return prior.to(device).eval(), info


def train_prior(tokens_path: str | Path, out_dir: str | Path, steps: int = 2000,
                batch_size: int = 64, lr: float = 3e-4, seed: int = 0,
                val_fraction: float = 0.05, kind: str = "gpt", progress: bool = True,
                device: str = "auto", sizes: dict | None = None, val_every: int = 250,
                log_every: int = 10, resume: bool = False, overwrite: bool = False,
                keep_checkpoints: int = 1) -> dict:
    """Train a prior on a token file into ``out_dir`` (metrics.csv, checkpoint/).

    ``sizes``: GPT sizes {"primary": {n_layer, n_head, n_embd}, "secondary": {...}}; None uses
    MVQ Table 4 for the token grid. Returns {"step", "metrics" (final val), "initial"
    (val at step 0), "checkpoint" (Path), "seconds", "finished_before"}. A run already in
    ``out_dir`` is continued with ``resume`` (exactly, from its last checkpoint), replaced with
    ``overwrite``, and otherwise refused.

    Under ``torchrun --nproc_per_node N`` the N processes train one prior with DDP, each on
    1/N of every batch (batch_size stays the global batch); rank 0 validates, logs and saves.
    """
    if kind not in KINDS:
        raise MvqError(f"unknown prior kind {kind!r}: expected one of {', '.join(KINDS)}")
    if steps < 1 or batch_size < 1 or val_every < 1 or log_every < 1:
        raise MvqError("steps, batch_size, val_every and log_every must be >= 1")
    if not 0 < val_fraction < 1:
        raise MvqError(f"val_fraction must be in (0, 1), got {val_fraction}")
    out = Path(out_dir)
    target = out / "checkpoint"
    source = checkpoint.latest(target)
    if source is not None and not resume and not overwrite:
        raise MvqError(f"{out} already holds a prior run (checkpoint at step "
                       f"{checkpoint.read_json(source / 'config.json').get('step', '?')}); pass "
                       "--resume to continue it, --overwrite to start again over it, or "
                       "another --out")
    if resume and source is None:
        raise MvqError(f"nothing to resume: {target} holds no complete prior checkpoint")
    codes, _, tmeta = load_tokens(tokens_path)
    n = len(codes)
    n_val = max(1, round(n * val_fraction))
    if n - n_val < 1:
        raise MvqError(f"{tokens_path} has {n} items: too few to hold out {n_val} for validation")
    info = {"tokens": {**tmeta, "path": str(tokens_path)},
            "tokenizer_config_hash": codes.meta.get("config_hash"),
            # the exact tokenizer weights (None: a token file from before mvq recorded them)
            "tokenizer_weights_sha256": tmeta.get("weights_sha256"),
            "train": {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
                      "val_fraction": val_fraction, "n_train": n - n_val, "n_val": n_val}}
    schedule = Schedule(steps, batch_size, seed, log_every, val_every, ckpt_every=val_every,
                        keep_checkpoints=keep_checkpoints, batch_option="--batch-size")
    resume_from = source if resume else None

    def run(launch, dev) -> dict:
        trainee = PriorTrainee(codes, n_val, info, seed, lr, sizes, dev, resume_from)
        r = fit(trainee, schedule, out, launch, dev, resume_from, progress)
        return {"step": r.step, "metrics": r.metrics, "initial": r.initial,
                "checkpoint": target, "seconds": r.seconds, "finished_before": r.finished_before}

    return distributed.run(pick_device(device), batch_size, "--batch-size", run)


class PriorTrainee(Trainee):
    """The two-stage GPT prior on a token file for the engine: items are code sequences, a
    seeded slice of them is held out for the validation NLL."""

    name = "prior gpt"
    what = "prior training"
    lower_lr = "lower --lr"
    validate_first = True
    fields = ["primary", "secondary", "val_nll", "val_primary_nll", "val_secondary_nll",
              "val_primary_bits", "val_secondary_bits"]

    def __init__(self, codes: Codes, n_val: int, info: dict, seed: int, lr: float,
                 sizes: dict | None, device: torch.device, resume_from: Path | None) -> None:
        self.info, self.device = info, device
        torch.manual_seed(seed)
        perm = torch.randperm(len(codes), generator=torch.Generator().manual_seed(seed))
        self.val_codes = codes[perm[:n_val]].to(device)
        self.train_codes = codes[perm[n_val:]].to(device)
        self.size = len(self.train_codes)
        self.model = MVQPrior.from_codes(codes, sizes=sizes).to(device)
        self.initial: dict[str, float] = {}
        if resume_from is not None:
            saved, saved_info = load_prior(resume_from, device=str(device))
            if saved.config() != self.model.config():
                raise MvqError(f"cannot resume {resume_from}: it holds a prior of other sizes "
                               "or codes; resume with the same token file and sizes")
            self.model.load_state_dict(saved.state_dict())
            self.initial = dict(saved_info.get("initial_metrics") or {})
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr)

    def step(self, step: int, indices: torch.Tensor) -> StepOutput:
        loss, parts = self.net(self.train_codes[indices.to(self.device)])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return StepOutput(loss, {k: v.detach() for k, v in parts.items()})

    def validate(self, step: int, out_dir: Path) -> dict[str, float]:
        metrics = validate_prior(self.model, self.val_codes)
        if step == 0:
            self.initial = metrics
        return metrics

    def write(self, directory: Path, step: int, metrics: dict[str, float]) -> None:
        write_prior(directory, self.model, {**self.info, "step": step, "metrics": metrics,
                                            "initial_metrics": self.initial})
