"""Codebook statistics: usage, perplexity and the bit cost of a discrete code."""

from __future__ import annotations

import math
from typing import Iterable

import torch

from mvq.errors import MvqError


def code_counts(indices: torch.Tensor, num_codes: int) -> torch.Tensor:
    """Occurrences of each code: indices (any shape, integer in [0, K)) -> counts (K,) int64."""
    idx = torch.as_tensor(indices)
    if idx.is_floating_point() or idx.is_complex():
        raise MvqError(
            f"codebook stats: expected integer indices, found dtype {idx.dtype}. Pass code ids."
        )
    idx = idx.flatten().long()
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= num_codes):
        raise MvqError(
            f"codebook stats: expected indices in [0, {num_codes}), found [{int(idx.min())}, "
            f"{int(idx.max())}]. Check the codebook size K."
        )
    return torch.bincount(idx, minlength=num_codes)


def usage(indices: torch.Tensor, num_codes: int) -> float:
    """Fraction of the K codes that occur at least once (0..1)."""
    return float((code_counts(indices, num_codes) > 0).sum()) / num_codes


def perplexity(indices: torch.Tensor, num_codes: int) -> float:
    """exp(entropy) of the code frequencies (natural log): 1 (one code) .. K (uniform)."""
    counts = code_counts(indices, num_codes).double()
    if counts.sum() == 0:
        raise MvqError("perplexity: expected at least one index, found none.")
    p = counts[counts > 0] / counts.sum()
    return float(torch.exp(-(p * p.log()).sum()))


def bits_per_image(
    token_counts_and_codebook_sizes: Iterable[tuple[int, int]], mask_bits: float = 0
) -> float:
    """Bits to store one image's code: sum over groups of n_tokens * log2(K), plus ``mask_bits``.

    E.g. MVQ with S primary and S' secondary tokens, K/2 entries each, whose masks come from a
    bank of J_eval masks: ``bits_per_image([(S, K // 2), (S2, K // 2)], mask_bits=S2 *
    log2(J_eval))`` (S2 * D' where masks are chosen freely).
    """
    total = 0.0
    for n_tokens, k in token_counts_and_codebook_sizes:
        if n_tokens < 0 or k < 1:
            raise MvqError(
                f"bits_per_image: expected n_tokens >= 0 and K >= 1, found ({n_tokens}, {k})."
            )
        total += n_tokens * math.log2(k)
    if mask_bits < 0:
        raise MvqError(f"bits_per_image: expected mask_bits >= 0, found {mask_bits}.")
    return total + mask_bits
