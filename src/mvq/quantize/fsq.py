"""Finite scalar quantization (FSQ; Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE
Made Simple") as a drop-in layer with mvq's contract: ``quantized, indices, loss = fsq(x)``.

Each of the d = len(levels) channels is squashed into a bounded interval, rounded to one of
its L levels with a straight-through gradient and scaled into [-1, 1]; the implicit codebook is
the grid of all prod(levels) level combinations, so there is no codebook to learn and no
auxiliary loss.

The bound (the paper's Appendix A.1): with h = (L - 1)(1 + eps) / 2 and an offset o = 1/2 for
even L (0 for odd L), ``bounded = tanh(z + atanh(o / h)) * h - o``; rounding then gives the
integers -L//2 .. L//2 (even L: -L/2 .. L/2 - 1), divided by L//2. The shift atanh(o / h) maps
z = 0 to 0 for even L too. The paper's listing writes (1 - eps) and tan where this has
(1 + eps) and atanh (the exact inverse of tanh); vector-quantize-pytorch 1.32, the test
reference, uses (1 + eps) and atanh, and so does this layer (the two forms agree except within
about 1e-3 of a rounding boundary; every level is reachable in both). A level of 2 is refused:
under this bound its lower level needs z < -3.8, so it is practically constant.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mvq.errors import MvqError
from mvq.quantize.arguments import (
    check_bool,
    check_int,
    check_projections,
    from_tokens,
    linear,
    refuse_unknown,
    tokens_of,
)
from mvq.quantize.layout import check_ids, check_input

EPS = 1e-3
# vector-quantize-pytorch's FSQ arguments that this layer does not take, and what to do instead
_RENAMED = {
    "num_codebooks": "mvq's FSQ has one codebook; split the channels over several FSQ layers",
    "keep_num_codebooks_dim": "mvq's FSQ has one codebook (indices are (B, N))",
    "force_quantization_f32": "mvq's FSQ always quantizes in fp32 (float64 stays float64)",
    "allowed_dtypes": "mvq's FSQ always quantizes in fp32 (float64 stays float64)",
    "return_indices": "mvq's FSQ always returns indices",
    "projection_has_bias": "mvq's projections always have a bias",
    "preserve_symmetry": "not supported; use levels >= 3 with the paper's bound",
    "noise_dropout": "not supported",
    "scale": "not supported",
    "bound_hard_clamp": "not supported",
    "orthogonal_rotation": "not supported",
    "accept_image_fmap": "pass channel_first=True for (B, D, H, W) maps",
}


def _round_ste(z: torch.Tensor) -> torch.Tensor:
    """round(z) in the forward value (exactly), identity gradient."""
    return z.round() + (z - z.detach())


class FSQ(nn.Module):
    """Finite scalar quantization: ``quantized, indices, loss = fsq(x)``.

    x ``(B, N, D)`` (or ``(B, D, H, W)`` with ``channel_first``); quantized has x's shape and
    dtype, indices ``(B, N)`` (``(B, H, W)``) int64 mixed-radix codes (the first channel is the
    least significant digit: ``index = sum_i level_i * prod(levels[:i])``), loss a zero scalar
    (FSQ has no auxiliary loss). The maths runs in fp32 (float64 stays float64) whatever
    autocast says.

    Args:
        levels: levels per channel, each >= 3 (the paper's choices: [8, 5, 5, 5] for 2^10
            codes, [8, 8, 8, 5, 5, 5] for 2^16).
        dim: the input's vector size D; when it differs from len(levels) a linear projection
            maps D to len(levels) before quantizing and back after (default len(levels)).
        channel_first: inputs are ``(B, D, ...)`` feature maps.

    Attributes:
        codebook_size: prod(levels).
        bits_per_token: sum(log2 levels).
    """

    def __init__(self, levels: list[int] | tuple[int, ...] = (8, 5, 5, 5), dim: int | None = None,
                 *, channel_first: bool = False, **unknown: object) -> None:
        super().__init__()
        refuse_unknown("FSQ", unknown, _RENAMED, "levels, dim, channel_first")
        if not isinstance(levels, (list, tuple)) or not levels:
            raise MvqError(f"FSQ: levels must be a non-empty list of integers >= 3, found "
                           f"{levels!r}; e.g. levels=[8, 5, 5, 5]")
        for level in levels:
            check_int("FSQ", "each of levels", level, 3, "levels=[8, 5, 5, 5] (a level of 2 is "
                      "practically constant under FSQ's bound)")
        self.levels = tuple(levels)
        self.codebook_dim = len(levels)
        self.dim = self.codebook_dim if dim is None else check_int("FSQ", "dim", dim, 1, "dim=64")
        check_projections("FSQ", self.dim, self.codebook_dim)
        self.channel_first = check_bool("FSQ", "channel_first", channel_first)
        self.codebook_size = math.prod(self.levels)
        if self.codebook_size > 2 ** 62:
            raise MvqError(f"FSQ: prod(levels) = {self.codebook_size} codes do not fit int64 ids; "
                           f"use fewer or smaller levels, e.g. levels=[8, 8, 8, 5, 5, 5]")
        self.bits_per_token = sum(math.log2(level) for level in self.levels)
        self.has_projections = self.dim != self.codebook_dim
        self.project_in = (nn.Linear(self.dim, self.codebook_dim) if self.has_projections
                           else nn.Identity())
        self.project_out = (nn.Linear(self.codebook_dim, self.dim) if self.has_projections
                            else nn.Identity())
        basis = [1]
        for level in self.levels[:-1]:
            basis.append(basis[-1] * level)
        self.register_buffer("_levels", torch.tensor(self.levels, dtype=torch.int64),
                             persistent=False)
        self.register_buffer("_basis", torch.tensor(basis, dtype=torch.int64), persistent=False)

    def bound(self, z: torch.Tensor) -> torch.Tensor:
        """Each channel of z ``(..., d)`` squashed into its levels' range (before rounding)."""
        levels = self._levels.to(z.dtype)
        half = (levels - 1) * (1 + EPS) / 2
        offset = torch.where(self._levels % 2 == 0, 0.5, 0.0).to(z.dtype)
        return torch.tanh(z + torch.atanh(offset / half)) * half - offset

    def codes_to_indices(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``(..., d)`` in [-1, 1] to their mixed-radix ids ``(...)``."""
        half_width = self._levels // 2
        digits = (codes.detach() * half_width + half_width).round().long()
        return (digits * self._basis).sum(-1)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Ids ``(...)`` to codes ``(..., d)`` in [-1, 1] (fp32), before ``project_out``."""
        half_width = self._levels // 2
        digits = (indices[..., None] // self._basis) % self._levels
        return ((digits - half_width) / half_width).float()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = check_input(x, self.dim, self.channel_first, "FSQ")
        with torch.autocast(device_type=x.device.type, enabled=False):
            rows, grid = tokens_of(x, self.channel_first)
            z = linear(self.project_in, rows)
            codes = _round_ste(self.bound(z)) / (self._levels // 2).to(z.dtype)
            indices = self.codes_to_indices(codes)
            out = linear(self.project_out, codes)
            loss = torch.zeros((), device=x.device)
        return (from_tokens(out, x.shape[0], grid, self.channel_first).to(x.dtype),
                indices.reshape(x.shape[0], *grid), loss)

    def get_output_from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Vectors (after ``project_out``) for ids ``(B, *grid)``, in the layer's layout."""
        check_ids(indices, "indices")
        if indices.dim() < 1:
            raise MvqError(f"indices must be (B, *grid), found shape {tuple(indices.shape)}")
        if indices.numel() and (indices.min() < 0 or indices.max() >= self.codebook_size):
            raise MvqError(f"FSQ code ids must lie in [0, {self.codebook_size}), found "
                           f"[{int(indices.min())}, {int(indices.max())}]")
        with torch.autocast(device_type=indices.device.type, enabled=False):
            codes = linear(self.project_out, self.indices_to_codes(indices.reshape(-1)))
        return from_tokens(codes, indices.shape[0], tuple(indices.shape[1:]), self.channel_first)

    def extra_repr(self) -> str:
        return f"levels={list(self.levels)}, dim={self.dim}, codebook_size={self.codebook_size}"
