"""Image data sets for mvq, read from standard on-disk formats with PIL, numpy and torch.

Every item is ``(image, label)``: ``image`` a float32 tensor ``(C, H, W)`` with values in
``[0, 1]``, ``label`` an int. Data set objects carry ``name``, ``split``, ``image_size``,
``channels``, ``num_classes``, ``skipped`` and a one-line `describe`.
"""

from __future__ import annotations

import torch

from mvq.data.base import (
    ImageDataset,
    TensorImageDataset,
    check_channels,
    check_limit,
    check_size,
    check_split,
)
from mvq.data.cifar import CIFAR10
from mvq.data.fashion_mnist import (
    FashionMNIST,
    default_fashion_mnist_root,
    fashion_mnist_available,
)
from mvq.data.folder import ImageFolder
from mvq.data.shapes import Shapes
from mvq.errors import MvqError

DATASETS: tuple[str, ...] = ("fashion-mnist", "cifar10", "folder", "shapes")

_ALIASES = {
    "fashion-mnist": "fashion-mnist",
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "fmnist": "fashion-mnist",
    "cifar10": "cifar10",
    "cifar-10": "cifar10",
    "cifar_10": "cifar10",
    "folder": "folder",
    "imagefolder": "folder",
    "image-folder": "folder",
    "shapes": "shapes",
}


def canonical_name(name: str) -> str:
    """Map a data set name (or a common alias) to one of `DATASETS`."""
    key = str(name).strip().lower()
    if key not in _ALIASES:
        raise MvqError(
            f"unknown data set {name!r}: expected one of {', '.join(DATASETS)}; "
            "pick one of those names"
        )
    return _ALIASES[key]


def class_names(name: str) -> tuple[str, ...]:
    """The class names of a built-in data set, by label id; () for ``folder`` (its classes are
    its sub-folders, known only once read)."""
    kind = canonical_name(name)
    return {"fashion-mnist": FashionMNIST.classes, "cifar10": CIFAR10.classes,
            "shapes": Shapes.classes}.get(kind, ())


def build_dataset(
    name: str,
    root: str | None = None,
    split: str = "train",
    size: int | None = None,
    channels: int | None = None,
    limit: int | None = None,
    seed: int = 0,
) -> torch.utils.data.Dataset:
    """Build a data set by name; items are ``(float32 (C, size, size) in [0, 1], int label)``.

    ``root``: data folder (fashion-mnist defaults to `default_fashion_mnist_root`;
    ignored by shapes). ``size``/``channels`` (1 or 3) convert every item when given.
    ``limit`` keeps the first ``limit`` items (for shapes: sets the length). ``seed`` only
    affects shapes. Raises `MvqError` for anything the user can fix.
    """
    kind = canonical_name(name)
    check_split(split)
    check_size(size)
    check_channels(channels)
    check_limit(limit)
    if root is not None:
        root = str(root)
    if kind == "fashion-mnist":
        return FashionMNIST(root, split=split, size=size, channels=channels, limit=limit)
    if kind == "cifar10":
        return CIFAR10(root, split=split, size=size, channels=channels, limit=limit)
    if kind == "folder":
        return ImageFolder(root, split=split, size=size, channels=channels, limit=limit)
    return Shapes(split=split, size=size, channels=channels, limit=limit, seed=seed)


def first_images(cfg, split: str, n: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` images (None: all) of ``split`` of a config's data set (``cfg.data``)
    at its model's size and channels (``cfg.model``): images (n, C, S, S) in [0, 1] and their
    labels (n,)."""
    ds = build_dataset(cfg.data.name, root=cfg.data.root, split=split,
                       size=cfg.model.image_size, channels=cfg.model.channels, limit=n)
    return ds.stacked()


__all__ = [
    "CIFAR10",
    "DATASETS",
    "FashionMNIST",
    "ImageDataset",
    "ImageFolder",
    "MvqError",
    "Shapes",
    "TensorImageDataset",
    "build_dataset",
    "first_images",
    "canonical_name",
    "default_fashion_mnist_root",
    "fashion_mnist_available",
]
