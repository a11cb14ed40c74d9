"""Train the two-stage MVQ prior (`MVQPrior`, kind "gpt") on a token file.

Batches are a pure function of (seed, step); validation is the mean NLL over a fixed held-out
slice of the token file, in nats and bits per token for the primary and secondary ids.
The checkpoint folder ``out_dir/checkpoint`` holds config.json (format "mvq-prior-v1") and
model.safetensors.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

import mvq
from mvq import distributed
from mvq.codes import Codes
from mvq.errors import MvqError
from mvq.priors.two_stage import MVQPrior
from mvq.tokens import load_tokens

PRIOR_FORMAT = "mvq-prior-v1"
KINDS = ("gpt",)
_FIELDS = ["step", "loss", "primary", "secondary", "val_nll", "val_primary_nll",
           "val_secondary_nll", "val_primary_bits", "val_secondary_bits"]


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


def _batch_indices(n: int, batch_size: int, seed: int, step: int) -> torch.Tensor:
    """(batch_size,) indices in [0, n) for ``step``: a slice of a per-epoch permutation seeded
    by (seed, epoch)."""
    per_epoch = max(1, n // batch_size)
    epoch, i = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return perm[i * batch_size : (i + 1) * batch_size]


def save_prior(directory: str | Path, prior: MVQPrior, info: dict) -> Path:
    """Write ``directory``/model.safetensors + config.json (format mvq-prior-v1, prior config)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / "model.safetensors.tmp"
    save_file({k: v.detach().contiguous().cpu() for k, v in prior.state_dict().items()}, str(tmp))
    os.replace(tmp, directory / "model.safetensors")
    full = {"format": PRIOR_FORMAT, "mvq_version": mvq.__version__, "kind": "prior",
            "prior": prior.config(), **info}
    tmp = directory / "config.json.tmp"
    tmp.write_text(json.dumps(full, indent=2))
    os.replace(tmp, directory / "config.json")
    return directory


