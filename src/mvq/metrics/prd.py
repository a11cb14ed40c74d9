"""Precision and recall for distributions (PRD), Sajjadi et al. 2018, "Assessing Generative Models
via Precision and Recall" (NeurIPS), and the F_beta summary (F_8, F_1/8).

Procedure (as the paper's reference code): cluster the union of real and generated features with
k-means (20 clusters), take each set's normalised cluster histogram, compute the PRD curve over
``num_angles`` slopes lambda = tan(angle), average the curves over ``num_runs`` clusterings, and
report max F_beta and max F_{1/beta} along the curve. F_8 weighs recall (coverage of the real
distribution), F_1/8 weighs precision (sample quality). k-means is our own (seeded, k-means++).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from mvq.errors import MvqError


def kmeans(
    x: torch.Tensor, k: int, n_init: int = 3, max_iter: int = 50, tol: float = 1e-4, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means with k-means++ seeding; best of ``n_init`` by inertia.

    x: (N, D) float. Returns labels (N,) int64 and centers (k, D).
    """
    x = x.float()
    n = x.shape[0]
    if n < k:
        raise MvqError(
            f"k-means: expected at least {k} points for {k} clusters, found {n}. "
            "Use fewer clusters or more features."
        )
    gen = torch.Generator(device="cpu").manual_seed(seed)
    sq = x.pow(2).sum(1)
    scale = float(sq.mean()) + 1e-12

    def dist(c: torch.Tensor) -> torch.Tensor:  # (N, k) squared distances, clamped at 0
        return (sq[:, None] - 2 * x @ c.T + c.pow(2).sum(1)[None]).clamp_min(0)

    best: tuple[float, torch.Tensor, torch.Tensor] | None = None
    for _ in range(n_init):
        centers = x[torch.randint(n, (1,), generator=gen).to(x.device)]
        closest = dist(centers)[:, 0]
        for _ in range(1, k):  # k-means++: sample proportional to squared distance
            total = float(closest.sum())
            p = closest.cpu() / total if total > 0 else torch.full((n,), 1.0 / n)
            idx = torch.multinomial(p, 1, generator=gen).to(x.device)
            centers = torch.cat([centers, x[idx]])
            closest = torch.minimum(closest, dist(x[idx])[:, 0])
        for _ in range(max_iter):
            d = dist(centers)
            labels = d.argmin(1)
            new = torch.zeros_like(centers).index_add_(0, labels, x)
            counts = torch.bincount(labels, minlength=k)
            new = new / counts.clamp_min(1)[:, None].to(x.dtype)
            empty = (counts == 0).nonzero().flatten()
            if len(empty):  # re-seed empty clusters at the worst-fitted points
                far = d.gather(1, labels[:, None])[:, 0].topk(len(empty)).indices
                new[empty] = x[far]
            shift = float((new - centers).pow(2).sum(1).max())
            centers = new
            if shift <= tol * scale:
                break
        d = dist(centers)
        labels = d.argmin(1)
        inertia = float(d.gather(1, labels[:, None]).sum())
        if best is None or inertia < best[0]:
            best = (inertia, labels, centers)
    assert best is not None
    return best[1], best[2]


def cluster_histograms(
    real: torch.Tensor, fake: torch.Tensor, num_clusters: int = 20, seed: int = 0, **kmeans_kw: int
) -> tuple[np.ndarray, np.ndarray]:
    """Cluster the union; return (real_hist, fake_hist), each (num_clusters,) summing to 1."""
    labels, _ = kmeans(torch.cat([real, fake]), num_clusters, seed=seed, **kmeans_kw)
    lr, lf = labels[: len(real)], labels[len(real):]

    def hist(lab: torch.Tensor) -> np.ndarray:
        return (torch.bincount(lab, minlength=num_clusters).double() / len(lab)).cpu().numpy()

    return hist(lr), hist(lf)


