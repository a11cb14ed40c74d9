"""`mvq analyze`: see what the masked secondary codes of an MVQ tokenizer learned.

:func:`analyze` writes one labelled figure (:mod:`mvq.figures`) per analysis
(``OUT/dims.png`` ...); the analyses are in :mod:`mvq.analysis.figures`, the code operations
in :mod:`mvq.analysis.codes`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mvq.errors import MvqError

ANALYSES = ("dims", "transfer", "compose", "diversity")
DEFAULT_IMAGES = {"dims": 2, "transfer": 4, "compose": 1, "diversity": 4}
POOL = 256  # test images encoded to find ones with different primary codes


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
            images: int | None = None, masks: int = 8, seed: int = 0, sum_mode: str = "codes",
            scale: int = 3, overwrite: bool = False) -> list[Path]:
    """Write ``OUT/<what>.png`` for each analysis in ``what``; returns the paths. ``images``:
    test images (rows or blocks) per grid (default per analysis); ``masks``: random masks in
    transfer and diversity (compose uses the first 4 of the same seeded draw)."""
    from mvq.analysis import codes as C
    from mvq.analysis import figures
    from mvq.outputs import check_outputs

    bad = [w for w in what if w not in ANALYSES]
    if bad or not what:
        raise MvqError(f"--what expects some of {', '.join(ANALYSES)}, found {bad or 'none'}")
    if sum_mode not in C.SUM_MODES:
        raise MvqError(f"--sum expects one of {', '.join(C.SUM_MODES)}, found {sum_mode!r}")
    paths = dict(zip(what, check_outputs([("--out", Path(out) / f"{w}.png") for w in what],
                                         overwrite, [("--checkpoint", checkpoint)])))
    model, cfg = C.load_mvq(checkpoint)
    pool = C.load_test_images(cfg, max(POOL, images or 0))
    with torch.no_grad():
        codes = model.encode(pool)
    drawn = C.random_masks(codes, max(masks, 4), seed)
    written = []
    for w in what:
        idx = pick_distinct(codes.primary, images or DEFAULT_IMAGES[w])
        sub, x = codes[idx], pool[idx]
        if w == "dims":
            fig = figures.dims(model, sub, idx)
        elif w == "transfer":
            fig = figures.transfer(model, sub, idx, drawn[:masks])
        elif w == "compose":
            fig = figures.compose(model, sub, idx, drawn[:4], sum_mode)
        else:
            fig = figures.diversity(model, x, sub, idx, drawn[:masks])
        written.append(fig.save(paths[w], scale, "lower --images or --scale"))
    return written
