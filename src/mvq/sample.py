"""Sample images: prior -> Codes -> tokenizer decoder -> PNG grid."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from mvq.errors import MvqError
from mvq.data import class_names
from mvq.figures import Figure, check_grid_size, readable_scale

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


def check_sampling(temperature: float, top_k: int | None, top_p: float | None = None) -> None:
    """MvqError unless temperature is finite and >= 0 (0: greedy), top_k is None or >= 1 and
    top_p is None or in (0, 1]."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not math.isfinite(temperature) or temperature < 0:
        raise MvqError(f"temperature must be a finite number >= 0 (0: greedy), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise MvqError(f"top_k must be None or an integer >= 1, got {top_k!r}")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float))
                              or not 0 < top_p <= 1):
        raise MvqError(f"top_p must be None or a number in (0, 1], got {top_p!r}")


def decoding_options(prior, temperature: float = 1.0, top_k: int | None = None,
                     top_p: float | None = None, steps: int | None = None,
                     choice_temperature: float | None = None) -> dict:
    """The decoding keywords for ``prior.sample`` (unset ones left out), checked: an option the
    prior does not take (``steps`` for a GPT) is refused naming the options it does take."""
    check_sampling(temperature, top_k, top_p)
    opts = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "steps": steps,
            "choice_temperature": choice_temperature}
    opts = {k: v for k, v in opts.items() if v is not None}
    prior.check_decoding(opts)
    return opts


def class_labels(prior, n: int, classes: list[int] | None = None) -> torch.Tensor | None:
    """(n,) class ids for n samples: ``classes`` in contiguous blocks (sample i gets
    classes[i * len(classes) // n], so 8 * len(classes) samples fill one grid row per class),
    every class of a class-conditional prior when None, None for an unconditional prior."""
    if classes is not None and not prior.num_classes:
        raise MvqError(f"--class needs a class-conditional prior; this {prior.kind} prior is "
                       "unconditional (train one with mvq train-prior --class-conditional)")
    if not prior.num_classes:
        return None
    classes = list(range(prior.num_classes)) if classes is None else list(classes)
    bad = [k for k in classes if not 0 <= k < prior.num_classes]
    if not classes or bad:
        raise MvqError(f"--class {bad[0] if bad else '(none)'}: this prior knows classes "
                       f"0..{prior.num_classes - 1}")
    pick = torch.arange(n) * len(classes) // n
    return torch.tensor(classes, dtype=torch.long)[pick]


@torch.no_grad()
def sample_batches(model, prior, n: int, batch_size: int, generator: torch.Generator,
                   labels: torch.Tensor | None = None, timing: dict | None = None, **decoding):
    """Yield (Codes, images (b, C, H, W) in [0, 1]) for n samples, batch_size at a time: the
    prior's codes (drawn from ``generator``, sample i of class labels[i] if given) decoded by
    the tokenizer ``model``. ``decoding``: the prior's options (`decoding_options`).
    ``timing``: a dict that gets the wall seconds spent in the prior ("tokens") and in the
    decoder ("decode"), summed over the batches."""
    import time

    clock = {"tokens": 0.0, "decode": 0.0} if timing is None else timing
    clock.setdefault("tokens", 0.0)
    clock.setdefault("decode", 0.0)
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        lab = None if labels is None else labels[start : start + b]
        t0 = time.perf_counter()
        codes = prior.sample(b, lab, generator, **decoding)
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


def sample_codes_and_images(tokenizer_dir: str | Path, prior_dir: str | Path, n: int = 64,
                            temperature: float = 1.0, top_k: int | None = None, seed: int = 0,
                            device: str = "cpu", batch_size: int = 256, force: bool = False,
                            classes: list[int] | None = None, top_p: float | None = None,
                            steps: int | None = None, choice_temperature: float | None = None,
                            class_ids: list[int] | None = None):
    """(Codes of n samples, images (n, C, H, W) in [0, 1]) from the prior, decoded.

    classes: class ids for a class-conditional prior (`class_labels`); steps and
    choice_temperature: MaskGIT's decoding (refused by the other priors); ``class_ids``: a
    list that gets each sample's class (nothing for an unconditional prior)."""
    from mvq.pretrained import load_tokenizer
    from mvq.codes import Codes
    from mvq.config import model_hash
    from mvq.pretrained import load_prior

    if n < 1:
        raise MvqError(f"n must be >= 1, got {n}")
    check_sampling(temperature, top_k, top_p)
    model, cfg, _ = load_tokenizer(tokenizer_dir, device=device)
    model.eval()
    prior, info = load_prior(prior_dir, device=device)
    check_same_tokenizer(info, model_hash(cfg.model), prior_dir, model, force)
    decoding = decoding_options(prior, temperature, top_k, top_p, steps, choice_temperature)
    labels = class_labels(prior, n, classes)
    gen = torch.Generator(device=device).manual_seed(seed)
    parts = list(sample_batches(model, prior, n, batch_size, gen, labels, **decoding))
    if class_ids is not None:
        class_ids.extend([] if labels is None else labels.tolist())
    return Codes.cat([c for c, _ in parts]), torch.cat([im.cpu() for _, im in parts])


def sample_images(tokenizer_dir: str | Path, prior_dir: str | Path, n: int = 64,
                  out: str | Path = "samples.png", temperature: float = 1.0,
                  top_k: int | None = None, seed: int = 0, device: str = "cpu",
                  scale: int | None = None, overwrite: bool = False, force: bool = False,
                  classes: list[int] | None = None, top_p: float | None = None,
                  steps: int | None = None, choice_temperature: float | None = None) -> Path:
    """Sample n images (seeded: same seed, same PNG) and write them 8 per row, one block of rows
    per class for a class-conditional prior, as a labelled figure (``scale``: the images'
    upscale, default :func:`mvq.figures.readable_scale`); returns the path.

    The MVQ mask bits are drawn at random from the same seeded generator (the prior's sample).
    An existing ``out`` is replaced only with ``overwrite``. classes / top_p / steps /
    choice_temperature: as `sample_codes_and_images`.
    """
    from mvq.checkpoint import read_info
    from mvq.outputs import check_outputs
    from mvq.pretrained import resolve

    check_sampling(temperature, top_k, top_p)
    config = read_info(resolve(tokenizer_dir))["config"]
    size = int(config["model"]["image_size"])
    scale = readable_scale(size) if scale is None else scale
    check_grid_size(*grid_shape(max(n, 1)), size, scale, "lower --n or --scale")
    check_outputs([("--out", out)], overwrite,
                  [("--tokenizer", tokenizer_dir), ("--prior", prior_dir)])
    sampled: list[int] = []
    _, images = sample_codes_and_images(
        tokenizer_dir, prior_dir, n, temperature, top_k, seed, device, force=force,
        classes=classes, top_p=top_p, steps=steps, choice_temperature=choice_temperature,
        class_ids=sampled)
    title = (f"mvq sample: {n} samples of the prior {_run_name(prior_dir)} decoded by "
             f"{config['model'].get('type', 'the tokenizer')}, temperature {temperature:g}, "
             f"seed {seed}")
    figure = sample_figure(images, title, torch.tensor(sampled) if sampled else None,
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
