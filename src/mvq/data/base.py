"""Shared pieces of the data sets: argument checks, tensor conversions, base classes.

Every data set yields ``(image, label)`` with ``image`` a float32 tensor of shape
``(C, H, W)`` with values in ``[0, 1]`` and ``label`` a Python ``int``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mvq.errors import MvqError

SPLITS = ("train", "test")

# ITU-R 601-2 luma weights, the same ones PIL uses for ``convert("L")``.
LUMA = (0.299, 0.587, 0.114)


def check_split(split: str) -> str:
    """Return ``split`` when it is ``"train"`` or ``"test"``, else raise MvqError."""
    if split not in SPLITS:
        raise MvqError(
            f"unknown data split {split!r}: expected one of {', '.join(SPLITS)}; "
            "pass split='train' or split='test'"
        )
    return split


def check_size(size: int | None) -> int | None:
    """Validate an optional target image size (a positive int)."""
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise MvqError(f"image size must be a positive integer, got {size!r}; pass e.g. size=32")
    return size


def check_channels(channels: int | None) -> int | None:
    """Validate an optional channel count (1 or 3)."""
    if channels is None:
        return None
    if channels not in (1, 3) or isinstance(channels, bool):
        raise MvqError(
            f"channels must be 1 (gray) or 3 (RGB), got {channels!r}; pass channels=1 or channels=3"
        )
    return channels


def check_limit(limit: int | None) -> int | None:
    """Validate an optional item limit (a positive int)."""
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise MvqError(
            f"limit must be a positive integer (number of items to keep), got {limit!r}; "
            "leave it unset to use the whole data set"
        )
    return limit


def convert_channels(image: torch.Tensor, channels: int) -> torch.Tensor:
    """Convert a float image ``(C, H, W)`` (C in 1, 3) to ``(channels, H, W)``.

    3 -> 1 uses ITU-R 601-2 luminance; 1 -> 3 repeats the gray plane.
    """
    c = image.shape[0]
    if c == channels:
        return image
    if c == 1 and channels == 3:
        return image.expand(3, -1, -1).contiguous()
    if c == 3 and channels == 1:
        w = torch.tensor(LUMA, dtype=image.dtype, device=image.device).view(3, 1, 1)
        return (image * w).sum(dim=0, keepdim=True)
    raise MvqError(f"cannot convert an image with {c} channels to {channels}; expected 1 or 3")


def resize_tensor(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a float image ``(C, H, W)`` to ``(C, size, size)`` (bilinear, antialiased)."""
    if image.shape[-2:] == (size, size):
        return image
    out = F.interpolate(
        image.unsqueeze(0), size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
    return out.squeeze(0).clamp_(0.0, 1.0)


class ImageDataset(torch.utils.data.Dataset):
    """Base class: the attributes every mvq data set carries.

    Attributes: ``name``, ``split``, ``image_size`` (H = W of every item), ``channels``,
    ``num_classes``, ``skipped`` (unreadable files left out; 0 except for ``folder``).
    """

    name: str = "dataset"

    def __init__(self, split: str, image_size: int, channels: int, num_classes: int) -> None:
        self.split = split
        self.image_size = image_size
        self.channels = channels
        self.num_classes = num_classes
        self.skipped = 0

    def __len__(self) -> int:  # pragma: no cover - overridden
        raise NotImplementedError

    def _check_index(self, index: int) -> int:
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"index {index} out of range for {self.name} with {n} items")
        return index

    def stacked(self, start: int = 0, stop: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Items ``start`` to ``stop`` (default: the end; cut to the length) as one batch:
        images (n, C, S, S) in [0, 1] and their labels (n,) int64."""
        stop = len(self) if stop is None else min(stop, len(self))
        items = [self[i] for i in range(start, stop)]
        if not items:
            s = self.image_size
            return torch.zeros(0, self.channels, s, s), torch.zeros(0, dtype=torch.int64)
        return (torch.stack([x for x, _ in items]),
                torch.tensor([int(y) for _, y in items], dtype=torch.int64))

    def describe(self) -> str:
        """One line for logs: name, split, item count, image size and channels."""
        extra = f", skipped={self.skipped}" if self.skipped else ""
        return (
            f"{self.name} split={self.split} N={len(self)} "
            f"size={self.image_size}x{self.image_size} channels={self.channels} "
            f"classes={self.num_classes}{extra}"
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


class TensorImageDataset(ImageDataset):
    """A data set held in memory as uint8 images ``(N, C, H, W)`` and int64 labels ``(N,)``.

    Items are converted on access: ``float32 (channels, size, size)`` in ``[0, 1]``.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        split: str,
        num_classes: int,
        size: int | None = None,
        channels: int | None = None,
        limit: int | None = None,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(
                f"expected uint8 images (N, C, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        if labels.shape != (images.shape[0],):
            raise ValueError(f"expected {images.shape[0]} labels, got shape {tuple(labels.shape)}")
        if images.shape[0] == 0:
            raise MvqError(f"the {split} split of {self.name} holds no images (its files are "
                           "empty); replace them, or point --data-root at a complete copy")
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
        self.images = images
        self.labels = labels.to(torch.int64)
        self._native_channels = images.shape[1]
        self._resize = size
        super().__init__(
            split=split,
            image_size=size if size is not None else int(images.shape[-1]),
            channels=channels if channels is not None else int(images.shape[1]),
            num_classes=num_classes,
        )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        index = self._check_index(int(index))
        image = self.images[index].to(torch.float32).div_(255.0)
        if self._resize is not None:
            image = resize_tensor(image, self._resize)
        image = convert_channels(image, self.channels)
        return image, int(self.labels[index])
