"""A procedural data set of single flat shapes on black, with known generating factors.

Factors (drawn at construction, vectorized, from ``(seed, split)``; each factor has its own
random stream, so a shorter set is an exact prefix of a longer one):

- ``shape``: int class id, see `SHAPES` (also the label)
- ``size``: half-extent of the shape as a fraction of the image side, in [0.15, 0.35]
- ``x``, ``y``: centre as a fraction of the image side (the shape always fits)
- ``color``: ``(N, C)`` intensities in [0.25, 1]; RGB for 3 channels, brightness for 1

Images are rendered on access (a few tensor ops), so construction is instant.
"""

from __future__ import annotations

import numpy as np
import torch

from mvq.data.base import ImageDataset, check_split
from mvq.errors import MvqError

SHAPES = ("circle", "square", "triangle", "diamond", "cross")
FACTOR_NAMES = ("shape", "size", "x", "y", "color")
DEFAULT_LENGTH = {"train": 10000, "test": 2000}
DEFAULT_SIZE = 32
DEFAULT_CHANNELS = 3
SIZE_RANGE = (0.15, 0.35)
COLOR_RANGE = (0.25, 1.0)
_SPLIT_ID = {"train": 0, "test": 1}
_SALT = 0x5A4E5  # keeps these streams apart from other users of the same seed


def sample_factors(n: int, channels: int, seed: int, split: str) -> dict[str, torch.Tensor]:
    """Draw ``n`` factor sets: ``shape`` int64 ``(n,)``, ``size``/``x``/``y`` float32 ``(n,)``,
    ``color`` float32 ``(n, channels)``. Deterministic in ``(seed, split)``."""
    streams = np.random.SeedSequence([_SALT, int(seed), _SPLIT_ID[split]]).spawn(4 + channels)
    rngs = [np.random.Generator(np.random.PCG64(s)) for s in streams]
    shape = rngs[0].integers(0, len(SHAPES), size=n)
    size = rngs[1].uniform(*SIZE_RANGE, size=n)
    # The centre is drawn in units of the free room, so the whole shape stays inside.
    x = size + rngs[2].uniform(0.0, 1.0, size=n) * (1.0 - 2.0 * size)
    y = size + rngs[3].uniform(0.0, 1.0, size=n) * (1.0 - 2.0 * size)
    color = np.stack([rngs[4 + c].uniform(*COLOR_RANGE, size=n) for c in range(channels)], 1)
    return {
        "shape": torch.from_numpy(shape.astype(np.int64)),
        "size": torch.from_numpy(size.astype(np.float32)),
        "x": torch.from_numpy(x.astype(np.float32)),
        "y": torch.from_numpy(y.astype(np.float32)),
        "color": torch.from_numpy(color.astype(np.float32)),
    }


def shape_mask(
    shape: int, size: float, x: float, y: float, image_size: int
) -> torch.Tensor:
    """Boolean mask ``(image_size, image_size)`` of pixel centres inside the shape."""
    coords = (torch.arange(image_size, dtype=torch.float32) + 0.5) / image_size
    dx = (coords - x).view(1, -1).abs()  # columns
    dy = (coords - y).view(-1, 1)  # rows, negative above the centre
    r = size
    name = SHAPES[shape]
    if name == "circle":
        return dx**2 + dy**2 <= r * r
    if name == "square":
        return (dx <= r * 0.85) & (dy.abs() <= r * 0.85)
    if name == "triangle":  # apex up, base at the bottom
        return (dy.abs() <= r) & (dx <= (dy + r) / 2)
    if name == "diamond":
        return dx + dy.abs() <= r
    if name == "cross":
        arm = r / 3
        return ((dx <= arm) & (dy.abs() <= r)) | ((dy.abs() <= arm) & (dx <= r))
    raise ValueError(f"unknown shape id {shape}")


class Shapes(ImageDataset):
    """Procedural shapes: items ``(float32 (C, S, S) in [0, 1], shape id)``.

    ``factors`` maps each name in ``factor_names`` to a tensor with one row per item.
    """

    name = "shapes"
    classes = SHAPES
    factor_names = FACTOR_NAMES

    def __init__(
        self,
        split: str = "train",
        size: int | None = None,
        channels: int | None = None,
        limit: int | None = None,
        seed: int = 0,
    ) -> None:
        check_split(split)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise MvqError(f"shapes seed must be a non-negative integer, got {seed!r}")
        size = size if size is not None else DEFAULT_SIZE
        channels = channels if channels is not None else DEFAULT_CHANNELS
        if size < 4:
            raise MvqError(f"shapes image size must be at least 4 pixels, got {size}")
        n = limit if limit is not None else DEFAULT_LENGTH[split]
        self.seed = int(seed)
        self.factors = sample_factors(n, channels, self.seed, split)
        self.labels = self.factors["shape"]
        super().__init__(split=split, image_size=size, channels=channels, num_classes=len(SHAPES))

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        i = self._check_index(int(index))
        f = self.factors
        label = int(f["shape"][i])
        mask = shape_mask(
            label, float(f["size"][i]), float(f["x"][i]), float(f["y"][i]), self.image_size
        )
        image = mask.to(torch.float32).unsqueeze(0) * f["color"][i].view(-1, 1, 1)
        return image, label

    def describe(self) -> str:
        return f"{super().describe()} seed={self.seed}"
