"""How much each secondary-code dimension tells about each known factor of the shapes set
(measured, beyond the MVQ paper).

Factors (shape, size, x, y, colour) come with `mvq.data.shapes.Shapes`; the continuous
ones are cut into ``bins`` equal-count bins. A *dimension* is one binary variable of the code:
for MVQ each mask bit (summed over secondary tokens: on in any), for the hierarchical
baseline each secondary id's indicator (the id is one of K/2 entries: one-hot). For every
(dimension, factor): the plug-in mutual information I(dim; factor) divided by H(factor); per
factor the best dimension's share and the MIG-style gap (best - second best) / H(factor).

    mvq analyze --checkpoint runs/shapes_mvqvae/checkpoint --what factors --out runs/shapes_mvqvae

writes ``OUT/factors.json`` (`score_checkpoint`'s record).
"""

from __future__ import annotations

import torch

from mvq.data import canonical_name
from mvq.data.shapes import Shapes
from mvq.errors import MvqError
from mvq.saved.pretrained import load_tokenizer


def entropy(counts: torch.Tensor) -> float:
    """Entropy in nats of a histogram."""
    p = counts.double() / counts.sum()
    p = p[p > 0]
    return float(-(p * p.log()).sum())


def mutual_information(a: torch.Tensor, b: torch.Tensor) -> float:
    """Plug-in I(a; b) in nats of two integer sequences of equal length."""
    joint = torch.zeros(int(a.max()) + 1, int(b.max()) + 1, dtype=torch.float64)
    joint.index_put_((a.long(), b.long()), torch.ones(len(a), dtype=torch.float64),
                     accumulate=True)
    return entropy(joint.sum(1)) + entropy(joint.sum(0)) - entropy(joint.flatten())


def discretize(values: torch.Tensor, bins: int) -> torch.Tensor:
    """Equal-count bins of a continuous factor (N,) -> int ids in [0, bins)."""
    ranks = values.double().argsort().argsort()
    return (ranks * bins // len(values)).long()


def code_dimensions(codes, secondary_codes: int) -> torch.Tensor:
    """(N, dims) 0/1: MVQ mask bits (on at any secondary token), else the one-hot secondary id
    (at any secondary token)."""
    if codes.mask is not None:
        return codes.mask.flatten(1, 2).any(1).long()
    if codes.secondary is None:
        raise MvqError("the codes have no secondary code: expected an hvqvae or mvqvae model")
    ids = codes.secondary.flatten(1)
    return torch.stack([(ids == k).any(1) for k in range(secondary_codes)], 1).long()


def factor_scores(dims: torch.Tensor, factors: dict[str, torch.Tensor]) -> dict:
    """Per factor: normalised MI of every dimension, the best one's share and the gap."""
    out = {}
    for name, f in factors.items():
        h = entropy(torch.bincount(f))
        mi = sorted((mutual_information(dims[:, d], f) / h for d in range(dims.shape[1])),
                    reverse=True)
        second = mi[1] if len(mi) > 1 else 0.0
        out[name] = {"best": mi[0], "gap": mi[0] - second, "mean": sum(mi) / len(mi)}
    return out


def shapes_factors(n: int, size: int, channels: int, bins: int = 8):
    """The first n shapes test images and their discretised factors (colour: mean brightness)."""
    ds = Shapes(split="test", size=size, channels=channels, limit=n)
    f = ds.factors
    factors = {"shape": f["shape"].long()}
    for name in ("size", "x", "y"):
        factors[name] = discretize(f[name], bins)
    factors["color"] = discretize(f["color"].mean(1), bins)
    return ds.stacked()[0], factors


def score_checkpoint(checkpoint: str, n: int = 2000, bins: int = 8) -> dict:
    """The factor scores of the tokenizer in ``checkpoint`` (trained on the shapes set) on the
    first ``n`` shapes test images: {"checkpoint", "model", "n", "dimensions", "scores":
    {factor: {"best", "gap", "mean"}}}."""
    model, cfg, info = load_tokenizer(checkpoint)
    if canonical_name(cfg.data.name) != "shapes":
        raise MvqError(f"{checkpoint} was trained on {cfg.data.name}; the factor scores need a "
                       "model trained on the shapes set (data.name=shapes)")
    x, factors = shapes_factors(n, cfg.model.image_size, cfg.model.channels, bins)
    model.eval()
    with torch.no_grad():
        codes = model.encode(x)
    dims = code_dimensions(codes, model.codebook_sizes[-1])
    return {"checkpoint": checkpoint, "model": info["model_type"], "n": len(x),
            "dimensions": int(dims.shape[1]), "scores": factor_scores(dims, factors)}


if __name__ == "__main__":  # the former mini-CLI: say where it went
    raise SystemExit("python -m mvq.analysis.factors is gone: "
                     "use `mvq analyze --what factors --checkpoint CKPT`")
