"""Fashion-MNIST read straight from its idx files (gzip-compressed or plain).

Images file: 16-byte big-endian header (magic 2051, n, rows, cols) then ``n*rows*cols`` uint8.
Labels file: 8-byte big-endian header (magic 2049, n) then ``n`` uint8.
Decoded once into a uint8 tensor ``(N, 1, 28, 28)`` that stays in memory.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib

import numpy as np
import torch

from mvq.data.base import TensorImageDataset, check_split
from mvq.errors import MvqError

ENV_VAR = "MVQ_FASHION_MNIST"
SYSTEM_ROOT = "/usr/share/datasets/fashion-mnist"
IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
NUM_CLASSES = 10
CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# Sub-folders also searched, so a torchvision download folder works as a root too.
_SUBDIRS = ("", "raw", os.path.join("FashionMNIST", "raw"))

INSTALL_HINT = (
    "install it with `apt-get install dataset-fashion-mnist` (Debian), or set "
    f"{ENV_VAR} / pass --data-root to a folder holding the four idx files "
    "(train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
    "t10k-labels-idx1-ubyte; .gz or plain)"
)


def _find_file(root: str, stem: str) -> str | None:
    """Path of ``stem`` or ``stem.gz`` under ``root`` (or its raw/ sub-folders), else None."""
    for sub in _SUBDIRS:
        for name in (stem + ".gz", stem):
            path = os.path.join(root, sub, name)
            if os.path.isfile(path):
                return path
    return None


def _has_all_files(root: str) -> bool:
    return all(_find_file(root, stem) for pair in FILES.values() for stem in pair)


def default_fashion_mnist_root() -> str | None:
    """``$MVQ_FASHION_MNIST`` if set, else the Debian package folder if it holds the files."""
    env = os.environ.get(ENV_VAR)
    if env:
        return env
    if os.path.isdir(SYSTEM_ROOT) and _has_all_files(SYSTEM_ROOT):
        return SYSTEM_ROOT
    return None


def fashion_mnist_available(root: str | None = None) -> bool:
    """True when ``root`` (default: `default_fashion_mnist_root`) holds all four files."""
    root = root if root is not None else default_fashion_mnist_root()
    return root is not None and os.path.isdir(root) and _has_all_files(root)


MAX_IDX_BYTES = 1 << 28  # 256 MiB: Fashion-MNIST's largest file inflates to 47 MB


def _bad(path: str, problem: str) -> MvqError:
    return MvqError(f"Fashion-MNIST file {path} {problem}; replace it ({INSTALL_HINT})")


def _gzip_size(path: str) -> int | None:
    """The inflated size a gzip file declares in its trailer (mod 2**32); None when plain."""
    with open(path, "rb") as f:
        if f.read(2) != b"\x1f\x8b":
            return None
        f.seek(-4, os.SEEK_END)
        return struct.unpack("<I", f.read(4))[0]


def _parse_idx(path: str, magic: int, ndim: int) -> np.ndarray:
    """Parse one idx file of unsigned bytes (gzip or plain); returns a uint8 array of ``ndim``
    dimensions. Sizes are checked before anything is inflated whole: the gzip trailer's size
    and the header's dimensions must agree and stay under MAX_IDX_BYTES, and exactly the bytes
    the header declares are read (a gzip bomb is refused, not inflated)."""
    header = 4 * (1 + ndim)
    try:
        declared = _gzip_size(path)
        if declared is not None and declared > MAX_IDX_BYTES:
            raise _bad(path, f"declares {declared} bytes inflated, more than an idx file of "
                       f"this data set ({MAX_IDX_BYTES} at most)")
        opener = gzip.open if declared is not None else open
        with opener(path, "rb") as fh:
            head = fh.read(header)
            if len(head) < header:
                raise _bad(path, f"is too short ({len(head)} bytes) for an idx header of "
                           f"{header} bytes: it is truncated")
            fields = struct.unpack(f">{1 + ndim}I", head)
            if fields[0] != magic:
                raise _bad(path, f"has magic number {fields[0]}, expected {magic}: this is not "
                           "the right idx file")
            dims = fields[1:]
            expected = int(np.prod(dims, dtype=np.int64))
            if header + expected > MAX_IDX_BYTES or (
                    declared is not None and (header + expected) % (1 << 32) != declared):
                raise _bad(path, f"has dimensions {tuple(dims)} ({expected} bytes) that do not "
                           "fit its size: it is corrupt")
            raw = fh.read(expected + 1)
    except (OSError, EOFError, zlib.error, struct.error) as exc:
        raise _bad(path, f"could not be read ({exc}); "
                   "expected an idx file (gzip or plain)") from None
    if len(raw) != expected:
        raise _bad(path, f"holds {'more than ' if len(raw) > expected else ''}"
                   f"{min(len(raw), expected)} data bytes, expected {expected} for dimensions "
                   f"{tuple(dims)}: it is truncated or corrupt")
    return np.frombuffer(raw, dtype=np.uint8).reshape(dims)


_CACHE: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
_CACHE_MAX = 4


def _file_key(path: str) -> tuple:
    st = os.stat(path)
    return (os.path.abspath(path), st.st_mtime_ns, st.st_size)


def load_fashion_mnist_arrays(root: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode one split: uint8 images ``(N, 1, rows, cols)`` and int64 labels ``(N,)``.

    Results are cached per (file, mtime, size) so building train and test twice is free.
    """
    check_split(split)
    if not os.path.isdir(root):
        raise MvqError(f"Fashion-MNIST folder {root} does not exist; {INSTALL_HINT}")
    stems = FILES[split]
    paths = [_find_file(root, stem) for stem in stems]
    missing = [stem for stem, p in zip(stems, paths) if p is None]
    if missing:
        raise MvqError(
            f"Fashion-MNIST files missing in {root}: looked for {', '.join(missing)} "
            f"(.gz or plain); {INSTALL_HINT}"
        )
    img_path, lbl_path = paths
    key = (_file_key(img_path), _file_key(lbl_path))
    if key in _CACHE:
        return _CACHE[key]
    images = _parse_idx(img_path, IMAGES_MAGIC, 3)
    labels = _parse_idx(lbl_path, LABELS_MAGIC, 1)
    if images.shape[0] != labels.shape[0]:
        raise MvqError(
            f"Fashion-MNIST {split} split: {img_path} holds {images.shape[0]} images but "
            f"{lbl_path} holds {labels.shape[0]} labels; expected equal counts, replace the "
            f"files ({INSTALL_HINT})"
        )
    if labels.size and int(labels.max()) >= NUM_CLASSES:
        raise MvqError(
            f"Fashion-MNIST labels in {lbl_path} go up to {int(labels.max())}, expected 0..9; "
            f"replace the file ({INSTALL_HINT})"
        )
    # frombuffer gives a read-only view of the bytes; copy once into a tensor we own.
    img_t = torch.from_numpy(images.copy()).unsqueeze(1)
    lbl_t = torch.from_numpy(labels.astype(np.int64))
    if len(_CACHE) >= _CACHE_MAX:
        _CACHE.pop(next(iter(_CACHE)))
    _CACHE[key] = (img_t, lbl_t)
    return img_t, lbl_t


class FashionMNIST(TensorImageDataset):
    """Fashion-MNIST: items ``(float32 (C, S, S) in [0, 1], label in 0..9)``.

    Native ``C = 1``, ``S = 28``; ``size`` / ``channels`` convert on access.
    """

    name = "fashion-mnist"
    classes = CLASSES

    def __init__(
        self,
        root: str | None = None,
        split: str = "train",
        size: int | None = None,
        channels: int | None = None,
        limit: int | None = None,
    ) -> None:
        check_split(split)
        if root is None:
            root = default_fashion_mnist_root()
        if root is None:
            raise MvqError(
                f"Fashion-MNIST not found: {ENV_VAR} is not set and {SYSTEM_ROOT} does not "
                f"hold the idx files; {INSTALL_HINT}"
            )
        self.root = root
        images, labels = load_fashion_mnist_arrays(root, split)
        super().__init__(
            images, labels, split=split, num_classes=NUM_CLASSES,
            size=size, channels=channels, limit=limit,
        )  # fmt: skip
