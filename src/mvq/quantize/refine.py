"""Inference-time mask refinement (beyond the MVQ paper).

The bank search of `MaskedVectorQuantize` picks each secondary token's
mask m* among J_eval fixed masks. Refinement starts from m* and does greedy coordinate descent
on the mask bits: every round it tries each single-bit flip, keeps the one that lowers

    d(m) = || e + f(e' * m) - y ||^2     (the distance the bank search minimises, eq. 6)

the most, and stops when no flip lowers d. d never rises, so a refined code is never further
from the encoder output than the bank's. The mask is then free, not a bank index: it carries
D' bits per secondary token (``MVQVAE.mask_bits`` counts them when ``refine`` is on).
"""

from __future__ import annotations

import torch

from mvq.quantize.masked import MaskedVectorQuantize


def _distances(mvq: MaskedVectorQuantize, e2: torch.Tensor, target: torch.Tensor,
               masks: torch.Tensor) -> torch.Tensor:
    """masks (B, N, D', H', W') -> (B, N) squared distances || f(e' * m) - (y - e) ||^2."""
    b, n = masks.shape[:2]
    out = []
    for start in range(0, n, mvq.chunk_size):
        m = masks[:, start : start + mvq.chunk_size]
        c = (e2.unsqueeze(1) * m.to(e2.dtype)).flatten(0, 1)
        f = mvq.run_f(c).to(target.dtype).view(b, m.shape[1], *target.shape[1:])
        out.append((f - target.unsqueeze(1)).pow(2).flatten(2).sum(2))
    return torch.cat(out, 1)


@torch.no_grad()
def refine_masks(mvq: MaskedVectorQuantize, e: torch.Tensor, e2: torch.Tensor, y: torch.Tensor,
                 mask: torch.Tensor, max_rounds: int | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Greedy single-bit descent from ``mask``.

    e, y: (B, D, H, W); e2: (B, D', H', W'); mask: (B, D', H', W') bool (the bank's winner).
    max_rounds: at most this many accepted flips per image (default: every bit once, D'H'W').
    Returns (refined mask (B, D', H', W') bool, distance before (B,), distance after (B,)).
    """
    dtype = torch.promote_types(y.dtype, torch.float32)
    target = (y - e).to(dtype)
    mask = mask.clone().bool()
    b, bits = mask.shape[0], mask[0].numel()
    flips = torch.eye(bits, dtype=torch.bool, device=mask.device).view(bits, *mask.shape[1:])
    start = _distances(mvq, e2, target, mask.unsqueeze(1))[:, 0]
    best = start.clone()
    active = torch.ones(b, dtype=torch.bool, device=mask.device)
    for _ in range(bits if max_rounds is None else max_rounds):
        idx = active.nonzero().flatten()
        if len(idx) == 0:
            break
        cand = mask[idx].unsqueeze(1) ^ flips.unsqueeze(0)  # (b', bits, D', H', W')
        d = _distances(mvq, e2[idx], target[idx], cand)
        d_min, j = d.min(1)
        better = d_min < best[idx]
        won = idx[better]
        mask[won] = cand[better, j[better]]
        best[won] = d_min[better]
        active[idx[~better]] = False
    return mask, start, best
