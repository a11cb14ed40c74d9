"""What both evaluations share: the settings, the tokenizer and its first n images of a split,
the result dict that records how the numbers were made, and the Inception statistics of the
real images (cached)."""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from mvq._version import __version__
from mvq.configuration.config import model_hash
from mvq.data import build_dataset, canonical_name
from mvq.errors import MvqError
from mvq.metrics import (
    FeatureStats,
    cached_feature_stats,
    extract_features,
    get_inception,
    prd_f_scores,
)
from mvq.metrics.fid import (
    RealSet,
    default_stats_dir,
    frechet_distance,
    mean_cov,
    stats_cache_path,
)
from mvq.runtime.devices import pick_device
from mvq.saved.pretrained import load_tokenizer

FEATURE_EXTRACTOR = "pytorch-fid FIDInceptionV3 pool3 2048-d"
INCEPTION_RESIZE = "bilinear to 299 (pytorch-fid convention), gray repeated to RGB"
PRD_CLUSTERS = 20
DATA_SEED = 0  # only the procedural shapes set uses it


@dataclass(frozen=True)
class EvalSettings:
    """Which images and how: the first ``n`` of ``split`` (of ``data_root`` when given, else
    the checkpoint's data root), ``batch_size`` at a time on ``device`` ("auto": cuda when
    available); ``cache_dir`` of the real images' Inception statistics (None: the default);
    ``progress`` bars on stderr. MvqError for a bad n or batch size when it is made."""

    split: str = "test"
    n: int = 1000
    batch_size: int = 100
    device: str = "auto"
    progress: bool = True
    data_root: str | None = None
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        n, bs = self.n, self.batch_size
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise MvqError(f"n must be a positive number of images, got {n!r}; pass e.g. n=1000")
        if isinstance(bs, bool) or not isinstance(bs, int) or bs < 1:
            raise MvqError(f"batch_size must be a positive integer, got {bs!r}")


class Batches:
    """The first n images of a data set as (B, C, H, W) batches; sized, re-iterable."""

    def __init__(self, dataset, n: int, batch_size: int) -> None:
        self.dataset, self.n, self.batch_size = dataset, n, batch_size

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def __iter__(self):
        for start in range(0, self.n, self.batch_size):
            end = min(start + self.batch_size, self.n)
            yield self.dataset.stacked(start, end)[0]


def _dataset_key(name: str, root: str | None, channels: int) -> str:
    """Cache name of the image set: the data set plus what changes its pixels."""
    key = f"{name}-{channels}ch"
    if name == "shapes":
        key += f"-seed{DATA_SEED}"
    if name == "folder" and root:
        key += "-" + hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:8]
    return key


def _check_inception_n(n: int, what: str) -> None:
    if n < 2:
        raise MvqError(
            f"rFID/PRD: FID needs at least 2 images, {what} {n}; pass n >= 2 (recommend "
            "n >= 1000 for comparable numbers), or leave rfid and prd out of the metrics"
        )


@dataclass
class EvalRun:
    """One evaluation under way: the tokenizer, its first n_used images of a split, the
    result dict that records how the numbers were made."""

    model: torch.nn.Module
    cfg: object
    dev: torch.device
    name: str
    root: str | None
    settings: EvalSettings
    n_used: int
    batches: Batches
    result: dict
    t0: float


def _result(checkpoint, info: dict, cfg, run_facts: dict, settings: EvalSettings,
            chosen: tuple[str, ...]) -> dict:
    """The result dict before any metric: what makes its numbers comparable."""
    name, root, n_used, dev = (run_facts[k] for k in ("name", "root", "n_used", "dev"))
    return {
        "checkpoint": str(Path(checkpoint).resolve()), "model_type": info.get("model_type"),
        "config_hash": model_hash(cfg.model), "step": info.get("step"), "dataset": name,
        "data_root": None if root is None else str(root),
        "data_seed": DATA_SEED if name == "shapes" else None, "split": settings.split,
        "n": n_used, "n_requested": settings.n, "image_size": cfg.model.image_size,
        "channels": cfg.model.channels, "metrics_requested": list(chosen),
        "feature_extractor": None, "feature_extractor_sha256": None, "inception_resize": None,
        "fid_stats_cache": None, "fid_stats_cache_hit": None, "prd": None,
        "device": str(dev), "batch_size": settings.batch_size, "mvq_version": __version__,
        "torch_version": torch.__version__,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "seconds": None,
        "notes": [], "metrics": {},
    }


