"""CIFAR-10 from the official python-pickle distribution (``cifar-10-batches-py``).

Each batch file is a pickle of a dict with ``b"data"`` (``N x 3072`` uint8, each row the
channel-major ``3 x 32 x 32`` image: 1024 red, 1024 green, 1024 blue values, row-major) and
``b"labels"`` (``N`` ints in 0..9). Only the expected file names are opened, with an
unpickler that resolves nothing but numpy array reconstruction (no arbitrary code).
"""

from __future__ import annotations

import os
import pickle

import numpy as np
import torch

from mvq.data.base import TensorImageDataset, check_split
from mvq.errors import MvqError

ENV_VAR = "MVQ_CIFAR10"
SUBDIR = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
NUM_CLASSES = 10
CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
HINT = (
    "download the CIFAR-10 python version (cifar-10-python.tar.gz), extract it, and pass "
    f"--data-root (or set {ENV_VAR}) to the folder holding {SUBDIR}/ or its batch files"
)


def _numpy_globals() -> dict[tuple[str, str], object]:
    """The few callables a pickled numpy array needs, under every module name numpy used."""
    reconstruct = np.zeros(1).__reduce__()[0]  # numpy.(_)core.multiarray._reconstruct
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]  # numpy.(_)core.numeric._frombuffer
    scalar = np.float64(0).__reduce__()[0]  # numpy.(_)core.multiarray.scalar
    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # Protocol 0-2 pickles written by Python 3 encode bytes through _codecs.encode.
        ("_codecs", "encode"): __import__("_codecs").encode,
    }
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return allowed


_ALLOWED = _numpy_globals()


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global except numpy array reconstruction."""

    def find_class(self, module: str, name: str) -> object:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed") from None

    def persistent_load(self, pid: object) -> object:
        raise pickle.UnpicklingError("persistent ids are not allowed")


def load_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 batch safely: uint8 images ``(N, 3, 32, 32)``, int64 labels ``(N,)``."""
    try:
        with open(path, "rb") as f:
            obj = _RestrictedUnpickler(f, encoding="bytes").load()
    except pickle.UnpicklingError as exc:
        raise MvqError(
            f"refused to load CIFAR-10 batch {path}: {exc}; expected an official CIFAR-10 "
            f"python batch (a dict of numpy data and labels); replace the file ({HINT})"
        ) from exc
    except (OSError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise MvqError(
            f"could not read CIFAR-10 batch {path}: {exc}; expected an official CIFAR-10 "
            f"python batch; replace the file ({HINT})"
        ) from exc
    if not isinstance(obj, dict):
        raise MvqError(
            f"CIFAR-10 batch {path} holds a {type(obj).__name__}, expected a dict with "
            f"data and labels; replace the file ({HINT})"
        )
    data = obj.get(b"data", obj.get("data"))
    labels = obj.get(b"labels", obj.get("labels"))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3 * 32 * 32:
        found = (
            f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray)
            else type(data).__name__
        )
        raise MvqError(
            f"CIFAR-10 batch {path}: 'data' is {found}, expected a uint8 array of shape "
            f"(N, 3072); replace the file ({HINT})"
        )
    try:
        if isinstance(labels, np.ndarray) and labels.dtype == object:
            raise TypeError("object array")
        lbl = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        lbl = None
    if lbl is None or lbl.shape[0] != data.shape[0]:
        raise MvqError(
            f"CIFAR-10 batch {path}: expected {data.shape[0]} integer labels, found "
            f"{type(labels).__name__}; replace the file ({HINT})"
        )
    if lbl.size and (lbl.min() < 0 or lbl.max() >= NUM_CLASSES):
        raise MvqError(
            f"CIFAR-10 batch {path}: labels range {lbl.min()}..{lbl.max()}, expected 0..9; "
            f"replace the file ({HINT})"
        )
    return data.reshape(-1, 3, 32, 32), lbl


def find_cifar_dir(root: str) -> str:
    """The folder holding the batch files: ``root/cifar-10-batches-py`` or ``root`` itself."""
    if not os.path.isdir(root):
        raise MvqError(f"CIFAR-10 folder {root} does not exist; {HINT}")
    sub = os.path.join(root, SUBDIR)
    if os.path.isdir(sub):
        return sub
    return root


class CIFAR10(TensorImageDataset):
    """CIFAR-10: items ``(float32 (C, S, S) in [0, 1], label in 0..9)``, native C=3, S=32."""

    name = "cifar10"
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
            root = os.environ.get(ENV_VAR) or None
        if root is None:
            raise MvqError(f"no CIFAR-10 folder given; {HINT}")
        folder = find_cifar_dir(root)
        names = TRAIN_FILES if split == "train" else TEST_FILES
        missing = [n for n in names if not os.path.isfile(os.path.join(folder, n))]
        if missing:
            raise MvqError(
                f"CIFAR-10 {split} files missing in {folder}: {', '.join(missing)}; {HINT}"
            )
        images, labels = [], []
        total = 0
        for n in names:
            if limit is not None and total >= limit:
                break
            x, y = load_batch(os.path.join(folder, n))
            images.append(x)
            labels.append(y)
            total += x.shape[0]
        self.root = folder
        super().__init__(
            torch.from_numpy(np.ascontiguousarray(np.concatenate(images))),
            torch.from_numpy(np.concatenate(labels)),
            split=split, num_classes=NUM_CLASSES, size=size, channels=channels, limit=limit,
        )  # fmt: skip
