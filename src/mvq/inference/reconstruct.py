"""Encode images to codes and decode them back (``mvq reconstruct``): a labelled figure of the
originals over their reconstructions, the codes if asked for, and the error."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from mvq.data import first_images
from mvq.data.folder import list_images, load_image
from mvq.errors import MvqError
from mvq.files.figures import Figure, check_grid_size
from mvq.files.outputs import check_outputs
from mvq.metrics.image import psnr
from mvq.saved.pretrained import load_tokenizer


@dataclass(frozen=True)
class Reconstruction:
    """What `reconstruct` wrote and measured: the figure's path, the number of images,
    their MSE and mean per-image PSNR (dB) in [0, 1] pixel units."""

    path: Path
    n: int
    mse: float
    psnr: float


def load_images(paths: list[str], size: int, channels: int, n: int) -> torch.Tensor:
    """The first ``n`` readable images of ``paths`` (image files, and folders read as image
    folder data sets) as (n', C, H, W) in [0, 1] at the tokenizer's ``size`` and ``channels``;
    unreadable files are skipped with one line on stderr."""
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise MvqError(f"image path not found: {missing[0]}")
    items = []
    # every image of a folder (no train / test split here), then the files given
    files = [str(Path(p) / rel) for p in paths if Path(p).is_dir() for rel in list_images(p)]
    skipped = 0
    for file in [*files, *(p for p in paths if Path(p).is_file())]:
        if len(items) >= n:
            break
        try:
            items.append(load_image(str(file), size, channels))
        except Exception:  # noqa: BLE001 - PIL raises many types for a bad file
            skipped += 1
    if skipped:
        print(f"mvq: skipped {skipped} unreadable image file(s)", file=sys.stderr)
    if not items:
        raise MvqError(f"no readable images in {', '.join(paths)}")
    return torch.stack(items[:n])


def reconstruct(checkpoint: str | Path, out: str | Path = "reconstruction.png",
                images: list[str] | None = None, n: int = 16, codes: str | Path | None = None,
                scale: int = 3, overwrite: bool = False) -> Reconstruction:
    """Encode and decode ``images`` (files or folders; default: the first ``n`` test images of
    the checkpoint's data set) with the tokenizer in ``checkpoint``; write the PNG ``out``
    (originals over reconstructions, upscaled ``scale`` times) and, given ``codes``, the codes
    as .safetensors. Outputs that exist are replaced only with ``overwrite``; they are checked
    before any work."""
    check_outputs([("--out", out), ("--codes", codes)], overwrite,
                  [("--checkpoint", checkpoint), *(("--images", p) for p in images or ())])
    model, cfg, _ = load_tokenizer(checkpoint)
    model.eval()
    if images:
        x = load_images(images, cfg.model.image_size, cfg.model.channels, n)
    else:
        x = first_images(cfg, "test", n)[0]
    check_grid_size(2, len(x), cfg.model.image_size, scale, "lower --n or --scale")
    with torch.no_grad():
        encoded = model.encode(x)
        rec = model.decode(encoded).clamp(0, 1)
    mse, db = float((rec - x).pow(2).mean()), float(psnr(rec, x).mean())
    s, s2 = model.tokens
    figure = Figure([x, rec], f"mvq reconstruct: {cfg.model.type} ({s}+{s2} tokens, "
                    f"K={cfg.model.codebook_size}), MSE {mse:.4f}, PSNR {db:.2f} dB",
                    ["original", "reconstruction\n(from the codes)"])
    path = figure.save(out, scale, "lower --n or --scale")
    if codes:
        encoded.save(codes)
    return Reconstruction(path, len(x), mse, db)