def load_prior(directory: str | Path, device: str = "cpu") -> tuple[MVQPrior, dict]:
    """Rebuild a prior saved by `train_prior`; returns (prior in eval mode, config.json dict)."""
    directory = Path(directory)
    path = directory / "config.json"
    weights = directory / "model.safetensors"
    if not directory.is_dir() or not path.is_file() or not weights.is_file():
        raise MvqError(f"{directory} is not an mvq prior checkpoint: it needs config.json and "
                       "model.safetensors (written by `mvq train-prior`)")
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise MvqError(f"{path} is not valid JSON ({err.msg} at line {err.lineno})") from None
    if info.get("format") != PRIOR_FORMAT:
        raise MvqError(f"{path} has format {info.get('format')!r}, expected {PRIOR_FORMAT!r} "
                       "(a prior written by `mvq train-prior`)")
    prior = MVQPrior(**info["prior"])
    state = load_file(str(weights), device=device)
    missing, unexpected = prior.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise MvqError(f"{directory}: weights do not fit the prior built from its config "
                       f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return prior.to(device).eval(), info


def train_prior(tokens_path: str | Path, out_dir: str | Path, steps: int = 2000,
                batch_size: int = 64, lr: float = 3e-4, seed: int = 0,
                val_fraction: float = 0.05, kind: str = "gpt", progress: bool = True,
                device: str = "auto", sizes: dict | None = None, val_every: int = 250,
                log_every: int = 10) -> dict:
    """Train a prior on a token file into ``out_dir`` (metrics.csv, checkpoint/).

    ``sizes``: GPT sizes {"primary": {n_layer, n_head, n_embd}, "secondary": {...}}; None uses
    MVQ Table 4 for the token grid. Returns {"step", "metrics" (final val), "initial"
    (val at step 0), "checkpoint" (Path), "seconds"}.

    Under ``torchrun --nproc_per_node N`` the N processes train one prior with DDP, each on
    1/N of every batch (batch_size stays the global batch); rank 0 validates, logs and saves.
    """
    from mvq.train.loop import pick_device

    if kind not in KINDS:
        raise MvqError(f"unknown prior kind {kind!r}: expected one of {', '.join(KINDS)}")
    if steps < 1 or batch_size < 1 or val_every < 1 or log_every < 1:
        raise MvqError("steps, batch_size, val_every and log_every must be >= 1")
    if not 0 < val_fraction < 1:
        raise MvqError(f"val_fraction must be in (0, 1), got {val_fraction}")
    codes, _, tmeta = load_tokens(tokens_path)
    n = len(codes)
    n_val = max(1, round(n * val_fraction))
    if n - n_val < 1:
        raise MvqError(f"{tokens_path} has {n} items: too few to hold out {n_val} for validation")
    return distributed.run(
        pick_device(device), batch_size, "--batch-size",
        lambda launch, dev: _train_prior(codes, tmeta, tokens_path, n_val, launch, dev, out_dir,
                                         steps, batch_size, lr, seed, val_fraction, kind,
                                         progress, sizes, val_every, log_every))


def _train_prior(codes, tmeta, tokens_path, n_val, launch, dev, out_dir, steps, batch_size, lr,
                 seed, val_fraction, kind, progress, sizes, val_every, log_every) -> dict:
    n = len(codes)
    main = launch.rank == 0
    torch.manual_seed(seed)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val_codes = codes[perm[:n_val]].to(dev)
    train_codes = codes[perm[n_val:]].to(dev)
    prior = MVQPrior.from_codes(codes, sizes=sizes).to(dev)
    opt = torch.optim.Adam(prior.parameters(), lr=lr)
    if launch.world > 1 and len(train_codes) < batch_size:
        raise MvqError(f"{len(train_codes)} training items, fewer than one global batch of "
                       f"{batch_size}: lower --batch-size")
    net = prior if launch.world == 1 else torch.nn.parallel.DistributedDataParallel(prior)
    out = Path(out_dir)
    if main:
        out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint"
    base_info = {"tokens": {**tmeta, "path": str(tokens_path)},
                 "tokenizer_config_hash": codes.meta.get("config_hash"),
                 "train": {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
                           "val_fraction": val_fraction, "n_train": n - n_val, "n_val": n_val}}
    initial = validate_prior(prior, val_codes) if main else {}
    metrics = dict(initial)
    t0 = time.time()
    bar = tqdm(total=steps, desc=f"prior {kind}", disable=not (progress and main),
               file=sys.stderr, dynamic_ncols=True, leave=True,
               mininterval=0.1 if sys.stderr.isatty() else 30.0)
    step = 0
    with open(out / "metrics.csv", "w", newline="") if main else open(os.devnull, "w") as log_file:
        writer = csv.DictWriter(log_file, fieldnames=_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerow({"step": 0, **initial})
        prior.train()
        try:
            while step < steps:
                idx = _batch_indices(len(train_codes), batch_size, seed, step)
                loss, parts = net(train_codes[idx[launch.rank :: launch.world].to(dev)])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                value = distributed.mean_over_ranks({"loss": loss.detach()}, dev)["loss"]
                if not math.isfinite(value):
                    raise MvqError(f"prior training diverged at step {step} (loss {value}); "
                                   "lower --lr")
                bar.update(1)
                log_now = step % log_every == 0 or step == steps
                if log_now:  # on every rank: the parts are means over the ranks' shares
                    terms = distributed.mean_over_ranks(
                        {k: v.detach() for k, v in parts.items()}, dev)
                if not main:
                    continue
                row = None
                if log_now:
                    row = {"step": step, "loss": value, **terms}
                    bar.set_postfix(loss=f"{value:.4f}")
                if step % val_every == 0 or step == steps:
                    metrics = validate_prior(prior, val_codes)
                    row = {**(row or {"step": step, "loss": value}), **metrics}
                    save_prior(ckpt, prior, {**base_info, "step": step, "metrics": metrics,
                                             "initial_metrics": initial})
                if row is not None:
                    writer.writerow(row)
                    log_file.flush()
        finally:
            bar.close()
    return {"step": step, "metrics": metrics, "initial": initial, "checkpoint": ckpt,
            "seconds": time.time() - t0}
