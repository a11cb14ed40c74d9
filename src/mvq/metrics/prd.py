"""Precision and recall for distributions (PRD), Sajjadi et al. 2018, "Assessing Generative Models
via Precision and Recall" (NeurIPS), and the F_beta summary (F_8, F_1/8).

Procedure (as the paper's reference code): cluster the union of real and generated features with
k-means (20 clusters), take each set's normalised cluster histogram, compute the PRD curve over
``num_angles`` slopes lambda = tan(angle), average the curves over ``num_runs`` clusterings, and
report max F_beta and max F_{1/beta} along the curve. F_8 weighs recall (coverage of the real
distribution), F_1/8 weighs precision (sample quality). The clustering is scikit-learn's
MiniBatchKMeans, as in the reference code (seeded here, so a result repeats exactly);
tests/test_metrics.py checks the scores against a re-implementation of the reference procedure.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from mvq.errors import MvqError
from mvq.runtime.extras import missing


def cluster_histograms(
    real: torch.Tensor, fake: torch.Tensor, num_clusters: int = 20, seed: int = 0,
    n_init: int = 10,
) -> tuple[np.ndarray, np.ndarray]:
    """Cluster the union with mini-batch k-means (scikit-learn's ``MiniBatchKMeans``, as the
    reference code does, ``n_init`` = 10 there too); return (real_hist, fake_hist), each
    (num_clusters,) summing to 1."""
    try:
        from sklearn.cluster import MiniBatchKMeans
    except ImportError:  # an optional dependency
        raise missing("scikit-learn", "metrics") from None

    # generated rows first, as the reference stacks them (mini-batch k-means sees rows in order)
    data = torch.cat([fake, real]).detach().cpu().double().numpy()
    if not np.isfinite(data).all():
        raise MvqError("PRD: expected finite features, found NaN or infinite entries; clean "
                       "the input.")
    if len(data) < num_clusters:
        raise MvqError(f"PRD: expected at least {num_clusters} features for {num_clusters} "
                       f"clusters, found {len(data)}. Use more images.")
    labels = MiniBatchKMeans(n_clusters=num_clusters, n_init=n_init, random_state=seed).fit(
        data).labels_
    lf, lr = labels[: len(fake)], labels[len(fake):]

    def hist(lab: np.ndarray) -> np.ndarray:
        return np.bincount(lab, minlength=num_clusters).astype(np.float64) / len(lab)

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
    n_init: int = 10,
) -> tuple[np.ndarray, np.ndarray]:
    """PRD curve (precision, recall), each (num_angles,), averaged over ``num_runs`` clusterings.

    real: (N, D) reference features; fake: (M, D) generated features (N == M unless
    ``enforce_balance=False``; the paper warns that unbalanced sets bias the curve).
    """
    r, f = (t.detach().float() if isinstance(t, torch.Tensor) else
            torch.from_numpy(np.asarray(t, np.float32)) for t in (real, fake))
    if r.ndim != 2 or f.ndim != 2 or r.shape[1] != f.shape[1]:
        raise MvqError(
            f"PRD: expected features (N, D) and (M, D), found {tuple(r.shape)} and "
            f"{tuple(f.shape)}."
        )
    if not (bool(torch.isfinite(r).all()) and bool(torch.isfinite(f).all())):
        raise MvqError("PRD: expected finite features, found NaN or infinite entries (images "
                       "with NaN pixels?); clean the input.")
    if enforce_balance and len(r) != len(f):
        raise MvqError(
            f"PRD: expected as many generated as real features, found {len(f)} vs {len(r)}. "
            "Use equal counts or pass enforce_balance=False."
        )
    curves = []
    for run in range(num_runs):
        hists = cluster_histograms(r, f, num_clusters, seed=seed + run, n_init=n_init)
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
