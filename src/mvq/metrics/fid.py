"""FID / KID on 2048-d pool3 features of the TF "2015-12-05" Inception, as pytorch-fid does.

The network is pytorch-fid's ``FIDInceptionV3`` (its FID blocks on torchvision's Inception3),
built here without pytorch-fid's download call and loaded from the offline resolver
(`mvq.metrics.weights`). Features of a real set can be cached on disk (`FeatureStats`)
keyed by (dataset, split, image size, N, sha256 of the weights file).
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.numpy import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from mvq.errors import MvqError
from mvq.files.hashes import state_dict_sha256
from mvq.files.outputs import atomic_write, wait_lock
from mvq.metrics.weights import (
    build_fid_inception,
    inception_weights_path,
    load_state_dict_file,
)
from mvq.runtime.devices import pick_device
from mvq.runtime.extras import missing


class InceptionFeatureExtractor(nn.Module):
    """Images (B, C, H, W) in [0, 1], C in {1, 3} (uint8 in [0, 255] also accepted) -> (B, 2048).

    Pre-processing as pytorch-fid: bilinear resize to 299x299 (align_corners=False), then
    ``2x - 1``. Gray images are repeated to 3 channels. The network is frozen and in eval mode.
    """

    def __init__(self, weights: str | os.PathLike | None = None) -> None:
        super().__init__()
        self.weights_path = inception_weights_path(weights)
        state = load_state_dict_file(self.weights_path)
        self._weights_sha256 = state_dict_sha256(state)
        net = build_fid_inception(state)
        # the same block sequence as pytorch_fid.inception.InceptionV3 (output block 3)
        self.blocks = nn.Sequential(
            net.Conv2d_1a_3x3, net.Conv2d_2a_3x3, net.Conv2d_2b_3x3, nn.MaxPool2d(3, stride=2),
            net.Conv2d_3b_1x1, net.Conv2d_4a_3x3, nn.MaxPool2d(3, stride=2),
            net.Mixed_5b, net.Mixed_5c, net.Mixed_5d, net.Mixed_6a,
            net.Mixed_6b, net.Mixed_6c, net.Mixed_6d, net.Mixed_6e,
            net.Mixed_7a, net.Mixed_7b, net.Mixed_7c, nn.AdaptiveAvgPool2d((1, 1)),
        )
        self.requires_grad_(False)
        self.eval()

    @property
    def weights_sha256(self) -> str:
        """sha256 of the weights' tensors (`state_dict_sha256`): part of every feature-cache key.

        It names the network, not the file, so it is the same on every machine whichever
        carrier or conversion provided the weights."""
        return self._weights_sha256

    def train(self, mode: bool = True) -> "InceptionFeatureExtractor":
        return super().train(False)  # BatchNorm must keep its running statistics

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _prepare_images(x)
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        return self.blocks(2 * x - 1).flatten(1)


def _prepare_images(x: torch.Tensor) -> torch.Tensor:
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise MvqError(
            f"Inception features: expected images (B, 1|3, H, W), found shape {tuple(x.shape)}. "
            "Add a batch dimension or convert to gray/RGB."
        )
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    x = x.float()
    lo, hi = float(x.min()), float(x.max())
    if lo < -0.01 or hi > 1.01:
        raise MvqError(
            f"Inception features: expected pixel values in [0, 1], found [{lo:.3f}, {hi:.3f}]. "
            "Map [-1, 1] images with (x + 1) / 2 first."
        )
    x = x.clamp(0.0, 1.0)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


_EXTRACTORS: dict[tuple[str, str], InceptionFeatureExtractor] = {}


def get_inception(
    weights: str | os.PathLike | None = None, device: str | torch.device = "cpu"
) -> InceptionFeatureExtractor:
    """A shared (memoised per weights file and device) `InceptionFeatureExtractor`."""
    key = (str(inception_weights_path(weights)), str(torch.device(device)))
    if key not in _EXTRACTORS:
        _EXTRACTORS[key] = InceptionFeatureExtractor(key[0]).to(device)
    return _EXTRACTORS[key]


def _batches(images: torch.Tensor | Iterable, batch_size: int) -> Iterator[torch.Tensor]:
    if isinstance(images, torch.Tensor):
        if images.ndim == 3:
            images = images.unsqueeze(0)
        yield from images.split(batch_size)
        return
    buffer: list[torch.Tensor] = []
    for item in images:
        if isinstance(item, (tuple, list)):  # (image, label) from a Dataset / DataLoader
            item = item[0]
        item = torch.as_tensor(item)
        if item.ndim == 4:
            yield item
            continue
        buffer.append(item)
        if len(buffer) == batch_size:
            yield torch.stack(buffer)
            buffer = []
    if buffer:
        yield torch.stack(buffer)


@torch.no_grad()
def extract_features(
    images: torch.Tensor | Iterable,
    batch_size: int = 50,
    device: str | torch.device | None = None,
    progress: bool = True,
    extractor: nn.Module | None = None,
) -> torch.Tensor:
    """Features (N, 2048) float32 on CPU of images in [0, 1].

    ``images``: a tensor (N, C, H, W), or an iterable of batches (B, C, H, W), of single images
    (C, H, W), or of (image, label) tuples (a Dataset or DataLoader).
    """
    if device is None and extractor is not None:
        device = next(iter(extractor.parameters()), torch.empty(0)).device
    device = torch.device(device) if device is not None else pick_device("auto")
    model = extractor if extractor is not None else get_inception(device=device)
    total = len(images) if hasattr(images, "__len__") else None
    bar = None
    if progress:
        unit = "img" if isinstance(images, torch.Tensor) else "it"
        bar = tqdm(total=total, desc="features", unit=unit)
    feats = []
    for batch in _batches(images, batch_size):
        feats.append(model(batch.to(device)).float().cpu())
        if bar is not None:
            bar.update(len(batch) if isinstance(images, torch.Tensor) else 1)
    if bar is not None:
        bar.close()
    if not feats:
        raise MvqError(
            "extract_features: expected at least one image, found none. Check the data source."
        )
    return torch.cat(feats)


# ----------------------------------------------------------------------------- FID / KID
def _as_f64(f: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(f, torch.Tensor):
        a = f.detach().cpu().double().numpy()
    else:
        a = np.asarray(f, np.float64)
    if a.ndim != 2:
        raise MvqError(f"features: expected a 2-d array (N, D), found shape {a.shape}.")
    if not np.isfinite(a).all():
        raise MvqError(f"features: expected finite values, found {int((~np.isfinite(a)).sum())} "
                       "NaN or infinite entries (images with NaN pixels?); clean the input.")
    return a


def mean_cov(features: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) -> mean (D,) and unbiased covariance (D, D), float64 (as pytorch-fid)."""
    a = _as_f64(features)
    if a.shape[0] < 2:
        raise MvqError(
            f"FID: expected at least 2 feature vectors, found {a.shape[0]}. Use more images."
        )
    return a.mean(axis=0), np.cov(a, rowvar=False)


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrt(S1 S2)), computed as pytorch-fid does (scipy sqrtm)."""
    try:
        from scipy import linalg
    except ImportError:  # an optional dependency
        raise missing("scipy", "metrics") from None

    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape:
        raise MvqError(
            f"FID: feature dimensions differ ({mu1.shape} vs {mu2.shape}). Use one extractor."
        )
    if not (np.isfinite(mu1).all() and np.isfinite(mu2).all() and np.isfinite(s1).all()
            and np.isfinite(s2).all()):
        raise MvqError("FID: expected finite means and covariances, found NaN or infinite "
                       "entries (a damaged statistics cache, or NaN features); recompute them.")
    diff = mu1 - mu2

    def sqrtm(a: np.ndarray) -> np.ndarray:
        out = linalg.sqrtm(a)
        return out[0] if isinstance(out, tuple) else out

    covmean = sqrtm(s1.dot(s2))
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * eps
        covmean = sqrtm((s1 + offset).dot(s2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            m = np.max(np.abs(covmean.imag))
            raise MvqError(
                f"FID: sqrtm has imaginary component {m:.3g}; expected ~0. Use more images."
            )
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def fid_from_features(f1: np.ndarray | torch.Tensor, f2: np.ndarray | torch.Tensor) -> float:
    """FID between two feature sets (N1, D) and (N2, D)."""
    return frechet_distance(*mean_cov(f1), *mean_cov(f2))


def kid_from_features(
    f1: np.ndarray | torch.Tensor,
    f2: np.ndarray | torch.Tensor,
    num_subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
    seed: int = 0,
) -> tuple[float, float]:
    """KID: unbiased MMD^2 with kernel (gamma x.y + coef0)^degree, gamma = 1/D by default.

    Averaged over ``num_subsets`` random subsets of ``min(subset_size, N1, N2)`` rows each.
    Returns (mean, std).
    """
    a, b = _as_f64(f1), _as_f64(f2)
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise MvqError(f"KID: expected subsets of at least 2 features, found {m}. Use more images.")
    g = 1.0 / a.shape[1] if gamma is None else gamma
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(num_subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx, kyy, kxy = ((p @ q.T * g + coef0) ** degree for p, q in ((x, x), (y, y), (x, y)))
        off = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        values.append(off - 2 * kxy.sum() / m**2)
    v = np.asarray(values)
    return float(v.mean()), float(v.std())


# ----------------------------------------------------------------------------- feature cache
@dataclass
class FeatureStats:
    """Statistics of one feature set: mu (D,), sigma (D, D) float64, n, features (n, D) or None."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int
    features: np.ndarray | None = None

    @classmethod
    def from_features(
        cls, features: np.ndarray | torch.Tensor, keep_features: bool = True
    ) -> "FeatureStats":
        a = _as_f64(features)
        mu, sigma = mean_cov(a)
        return cls(mu, sigma, len(a), a.astype(np.float32) if keep_features else None)

    def fid(self, other: "FeatureStats") -> float:
        return frechet_distance(self.mu, self.sigma, other.mu, other.sigma)

    def save(self, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
        """Write a safetensors file atomically (arrays + string metadata)."""
        arrays = {"mu": self.mu, "sigma": self.sigma, "n": np.asarray([self.n], np.int64)}
        if self.features is not None:
            arrays["features"] = np.ascontiguousarray(self.features)
        meta = {k: str(v) for k, v in (metadata or {}).items()}
        return atomic_write(Path(path), lambda tmp: save_file(arrays, str(tmp), metadata=meta))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FeatureStats":
        d = load_file(str(path))
        return cls(d["mu"], d["sigma"], int(d["n"][0]), d.get("features"))


def default_stats_dir() -> Path:
    """``$MVQ_CACHE_DIR/fid-stats`` or ``~/.cache/mvq/fid-stats``."""
    root = os.environ.get("MVQ_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "mvq")
    return Path(root) / "fid-stats"


@dataclass(frozen=True)
class RealSet:
    """What names a set of real images in the feature cache: the data set (its name and, for
    a folder of images, which folder), the split, the image size and the number of images."""

    dataset: str
    split: str
    image_size: int
    n: int


def stats_cache_path(cache_dir: str | os.PathLike, real: RealSet, extractor_sha256: str) -> Path:
    """File for the cache key (data set, split, image size, N, extractor sha256)."""
    safe = lambda s: re.sub(r"[^A-Za-z0-9_.-]+", "_", str(s))  # noqa: E731
    name = (f"{safe(real.dataset)}-{safe(real.split)}-{int(real.image_size)}px-n{int(real.n)}-"
            f"{extractor_sha256[:16]}")
    return Path(cache_dir) / f"{name}.safetensors"


def cached_feature_stats(
    real: RealSet,
    images: Callable[[], torch.Tensor | Iterable],
    *,
    cache_dir: str | os.PathLike | None = None,
    extractor: nn.Module | None = None,
    batch_size: int = 50,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> FeatureStats:
    """Feature statistics of a real set, computed once and then read from the cache.

    ``images`` is a callable returning the n images (only called on a cache miss).
    """
    if extractor is None:
        extractor = get_inception(device=device or str(pick_device("auto")))
    model = extractor
    sha = getattr(model, "weights_sha256", None)
    if not sha:
        raise MvqError(
            "cached_feature_stats: expected an extractor with `weights_sha256`, found none. "
            "Pass an InceptionFeatureExtractor."
        )
    path = stats_cache_path(cache_dir or default_stats_dir(), real, sha)
    if path.is_file():
        return FeatureStats.load(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise MvqError(f"cannot use {path.parent} as the FID statistics cache: "
                       f"{err.strerror or err}; set MVQ_CACHE_DIR to a writable folder") from None
    # processes missing the same entry at once (two `mvq reproduce` sharing a plan) take turns:
    # the first computes it, the others wait and read it rather than compute it again
    with wait_lock(path.parent / f".{path.name}.lock"):
        if path.is_file():
            return FeatureStats.load(path)
        return _compute_stats(real, images, path, sha, model, batch_size, device, progress)


def _compute_stats(real: RealSet, images: Callable[[], torch.Tensor | Iterable], path: Path,
                   sha: str, model: nn.Module, batch_size: int, device, progress: bool
                   ) -> FeatureStats:
    feats = extract_features(
        images(), batch_size=batch_size, device=device, progress=progress, extractor=model
    )
    if len(feats) != real.n:
        raise MvqError(
            f"cached_feature_stats: expected {real.n} images for {real.dataset}/{real.split}, "
            f"found {len(feats)}. Pass n equal to the number of images."
        )
    stats = FeatureStats.from_features(feats)
    meta = dict(dataclasses.asdict(real), extractor_sha256=sha)
    stats.save(path, meta)
    return stats
