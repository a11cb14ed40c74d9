"""`mvq analyze`: see and measure what the masked secondary codes of an MVQ tokenizer learned.

`analyze` writes one file per analysis: a labelled figure (`mvq.files.figures`) for each
of `FIGURES` (``OUT/dims.png`` ...; the figures are in `mvq.analysis.figures`, the
code operations in `mvq.analysis.codes`), a JSON record for each of `MEASURES`
(``OUT/factors.json``: `mvq.analysis.factors`; ``OUT/classkeep.json``:
`mvq.analysis.classkeep`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from mvq.analysis import classkeep, factors, figures
from mvq.analysis import codes as C
from mvq.data import first_images
from mvq.errors import MvqError
from mvq.files.outputs import check_outputs, write_text

FIGURES = ("dims", "transfer", "compose", "diversity")
MEASURES = ("factors", "classkeep")
ANALYSES = FIGURES + MEASURES
DEFAULT_IMAGES = {"dims": 2, "transfer": 4, "compose": 1, "diversity": 4, "factors": 2000,
                  "classkeep": 1000}
POOL = 256  # test images encoded to find ones with different primary codes


@dataclass(frozen=True)
class AnalysisOptions:
    """How `analyze` runs. ``images``: test images per grid (rows or blocks), or scored
    by a measure (default per analysis, `DEFAULT_IMAGES`); ``masks``: random masks in
    transfer and diversity (compose uses the first 4 of the same draw); ``seed``: of the masks
    and of classkeep's classifier; ``sum_mode``: compose's corners (``codes`` or ``outputs``);
    ``scale``: integer upscaling of the figures; ``bins``: equal-count bins per continuous
    factor (factors); ``train_images`` and ``classifier_steps``: classkeep's classifier."""

    images: int | None = None
    masks: int = 8
    seed: int = 0
    sum_mode: str = "codes"
    scale: int = 3
    bins: int = 8
    train_images: int = 10_000
    classifier_steps: int = 600


def pick_distinct(primary: torch.Tensor, n: int) -> list[int]:
    """Indices of ``n`` images, those with a primary code not seen before first (in order),
    then the rest in order: rows that differ in e show transfer best."""
    seen, first, rest = set(), [], []
    for i, p in enumerate(primary):
        key = tuple(p.flatten().tolist())
        (rest if key in seen else first).append(i)
        seen.add(key)
    return (first + rest)[:n]


def analyze(checkpoint: str | Path, what: list[str], out: str | Path = "runs/analyze",
            options: AnalysisOptions | None = None, overwrite: bool = False) -> list[Path]:
    """Write ``OUT/<what>.png`` for each figure and ``OUT/<what>.json`` for each measure in
    ``what`` (figures first); returns the paths. Outputs that exist are replaced only with
    ``overwrite``; all are checked before any work."""
    opts = options or AnalysisOptions()
    bad = [w for w in what if w not in ANALYSES]
    if bad or not what:
        raise MvqError(f"--what expects some of {', '.join(ANALYSES)}, found {bad or 'none'}")
    if opts.sum_mode not in C.SUM_MODES:
        raise MvqError(f"--sum expects one of {', '.join(C.SUM_MODES)}, found {opts.sum_mode!r}")
    names = [Path(out) / f"{w}.{'json' if w in MEASURES else 'png'}" for w in what]
    paths = dict(zip(what, check_outputs([("--out", p) for p in names], overwrite,
                                         [("--checkpoint", checkpoint)])))
    drawn = [w for w in what if w in FIGURES]
    written = draw_figures(checkpoint, {w: paths[w] for w in drawn}, opts) if drawn else []
    for w in (w for w in what if w in MEASURES):
        result = measure(checkpoint, w, opts)
        written.append(write_text(paths[w], json.dumps(result, indent=1) + "\n"))
    return written


def draw_figures(checkpoint: str | Path, paths: dict[str, Path], opts: AnalysisOptions
                 ) -> list[Path]:
    """Draw each figure named in ``paths`` (one of `FIGURES` -> its PNG path) from the
    MVQ tokenizer in ``checkpoint``; returns the paths written."""
    model, cfg = C.load_mvq(checkpoint)
    pool = first_images(cfg, "test", max(POOL, opts.images or 0))[0]
    with torch.no_grad():
        codes = model.encode(pool)
    drawn = C.random_masks(codes, max(opts.masks, 4), opts.seed)
    written = []
    for w, path in paths.items():
        idx = pick_distinct(codes.primary, opts.images or DEFAULT_IMAGES[w])
        sub, x = codes[idx], pool[idx]
        if w == "dims":
            fig = figures.dims(model, sub, idx)
        elif w == "transfer":
            fig = figures.transfer(model, sub, idx, drawn[:opts.masks])
        elif w == "compose":
            fig = figures.compose(model, sub, idx, drawn[:4], opts.sum_mode)
        else:
            fig = figures.diversity(model, x, sub, idx, drawn[:opts.masks])
        written.append(fig.save(path, opts.scale, "lower --images or --scale"))
    return written


def measure(checkpoint: str | Path, what: str, opts: AnalysisOptions) -> dict:
    """The JSON record of one of `MEASURES` for the tokenizer in ``checkpoint``."""
    n = opts.images or DEFAULT_IMAGES[what]
    if what == "factors":
        return factors.score_checkpoint(str(checkpoint), n, opts.bins)
    return classkeep.transfer_class_rates(checkpoint, n, opts.train_images,
                                          opts.classifier_steps, opts.seed)
