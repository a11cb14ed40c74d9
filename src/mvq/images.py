"""Image grids as PNG (PIL; no torchvision needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mvq.errors import MvqError
from mvq.outputs import atomic_write


MAX_PNG_SIDE = 16384  # pixels; many viewers and browsers open nothing wider or taller
PAD = 2  # pixels between the images of a grid


def check_grid_size(rows: int, cols: int, size: int, scale: int, fix: str) -> None:
    """MvqError before any work when a grid of rows x cols images of ``size`` px, upscaled by
    ``scale``, would be a PNG wider or taller than :data:`MAX_PNG_SIDE`; ``fix`` says what to lower."""
    height = (rows * (size + PAD) + PAD) * scale
    width = (cols * (size + PAD) + PAD) * scale
    if max(height, width) > MAX_PNG_SIDE:
        raise MvqError(f"the PNG would be {width} x {height} px ({rows} x {cols} images of "
                       f"{size} px, scale {scale}); expected at most {MAX_PNG_SIDE} px a side, "
                       f"which viewers open: {fix}")


def grid_array(rows: list[torch.Tensor], pad: int = PAD) -> np.ndarray:
    """rows: list of (N, C, H, W) in [0, 1] (same N, C, H, W) -> uint8 (H', W', 3) grid."""
    n, c, h, w = rows[0].shape
    out = np.ones((len(rows) * (h + pad) + pad, n * (w + pad) + pad, 3), dtype=np.float32)
    for r, batch in enumerate(rows):
        arr = batch.detach().float().clamp(0, 1).cpu().numpy()
        if c == 1:
            arr = np.repeat(arr, 3, axis=1)
        for i in range(n):
            y, x = pad + r * (h + pad), pad + i * (w + pad)
            out[y : y + h, x : x + w] = arr[i].transpose(1, 2, 0)
    return (out * 255 + 0.5).astype(np.uint8)


def save_grid(rows: list[torch.Tensor], path: str | Path, scale: int = 1) -> Path:
    """Write rows of images as one PNG (optionally upscaled by an integer factor)."""
    img = Image.fromarray(grid_array(rows))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    return atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))
