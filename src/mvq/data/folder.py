"""Any folder of image files (searched recursively), decoded with PIL on access.

Classes are the sorted first-level sub-folders that hold images; images lying directly in
the root form a class ``"."`` (label 0, which sorts first). If the root has ``train/`` and
``test/`` sub-folders, the split picks one of them; otherwise about one image in
``HELD_OUT`` (chosen by a hash of its path, so the same ones every run) forms the test split
and the rest the train split, and a message says so.
Every file is opened and verified at construction; unreadable ones are skipped and counted.
The walk follows symbolic links but enters each folder once (a link loop is no trap) and
takes regular files only (a named pipe would block the probe).
"""

from __future__ import annotations

import hashlib
import os
import stat
import sys
import warnings

import numpy as np
import torch
from PIL import Image

from mvq.data.base import ImageDataset, check_split
from mvq.errors import MvqError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
DEFAULT_SIZE = 64
HELD_OUT = 10  # a folder without train/ and test/: 1 image in HELD_OUT is the test split
ROOT_CLASS = "."
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


def is_image_file(name: str) -> bool:
    """True when ``name`` has one of `EXTENSIONS` (case-insensitive)."""
    return name.lower().endswith(EXTENSIONS)


def list_images(root: str) -> list[str]:
    """Relative paths of the image files under ``root``, sorted, hidden entries excluded.

    Links are followed, but every folder and every file is taken once (by device and inode),
    and only regular files count (not pipes, sockets or devices named like images)."""
    found: list[str] = []
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                             and _first_visit(os.path.join(dirpath, d), seen))
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if name.startswith(".") or not is_image_file(name):
                continue
            try:
                st = os.stat(path)
            except OSError:  # a dangling link
                continue
            if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                found.append(os.path.relpath(path, root))
    return sorted(found)


def _first_visit(path: str, seen: set[tuple[int, int]]) -> bool:
    """True the first time the folder ``path`` (after links) is met; records it."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    key = (st.st_dev, st.st_ino)
    if key in seen:
        return False
    seen.add(key)
    return True


def held_out(rel_paths: list[str]) -> set[str]:
    """The paths of a folder without train/ and test/ that form its test split: those whose
    sha256 falls in one bucket of HELD_OUT (stable as files come and go), at least one."""
    keys = {p: int(hashlib.sha256(p.encode("utf-8", "surrogateescape")).hexdigest()[:12], 16)
            for p in rel_paths}
    test = {p for p, k in keys.items() if k % HELD_OUT == 0}
    if not test or len(test) == len(keys):  # each split gets at least one image
        test = {min(keys, key=keys.get)}
    return test


def _probe(path: str) -> str | None:
    """Open and verify one file; return its PIL mode, or None when PIL cannot read it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. DecompressionBombWarning, EXIF noise
            with Image.open(path) as im:
                mode = im.mode
                im.verify()
        return mode
    except Exception:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
        return None


_HIGH_BIT_RANGE = {"I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I;16N": 65535.0,
                   "I": 65535.0, "F": 255.0}  # what PIL's 32-bit 'I' holds from a 16-bit PNG
_ALPHA_MODES = {"LA", "La", "PA", "RGBA", "RGBa"}


def _flatten_alpha(im: Image.Image) -> Image.Image:
    """Transparent pixels over white (what a viewer shows), as RGB."""
    rgba = im.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _fit(im: Image.Image, size: int) -> Image.Image:
    """Shorter side resized to ``size`` (bilinear, antialiased by PIL), then center-cropped."""
    w, h = im.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    if (new_w, new_h) != (w, h):
        im = im.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return im.crop((left, top, left + size, top + size))


def load_image(path: str, size: int, channels: int) -> torch.Tensor:
    """Decode ``path``: shorter side resized to ``size`` (bilinear, antialiased by PIL), then
    center-cropped; returns float32 ``(channels, size, size)`` in ``[0, 1]``.

    Every PIL mode is scaled by its own range: 16-bit ('I;16') and 32-bit ('I') integer images
    by 65535 and resized as floats (PIL's 'L' conversion would clip them near white), 'F' by 255
    as PIL does; alpha ('LA', 'RGBA', 'PA', 'P' with transparency) is composited over white;
    palette, CMYK, '1' and the rest go through PIL's L / RGB conversion."""
    with Image.open(path) as im:
        mode = im.mode
        if mode in _HIGH_BIT_RANGE:
            im = im.convert("F")
        elif mode in _ALPHA_MODES or (mode == "P" and "transparency" in im.info):
            im = _flatten_alpha(im).convert("L" if channels == 1 else "RGB")
        else:
            im = im.convert("L" if channels == 1 else "RGB")
        im = _fit(im, size)
    arr = np.asarray(im, dtype=np.float32) / _HIGH_BIT_RANGE.get(mode, 255.0)
    arr = np.clip(arr, 0.0, 1.0)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], channels, axis=2)
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).contiguous()


