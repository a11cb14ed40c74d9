"""MoVQ's spatially conditional normalization and the decoder's initial features F0.

``SpatialNorm`` (MoVQ paper eq. 4): the activation F is group-normalized (no affine of its own)
and then modulated by a scale and a bias computed from the quantized map z_q by two 1x1 convs::

    out = GroupNorm(F) * conv_y(z_q') + conv_b(z_q'),   z_q' = nearest-resize(z_q, F.shape[-2:])

The scale conv's bias starts at 1 (weights at PyTorch's default init), so at initialisation the
layer is close to a plain GroupNorm and the modulation grows from there, as in SPADE/AdaIN's
``(1 + gamma)`` parametrisation. The formula is unchanged: the test sets the convs by hand.

Initial features F0 (paper 3.1 and Fig. 6a), the map the decoder's first conv sees:

- ``"none"``: the VQGAN input, ``post_quant_conv(z_q)`` (1x1 conv).
- ``"fourier"``: Fourier features of z_q, ``[sin(2 pi B z_q), cos(2 pi B z_q)]`` per position,
  B a 1x1 projection initialised N(0, sigma^2) (learnable by default; fixed with
  ``learnable=False``, as in Tancik et al.). Carries the code's identity plus high frequencies:
  the paper's best F0.
- ``"sinusoidal"``: a fixed 2-D sine/cosine position encoding (no content: the codes reach the
  decoder only through SpatialNorm).
- ``"constant"``: a learned (C, h, w) tensor, shared by all images (StyleGAN's constant input).

All F0 modules have the signature ``forward(z_q) -> (B, out_channels, h, w)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

F0_KINDS = ("fourier", "sinusoidal", "constant", "none")


def num_groups_for(channels: int, num_groups: int = 32) -> int:
    """The largest group count <= ``num_groups`` that divides ``channels`` (tiny test nets)."""
    g = max(1, min(num_groups, channels))
    while channels % g:
        g -= 1
    return g


class SpatialNorm(nn.Module):
    """GroupNorm(F) * conv1x1_y(z_q) + conv1x1_b(z_q), z_q resized (nearest) to F's size.

    Args:
        f_channels: channels of the normalized activation F.
        zq_channels: channels of the quantized map z_q (before post_quant_conv).
        num_groups: GroupNorm groups (reduced to a divisor of ``f_channels`` if needed).
    """

    def __init__(self, f_channels: int, zq_channels: int, num_groups: int = 32,
                 eps: float = 1e-6) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(num_groups_for(f_channels, num_groups), f_channels, eps=eps,
                                 affine=False)
        self.conv_y = nn.Conv2d(zq_channels, f_channels, 1)
        self.conv_b = nn.Conv2d(zq_channels, f_channels, 1)
        with torch.no_grad():
            self.conv_y.bias.fill_(1.0)

    def forward(self, f: torch.Tensor, zq: torch.Tensor) -> torch.Tensor:
        if zq is None:
            raise ValueError("SpatialNorm needs the quantized map z_q")
        if zq.shape[-2:] != f.shape[-2:]:
            zq = F.interpolate(zq, size=f.shape[-2:], mode="nearest")
        return self.norm(f) * self.conv_y(zq) + self.conv_b(zq)


class PlainGroupNorm(nn.GroupNorm):
    """GroupNorm with SpatialNorm's call signature (ignores z_q): the baseline VQGAN's norm."""

    def __init__(self, channels: int, num_groups: int = 32, eps: float = 1e-6) -> None:
        super().__init__(num_groups_for(channels, num_groups), channels, eps=eps, affine=True)

    def forward(self, f: torch.Tensor, zq: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(f)


# ----------------------------------------------------------------------------- F0 modules
class ProjectionF0(nn.Module):
    """F0 = conv1x1(z_q): the plain VQGAN decoder input (``post_quant_conv``)."""

    def __init__(self, zq_channels: int, out_channels: int) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.proj = nn.Conv2d(zq_channels, out_channels, 1)

    def forward(self, zq: torch.Tensor) -> torch.Tensor:
        return self.proj(zq)


class FourierF0(nn.Module):
    """F0 = [sin(2 pi B z_q), cos(2 pi B z_q)]: ``2 * num_frequencies`` channels per position."""

    def __init__(self, zq_channels: int, num_frequencies: int = 64, sigma: float = 1.0,
                 learnable: bool = True) -> None:
        super().__init__()
        self.out_channels = 2 * num_frequencies
        weight = torch.randn(num_frequencies, zq_channels, 1, 1) * sigma
        if learnable:
            self.B = nn.Parameter(weight)
        else:
            self.register_buffer("B", weight)

    def forward(self, zq: torch.Tensor) -> torch.Tensor:
        proj = 2 * math.pi * F.conv2d(zq, self.B.to(zq.dtype))
        return torch.cat([proj.sin(), proj.cos()], 1)


def sinusoidal_positions(channels: int, height: int, width: int,
                         base: float = 10000.0) -> torch.Tensor:
    """(channels, height, width) fixed 2-D position code: half the channels encode y, half x,
    each as sin/cos pairs over geometric frequencies (Transformer-style). ``channels % 4 == 0``."""
    if channels % 4:
        raise ValueError(f"sinusoidal F0 needs channels divisible by 4, got {channels}")
    quarter = channels // 4
    freqs = base ** (-torch.arange(quarter, dtype=torch.float64) / max(quarter, 1))

    def encode(n: int) -> torch.Tensor:  # (2*quarter, n)
        angles = freqs[:, None] * torch.arange(n, dtype=torch.float64)[None, :]
        return torch.cat([angles.sin(), angles.cos()], 0)

    ys, xs = encode(height), encode(width)
    pe = torch.cat([ys[:, :, None].expand(-1, height, width),
                    xs[:, None, :].expand(-1, height, width)], 0)
    return pe.float()


class SinusoidalF0(nn.Module):
    """F0 = fixed 2-D sine/cosine positions on the (h, w) latent grid (no content)."""

    def __init__(self, channels: int, height: int, width: int) -> None:
        super().__init__()
        self.out_channels = channels
        self.register_buffer("pe", sinusoidal_positions(channels, height, width), persistent=False)

    def forward(self, zq: torch.Tensor) -> torch.Tensor:
        if zq.shape[-2:] != self.pe.shape[-2:]:
            raise ValueError(f"sinusoidal F0 was built for a {tuple(self.pe.shape[-2:])} grid, "
                             f"got {tuple(zq.shape[-2:])}")
        return self.pe.to(zq.dtype).expand(zq.shape[0], -1, -1, -1)


class ConstantF0(nn.Module):
    """F0 = a learned (C, h, w) tensor, the same for every image."""

    def __init__(self, channels: int, height: int, width: int) -> None:
        super().__init__()
        self.out_channels = channels
        self.const = nn.Parameter(torch.randn(1, channels, height, width))

    def forward(self, zq: torch.Tensor) -> torch.Tensor:
        if zq.shape[-2:] != self.const.shape[-2:]:
            raise ValueError(f"constant F0 was built for a {tuple(self.const.shape[-2:])} grid, "
                             f"got {tuple(zq.shape[-2:])}")
        return self.const.to(zq.dtype).expand(zq.shape[0], -1, -1, -1)


def build_f0(kind: str, zq_channels: int, z_channels: int, grid: tuple[int, int],
             fourier_frequencies: int = 64, fourier_sigma: float = 1.0,
             fourier_learnable: bool = True) -> nn.Module:
    """The F0 module of ``kind`` (see module doc); ``.out_channels`` gives its channel count.

    z_channels: channels of the projection / constant / position code (the VQGAN ``z_channels``).
    grid: (h, w) of the latent map (needed by 'sinusoidal' and 'constant').
    """
    if kind == "none":
        return ProjectionF0(zq_channels, z_channels)
    if kind == "fourier":
        return FourierF0(zq_channels, fourier_frequencies, fourier_sigma, fourier_learnable)
    if kind == "sinusoidal":
        return SinusoidalF0(4 * math.ceil(z_channels / 4), *grid)
    if kind == "constant":
        return ConstantF0(z_channels, *grid)
    raise ValueError(f"f0 must be one of {', '.join(F0_KINDS)}, got {kind!r}")