def open_run(checkpoint, settings: EvalSettings, chosen: tuple[str, ...], inception: bool,
             against: str) -> EvalRun:
    """Load the tokenizer and the first n images of the split; raise MvqError for anything the
    user can fix. ``against``: what the real images are compared with (for messages and the
    PRD note)."""
    t0 = time.time()
    if inception:
        _check_inception_n(settings.n, "asked for")
    dev = pick_device(settings.device)
    model, cfg, info = load_tokenizer(checkpoint, device=str(dev))
    model.eval()
    name = canonical_name(cfg.data.name)
    root = settings.data_root if settings.data_root is not None else cfg.data.root
    dataset = build_dataset(name, root=root, split=settings.split, size=cfg.model.image_size,
                            channels=cfg.model.channels, limit=settings.n, seed=DATA_SEED)
    n_used = min(settings.n, len(dataset))
    if inception:
        _check_inception_n(n_used, f"the {name} {settings.split} split has")
    if "prd" in chosen and 2 * n_used < PRD_CLUSTERS:
        raise MvqError(
            f"PRD clusters reals + {against} into {PRD_CLUSTERS} groups: it needs at least "
            f"{PRD_CLUSTERS // 2} images, found {n_used}; pass a larger n or leave prd out"
        )
    facts = {"name": name, "root": root, "n_used": n_used, "dev": dev}
    result = _result(checkpoint, info, cfg, facts, settings, chosen)
    return EvalRun(model, cfg, dev, name, root, settings, n_used,
                   Batches(dataset, n_used, settings.batch_size), result, t0)


def real_features(run: EvalRun, need_features: bool):
    """(extractor, FeatureStats of the run's real images): from the stats cache when it has
    them, else extracted (and cached). Records the extractor, resize and cache in the result;
    adds the small-n note."""
    extractor = get_inception(device=run.dev)
    sha = extractor.weights_sha256
    s = run.settings
    size, channels = run.cfg.model.image_size, run.cfg.model.channels
    key = _dataset_key(run.name, run.root, channels)
    cache = Path(s.cache_dir) if s.cache_dir is not None else default_stats_dir()
    real = RealSet(key, s.split, size, run.n_used)
    path = stats_cache_path(cache, real, sha)
    run.result.update(feature_extractor=FEATURE_EXTRACTOR, feature_extractor_sha256=sha,
                      inception_resize=INCEPTION_RESIZE, fid_stats_cache=str(path),
                      fid_stats_cache_hit=path.is_file())
    real_stats = cached_feature_stats(
        real, lambda: run.batches, cache_dir=cache,
        extractor=extractor, batch_size=s.batch_size, device=run.dev, progress=s.progress)
    if need_features and (real_stats.features is None
                          or len(real_stats.features) != run.n_used):
        feats = extract_features(run.batches, s.batch_size, run.dev, s.progress, extractor)
        real_stats = FeatureStats.from_features(feats)
    if run.n_used < 1000:
        run.result["notes"].append(f"FID/PRD from {run.n_used} images: not comparable with "
                                   "numbers from other n (use n >= 1000)")
    return extractor, real_stats


def inception_scores(run: EvalRun, real_stats: FeatureStats, fake, fid_key: str | None,
                     prd: bool, against: str) -> None:
    """FID (under ``fid_key``) and PRD F_8 / F_1/8 of the real images vs ``fake`` features."""
    out = run.result["metrics"]
    if fid_key:
        out[fid_key] = frechet_distance(real_stats.mu, real_stats.sigma, *mean_cov(fake))
    if prd:
        out["prd_f8"], out["prd_f1_8"] = prd_f_scores(real_stats.features, fake,
                                                      num_clusters=PRD_CLUSTERS)
        run.result["prd"] = (f"Sajjadi et al. 2018: {PRD_CLUSTERS} k-means clusters, 10 runs, "
                             f"1001 angles, reals vs {against}")


def close_run(run: EvalRun) -> dict:
    """The result, with the short-split note and the seconds the evaluation took."""
    if run.n_used < run.settings.n:
        run.result["notes"].append(f"asked for {run.settings.n} images, the {run.name} "
                                   f"{run.settings.split} split has {run.n_used}")
    run.result["seconds"] = round(time.time() - run.t0, 3)
    return run.result