_WARNED: set[str] = set()
_SAID_SPLIT: set[str] = set()


def _split_files(root: str, rel_paths: list[str], split: str) -> list[str]:
    """This split's share of a folder without train/ and test/ (`held_out`), said once."""
    if len(rel_paths) < 2:
        raise MvqError(f"{root} holds one image and no train/ and test/ sub-folders: a test "
                       "split needs images of its own; add images, or make train/ and test/")
    test = held_out(rel_paths)
    if root not in _SAID_SPLIT:
        _SAID_SPLIT.add(root)
        print(f"mvq: {root} has no train/ and test/ sub-folders: {len(test)} of its "
              f"{len(rel_paths)} images (1 in {HELD_OUT}, the same ones every run) are held out "
              "as the test split", file=sys.stderr)
    return [p for p in rel_paths if (p in test) == (split == "test")]


def _split_paths(root: str, split: str) -> tuple[str, list[str]]:
    """(folder, image paths relative to it) of ``split``: the ``train`` / ``test`` sub-folder
    when the root has both, else this split's share of the root's images (`held_out`)."""
    split_folders = all(os.path.isdir(os.path.join(root, s)) for s in ("train", "test"))
    if split_folders:
        root = os.path.join(root, split)
    rel_paths = list_images(root)
    if not rel_paths:
        raise MvqError(
            f"no image files found in {root}; expected files ending in "
            f"{', '.join(EXTENSIONS)} (searched recursively); point --data-root elsewhere"
        )
    return root, rel_paths if split_folders else _split_files(root, rel_paths, split)


def _readable(root: str, rel_paths: list[str], class_of: list[str], classes: list[str],
              limit: int | None) -> tuple[list[tuple[str, int]], list[str], int]:
    """(samples (path, label), their PIL modes, unreadable count): the first ``limit`` files
    PIL can open; MvqError when none can be."""
    index = {c: i for i, c in enumerate(classes)}
    samples: list[tuple[str, int]] = []
    modes: list[str] = []
    skipped = 0
    for rel, cls in zip(rel_paths, class_of):
        if limit is not None and len(samples) >= limit:
            break
        path = os.path.join(root, rel)
        mode = _probe(path)
        if mode is None:
            skipped += 1
            continue
        samples.append((path, index[cls]))
        modes.append(mode)
    if not samples:
        raise MvqError(
            f"none of the {skipped} image file(s) in {root} could be read by PIL; expected "
            "valid image files; check the folder or point --data-root elsewhere"
        )
    if skipped and root not in _WARNED:
        _WARNED.add(root)
        print(f"mvq: skipped {skipped} unreadable image(s) in {root}", file=sys.stderr)
    return samples, modes, skipped


class ImageFolder(ImageDataset):
    """Image files under a folder: items ``(float32 (C, S, S) in [0, 1], class index)``.

    ``S`` = ``size`` (default 64); ``C`` = ``channels``, or 1 when every image is grayscale
    and 3 otherwise. ``samples`` lists ``(path, label)``; ``classes`` the class folder names.
    """

    name = "folder"

    def __init__(
        self,
        root: str | None,
        split: str = "train",
        size: int | None = None,
        channels: int | None = None,
        limit: int | None = None,
    ) -> None:
        check_split(split)
        if root is None:
            raise MvqError(
                "the folder data set needs a root: pass --data-root (root=...) pointing to a "
                "folder of images (optionally in class sub-folders)"
            )
        if not os.path.isdir(root):
            raise MvqError(
                f"image folder {root} does not exist (or is not a folder); pass --data-root "
                "pointing to a folder of images (optionally in class sub-folders)"
            )
        root, rel_paths = _split_paths(root, split)
        self.root = root
        class_of = [p.split(os.sep, 1)[0] if os.sep in p else ROOT_CLASS for p in rel_paths]
        self.classes = sorted(set(class_of))
        samples, modes, skipped = _readable(root, rel_paths, class_of, self.classes, limit)
        if channels is None:
            channels = 1 if all(m in _GRAY_MODES for m in modes) else 3
        self.samples = samples
        self.labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
        super().__init__(
            split=split,
            image_size=size if size is not None else DEFAULT_SIZE,
            channels=channels,
            num_classes=len(self.classes),
        )
        self.skipped = skipped

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[self._check_index(int(index))]
        try:
            image = load_image(path, self.image_size, self.channels)
        except Exception as exc:
            raise MvqError(
                f"could not decode image {path} (it passed verification): {exc}; expected a "
                "valid image file; remove or replace it"
            ) from exc
        return image, label
