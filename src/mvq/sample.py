"""Sample images: prior -> Codes -> tokenizer decoder -> PNG grid."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from mvq.errors import MvqError
from mvq.images import check_grid_size, save_grid

PER_ROW = 8


def check_same_tokenizer(prior_info: dict, tokenizer_hash: str, prior_dir: str | Path,
                         model=None, force: bool = False) -> None:
    """MvqError unless the prior at ``prior_dir`` was trained on this tokenizer's codes: the
    same architecture (config hash) and, where the prior recorded them, the same weights
    (``model``'s tensors). ``force`` lets other weights of the same architecture through."""
    have = prior_info.get("tokenizer_config_hash") or prior_info["prior"]["meta"].get("config_hash")
    if have != tokenizer_hash:
        raise MvqError(f"prior {prior_dir} was trained on codes of tokenizer {have}, this "
                       f"tokenizer is {tokenizer_hash}; train a prior on its tokens "
                       "(mvq encode-dataset, then mvq train-prior)")
    trained_on = prior_info.get("tokenizer_weights_sha256")
    if model is None or trained_on is None:
        return
    from mvq.checkpoint import tensors_sha256

    these = tensors_sha256(model)
    if these != trained_on and not force:
        raise MvqError(f"prior {prior_dir} was trained on tokens of other weights of this "
                       f"tokenizer (sha256 {trained_on[:12]}, these are {these[:12]}): its "
                       "samples would decode wrongly; pass --force to sample anyway, or "
                       "train a prior on this checkpoint's tokens")


def check_sampling(temperature: float, top_k: int | None) -> None:
    """MvqError unless temperature is finite and >= 0 (0: greedy) and top_k is None or >= 1."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not math.isfinite(temperature) or temperature < 0:
        raise MvqError(f"temperature must be a finite number >= 0 (0: greedy), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise MvqError(f"top_k must be None or an integer >= 1, got {top_k!r}")


def grid_rows(images: torch.Tensor, per_row: int = PER_ROW) -> list[torch.Tensor]:
    """(N, C, H, W) -> rows of (min(N, per_row), C, H, W); the last row is padded with white."""
    cols = min(per_row, len(images))
    rows = []
    for start in range(0, len(images), cols):
        row = images[start : start + cols]
        if len(row) < cols:
            row = torch.cat([row, row.new_ones(cols - len(row), *row.shape[1:])])
        rows.append(row)
    return rows


@torch.no_grad()
def sample_batches(model, prior, n: int, batch_size: int, generator: torch.Generator,
                   temperature: float = 1.0, top_k: int | None = None):
    """Yield (Codes, images (b, C, H, W) in [0, 1]) for n samples, batch_size at a time: the
    prior's codes (drawn from ``generator``) decoded by the tokenizer ``model``."""
    for start in range(0, n, batch_size):
        codes = prior.sample(min(batch_size, n - start), temperature=temperature, top_k=top_k,
                             generator=generator)
        yield codes, model.decode(codes).clamp(0, 1)


def sample_codes_and_images(tokenizer_dir: str | Path, prior_dir: str | Path, n: int = 64,
                            temperature: float = 1.0, top_k: int | None = None, seed: int = 0,
                            device: str = "cpu", batch_size: int = 256, force: bool = False):
    """(Codes of n samples, images (n, C, H, W) in [0, 1]) from the prior, decoded."""
    from mvq.checkpoint import load_tokenizer
    from mvq.codes import Codes
    from mvq.config import model_hash
    from mvq.train.prior import load_prior

    if n < 1:
        raise MvqError(f"n must be >= 1, got {n}")
    check_sampling(temperature, top_k)
    model, cfg, _ = load_tokenizer(tokenizer_dir, device=device)
    model.eval()
    prior, info = load_prior(prior_dir, device=device)
    check_same_tokenizer(info, model_hash(cfg.model), prior_dir, model, force)
    gen = torch.Generator(device=device).manual_seed(seed)
    parts = list(sample_batches(model, prior, n, batch_size, gen, temperature, top_k))
    return Codes.cat([c for c, _ in parts]), torch.cat([im.cpu() for _, im in parts])


def sample_images(tokenizer_dir: str | Path, prior_dir: str | Path, n: int = 64,
                  out: str | Path = "samples.png", temperature: float = 1.0,
                  top_k: int | None = None, seed: int = 0, device: str = "cpu",
                  scale: int = 1, overwrite: bool = False, force: bool = False) -> Path:
    """Sample n images (seeded: same seed, same PNG) and write them 8 per row; returns the path.

    The MVQ mask bits are drawn at random from the same seeded generator (MVQPrior.sample).
    An existing ``out`` is replaced only with ``overwrite``.
    """
    from mvq.checkpoint import read_info
    from mvq.outputs import check_output

    check_sampling(temperature, top_k)
    size = int(read_info(tokenizer_dir)["config"]["model"]["image_size"])
    check_grid_size(*grid_shape(max(n, 1)), size, scale, "lower --n or --scale")
    check_output(out, overwrite, "--out")
    _, images = sample_codes_and_images(tokenizer_dir, prior_dir, n, temperature, top_k, seed,
                                        device, force=force)
    return save_grid(grid_rows(images), out, scale=scale)


def grid_shape(n: int, per_row: int = PER_ROW) -> tuple[int, int]:
    """(rows, columns) of the grid `sample_images` writes for n images."""
    cols = min(per_row, n)
    return math.ceil(n / cols), cols
