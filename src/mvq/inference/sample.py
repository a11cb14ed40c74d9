"""Sample images: prior -> Codes -> tokenizer decoder -> PNG grid."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mvq.configuration.config import model_hash
from mvq.data import class_names
from mvq.errors import MvqError, expect_value
from mvq.files.figures import Figure, check_grid_size, image_format, readable_scale
from mvq.files.outputs import check_outputs
from mvq.saved.checkpoint import read_info, tensors_sha256
from mvq.saved.pretrained import load_prior, load_tokenizer, resolve
from mvq.values.codes import Codes
from mvq.values.decoding import Decoding

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
    these = tensors_sha256(model)
    if these != trained_on and not force:
        raise MvqError(f"prior {prior_dir} was trained on tokens of other weights of this "
                       f"tokenizer (sha256 {trained_on[:12]}, these are {these[:12]}): its "
                       "samples would decode wrongly; pass --force to sample anyway, or "
                       "train a prior on this checkpoint's tokens")


@dataclass(frozen=True)
class Sampling:
    """What to sample: ``n`` images, drawn with ``decoding`` (its seed included), of the
    ``classes`` of a class-conditional prior in equal blocks (None: every class), and
    ``batch_size`` at a time. MvqError for a bad n or batch size when it is made."""

    n: int = 64
    decoding: Decoding = field(default_factory=Decoding)
    classes: tuple[int, ...] | None = None
    batch_size: int = 256

    def __post_init__(self) -> None:
        for name in ("n", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise MvqError(f"{name} must be an integer >= 1, got {value!r}")
        object.__setattr__(self, "decoding", expect_value(self.decoding, Decoding, "decoding"))
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(self.classes))


def class_labels(prior, n: int, classes: list[int] | None = None) -> torch.Tensor | None:
    """(n,) class ids for n samples: ``classes`` in contiguous blocks (sample i gets
    classes[i * len(classes) // n], so 8 * len(classes) samples fill one grid row per class),
    every class of a class-conditional prior when None, None for an unconditional prior."""
    if classes is not None and not prior.num_classes:
        raise MvqError(f"--class needs a class-conditional prior; this {prior.kind} prior is "
                       "unconditional (train one with mvq train-prior --class-conditional)")
    if not prior.num_classes:
        return None
    given = classes is not None
    classes = list(range(prior.num_classes)) if classes is None else list(classes)
    bad = [k for k in classes if not 0 <= k < prior.num_classes]
    if not classes or bad:
        raise MvqError(f"--class {bad[0] if bad else '(none)'}: this prior knows classes "
                       f"0..{prior.num_classes - 1}")
    if given and n < len(classes):  # blocks of n // len(classes): some classes would get none
        raise MvqError(f"--n {n} is fewer than the {len(classes)} classes of --class: each "
                       f"class needs a sample; pass --n {len(classes)} or more (e.g. "
                       f"{PER_ROW * len(classes)}: a row per class), or fewer classes")
    pick = torch.arange(n) * len(classes) // n
    return torch.tensor(classes, dtype=torch.long)[pick]


@torch.no_grad()
def sample_batches(model, prior, n: int, batch_size: int, decoding: Decoding,
                   labels: torch.Tensor | None = None, timing: dict | None = None):
    """Yield (Codes, images (b, C, H, W) in [0, 1]) for n samples, batch_size at a time: the
    prior's codes (drawn from one generator seeded with ``decoding.seed``, sample i of class
    labels[i] if given) decoded by the tokenizer ``model``. ``decoding`` is checked against
    the prior here, once, before any work. ``timing``: a dict that gets the wall seconds spent
    in the prior ("tokens") and in the decoder ("decode"), summed over the batches."""
    options = decoding.for_prior(prior)
    generator = torch.Generator(device=prior.device).manual_seed(decoding.seed)
    clock = {"tokens": 0.0, "decode": 0.0} if timing is None else timing
    clock.setdefault("tokens", 0.0)
    clock.setdefault("decode", 0.0)
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        lab = None if labels is None else labels[start : start + b]
        t0 = time.perf_counter()
        codes = prior.sample(b, lab, generator, **options)
        _sync(codes.primary.device)
        t1 = time.perf_counter()
        images = model.decode(codes).clamp(0, 1)
        _sync(images.device)
        clock["tokens"] += t1 - t0
        clock["decode"] += time.perf_counter() - t1
        yield codes, images


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _load_pair(tokenizer_dir: str | Path, prior_dir: str | Path, device: str = "cpu",
              force: bool = False):
    """(tokenizer in eval mode, its config, prior, the prior's info): MvqError unless the
    prior was trained on this tokenizer's codes (`check_same_tokenizer`)."""
    model, cfg, _ = load_tokenizer(tokenizer_dir, device=device)
    model.eval()
    prior, info = load_prior(prior_dir, device=device)
    check_same_tokenizer(info, model_hash(cfg.model), prior_dir, model, force)
    return model, cfg, prior, info


def _draw(tokenizer_dir, prior_dir, sampling: Sampling, device: str, force: bool):
    """(Codes, images (n, C, H, W) on the CPU, (n,) class labels or None) of ``sampling``."""
    model, _, prior, _ = _load_pair(tokenizer_dir, prior_dir, device, force)
    labels = class_labels(prior, sampling.n, sampling.classes)
    parts = list(sample_batches(model, prior, sampling.n, sampling.batch_size,
                                sampling.decoding, labels))
    return Codes.cat([c for c, _ in parts]), torch.cat([im.cpu() for _, im in parts]), labels


def sample_codes_and_images(tokenizer_dir: str | Path, prior_dir: str | Path,
                            sampling: Sampling | None = None, device: str = "cpu",
                            force: bool = False):
    """(Codes of ``sampling.n`` samples, images (n, C, H, W) in [0, 1]) from the prior, decoded
    by the tokenizer it was trained on (``force``: or by other weights of its architecture).
    Seeded: the same `Sampling` gives the same codes (None: `Sampling`'s defaults)."""
    sampling = expect_value(sampling, Sampling, "sampling")
    codes, images, _ = _draw(tokenizer_dir, prior_dir, sampling, device, force)
    return codes, images


def sample_images(tokenizer_dir: str | Path, prior_dir: str | Path,
                  out: str | Path = "samples.png", sampling: Sampling | None = None,
                  device: str = "cpu", scale: int | None = None, overwrite: bool = False,
                  force: bool = False) -> Path:
    """Sample ``sampling.n`` images (seeded: same seed, same PNG) and write them 8 per row, one
    block of rows per class for a class-conditional prior, as a labelled figure (``scale``: the
    images' upscale, default `mvq.files.figures.readable_scale`); returns the path.

    The MVQ mask bits are drawn at random from the same seeded generator (the prior's sample).
    An existing ``out`` is replaced only with ``overwrite``. None: `Sampling`'s defaults.
    """
    sampling = expect_value(sampling, Sampling, "sampling")
    config = read_info(resolve(tokenizer_dir))["config"]
    size = int(config["model"]["image_size"])
    scale = readable_scale(size) if scale is None else scale
    check_grid_size(*grid_shape(sampling.n), size, scale, "lower --n or --scale")
    check_outputs([("--out", out)], overwrite,
                  [("--tokenizer", tokenizer_dir), ("--prior", prior_dir)])
    image_format(out)  # .png or .jpg, refused before any work otherwise
    _, images, labels = _draw(tokenizer_dir, prior_dir, sampling, device, force)
    d = sampling.decoding
    title = (f"mvq sample: {sampling.n} samples of the prior {_run_name(prior_dir)} decoded by "
             f"{config['model'].get('type', 'the tokenizer')}, temperature {d.temperature:g}, "
             f"seed {d.seed}")
    figure = sample_figure(images, title, labels,
                           class_names(config.get("data", {}).get("name", "folder")))
    return figure.save(out, scale, "lower --n or --scale")


def _run_name(folder: str | Path) -> str:
    """'runs/x/prior' for 'runs/x/prior/checkpoint': the folder that names the run."""
    folder = Path(folder)
    return str(folder.parent if folder.name == "checkpoint" else folder)


def sample_figure(images: torch.Tensor, title: str, labels: torch.Tensor | None = None,
                  names: tuple[str, ...] = (), per_row: int = PER_ROW) -> Figure:
    """Samples (N, C, H, W) as a labelled figure, ``per_row`` a row; with class ``labels``
    (N,) one block of rows per class (in order of first appearance), labelled with its name
    from ``names`` (or its id)."""
    if labels is None:
        return Figure(list(images.split(per_row)), title)
    rows, row_labels = [], []
    for k in dict.fromkeys(labels.tolist()):
        mine = list(images[labels == k].split(per_row))
        name = names[k] if 0 <= k < len(names) else f"class {k}"
        rows += mine
        row_labels += [f"{name} ({k})"] + [""] * (len(mine) - 1)
    return Figure(rows, title, row_labels)


def grid_shape(n: int, per_row: int = PER_ROW) -> tuple[int, int]:
    """(rows, columns) of the grid `sample_images` writes for n images."""
    cols = min(per_row, n)
    return math.ceil(n / cols), cols