def prd_curve(
    real_hist: np.ndarray, fake_hist: np.ndarray, num_angles: int = 1001, epsilon: float = 1e-10
) -> tuple[np.ndarray, np.ndarray]:
    """PRD curve of a generated distribution Q (``fake_hist``) w.r.t. a reference P (``real_hist``).

    For slopes lambda = tan(angle), angle in linspace(eps, pi/2 - eps, num_angles):
    precision(lambda) = sum_i min(lambda P_i, Q_i), recall(lambda) = precision(lambda) / lambda,
    both clipped to [0, 1]. Returns (precision, recall), each (num_angles,).
    """
    p, q = np.asarray(real_hist, np.float64), np.asarray(fake_hist, np.float64)
    if p.shape != q.shape or p.ndim != 1:
        raise MvqError(
            f"PRD: expected two histograms of one length, found {p.shape} and {q.shape}."
        )
    if not (np.isclose(p.sum(), 1) and np.isclose(q.sum(), 1)) or (p < 0).any() or (q < 0).any():
        raise MvqError("PRD: expected non-negative histograms summing to 1. Normalise them first.")
    if not (3 <= num_angles <= 1e6) or not (0 < epsilon < 0.1):
        raise MvqError(
            f"PRD: expected 3 <= num_angles and 0 < epsilon < 0.1, found {num_angles}, {epsilon}."
        )
    slopes = np.tan(np.linspace(epsilon, math.pi / 2 - epsilon, num_angles))
    precision = np.minimum(p[None, :] * slopes[:, None], q[None, :]).sum(axis=1)
    recall = precision / slopes
    return np.clip(precision, 0, 1), np.clip(recall, 0, 1)


def prd_from_features(
    real: np.ndarray | torch.Tensor,
    fake: np.ndarray | torch.Tensor,
    num_clusters: int = 20,
    num_angles: int = 1001,
    num_runs: int = 10,
    enforce_balance: bool = True,
    seed: int = 0,
    **kmeans_kw: int,
) -> tuple[np.ndarray, np.ndarray]:
    """PRD curve (precision, recall), each (num_angles,), averaged over ``num_runs`` clusterings.

    real: (N, D) reference features; fake: (M, D) generated features (N == M unless
    ``enforce_balance=False``; the paper warns that unbalanced sets bias the curve).
    """
    # torch tensors stay on their device (k-means runs there); arrays become CPU tensors
    r, f = (t.detach().float() if isinstance(t, torch.Tensor) else
            torch.from_numpy(np.asarray(t, np.float32)) for t in (real, fake))
    if r.ndim != 2 or f.ndim != 2 or r.shape[1] != f.shape[1]:
        raise MvqError(
            f"PRD: expected features (N, D) and (M, D), found {tuple(r.shape)} and "
            f"{tuple(f.shape)}."
        )
    if enforce_balance and len(r) != len(f):
        raise MvqError(
            f"PRD: expected as many generated as real features, found {len(f)} vs {len(r)}. "
            "Use equal counts or pass enforce_balance=False."
        )
    curves = []
    for run in range(num_runs):
        hists = cluster_histograms(r, f, num_clusters, seed=seed + run, **kmeans_kw)
        curves.append(prd_curve(*hists, num_angles=num_angles))
    return np.mean([c[0] for c in curves], axis=0), np.mean([c[1] for c in curves], axis=0)


def f_beta(
    precision: np.ndarray, recall: np.ndarray, beta: float, epsilon: float = 1e-10
) -> np.ndarray:
    """Pointwise F_beta = (1 + beta^2) p r / (beta^2 p + r)."""
    p, r = np.asarray(precision, np.float64), np.asarray(recall, np.float64)
    return (1 + beta**2) * p * r / (beta**2 * p + r + epsilon)


def max_f_beta_pair(
    precision: np.ndarray, recall: np.ndarray, beta: float = 8.0
) -> tuple[float, float]:
    """(max F_beta, max F_{1/beta}) along a PRD curve: (F_8, F_1/8) by default."""
    high = f_beta(precision, recall, beta).max()
    low = f_beta(precision, recall, 1.0 / beta).max()
    return float(high), float(low)


def prd_f_scores(
    real: np.ndarray | torch.Tensor,
    fake: np.ndarray | torch.Tensor,
    beta: float = 8.0,
    num_clusters: int = 20,
    num_angles: int = 1001,
    num_runs: int = 10,
    seed: int = 0,
    **kw: int,
) -> tuple[float, float]:
    """(F_8, F_1/8) of generated features ``fake`` against real features ``real``."""
    precision, recall = prd_from_features(
        real, fake, num_clusters, num_angles, num_runs, seed=seed, **kw
    )
    return max_f_beta_pair(precision, recall, beta)
