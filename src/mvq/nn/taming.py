"""VQGAN-style (taming-transformers) convolutional encoder and decoder.

Layout (``L = len(ch_mult)`` levels, downsampling factor ``2 ** (L - 1)``)::

    Encoder: conv_in -> for each level: num_res_blocks x [ResBlock (+ Attn at attn_resolutions)]
             (+ Downsample except last) -> mid [ResBlock, Attn, ResBlock] -> norm, SiLU, conv_out
    Decoder: F0 -> conv_in -> mid [ResBlock, Attn, ResBlock] -> for each level, lowest
             resolution first: (num_res_blocks + 1) x [ResBlock (+ Attn)] (+ Upsample except
             last) -> norm_out, SiLU, conv_out

Residual blocks are norm -> SiLU -> conv3x3 -> norm -> SiLU -> dropout -> conv3x3 plus a (1x1 when
the width changes) shortcut. Attention is single-head self-attention over the H*W positions.

Decoder norms come from a *norm factory* ``norm(channels, block_index) -> module`` whose modules
are called as ``module(h, zq)``: `SpatialNorm` (MoVQ) or
`PlainGroupNorm` (baseline VQGAN, ignores z_q). Decoder *blocks* are
numbered in the order the data passes them: 0 = mid block, 1..L = the up levels from the lowest
resolution up, L + 1 = the output norm. MoVQ's "first three blocks" = indices 0, 1, 2.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mvq.nn.spatial_norm import PlainGroupNorm, SpatialNorm

NormFactory = Callable[[int, int], nn.Module]  # (channels, block_index) -> norm(h, zq)

SPATIAL_NORM_KINDS = ("none", "first3", "all")


def spatial_blocks(kind: str | int, num_levels: int) -> int:
    """How many leading decoder blocks use SpatialNorm: 'none' 0, 'firstN' N, 'all' every one
    (``num_levels + 2``: mid, the levels, the output norm); an int is taken as is."""
    if isinstance(kind, int) and not isinstance(kind, bool):
        if kind < 0:
            raise ValueError(f"spatial_norm blocks must be >= 0, got {kind}")
        return kind
    if kind == "none":
        return 0
    if kind == "all":
        return num_levels + 2
    if isinstance(kind, str) and kind.startswith("first") and kind[5:].isdigit():
        return int(kind[5:])
    raise ValueError(f"spatial_norm must be one of {', '.join(SPATIAL_NORM_KINDS)} "
                     f"(or 'firstN'), got {kind!r}")


def decoder_norm_factory(num_spatial_blocks: int, zq_channels: int | None,
                         num_groups: int = 32) -> NormFactory:
    """SpatialNorm in decoder blocks ``< num_spatial_blocks``, PlainGroupNorm elsewhere."""
    if num_spatial_blocks > 0 and not zq_channels:
        raise ValueError("SpatialNorm blocks need zq_channels")

    def make(channels: int, block_index: int) -> nn.Module:
        if block_index < num_spatial_blocks:
            return SpatialNorm(channels, zq_channels, num_groups)
        return PlainGroupNorm(channels, num_groups)

    return make


def plain_norm_factory(num_groups: int = 32) -> NormFactory:
    return lambda channels, block_index: PlainGroupNorm(channels, num_groups)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, make_norm: Callable[[int], nn.Module],
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1, self.conv1 = make_norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2, self.conv2 = make_norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, zq: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x, zq)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h, zq))))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """x + proj(softmax(q k^T / sqrt(C)) v), q, k, v 1x1 convs of norm(x), one head."""

    def __init__(self, channels: int, make_norm: Callable[[int], nn.Module]) -> None:
        super().__init__()
        self.norm = make_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, zq: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x, zq)).reshape(b, 3, c, h * w).transpose(2, 3).unbind(1)
        out = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        return x + self.proj(out.transpose(1, 2).reshape(b, c, h, w))


class Downsample(nn.Module):
    """3x3 stride-2 conv with (right, bottom) zero padding: s -> s / 2."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest x2 then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _check_resolution(resolution: int, ch_mult: tuple[int, ...]) -> int:
    factor = 2 ** (len(ch_mult) - 1)
    if not ch_mult or resolution % factor:
        raise ValueError(f"image size {resolution} is not divisible by the downsampling factor "
                         f"{factor} of ch_mult={tuple(ch_mult)}")
    return resolution // factor


class Level(nn.Module):
    """One resolution level: blocks (ResBlock, optional AttnBlock) and an optional resampler."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList()
        self.attns = nn.ModuleList()
        self.resample: nn.Module = nn.Identity()

    def forward(self, h: torch.Tensor, zq: torch.Tensor | None = None) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            h = block(h, zq)
            if len(self.attns):
                h = self.attns[i](h, zq)
        return self.resample(h)


class Encoder(nn.Module):
    """(B, in_channels, s, s) -> (B, z_channels, s / 2^(L-1), s / 2^(L-1))."""

    def __init__(self, in_channels: int = 3, ch: int = 128,
                 ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4),
                 num_res_blocks: int = 2, attn_resolutions: tuple[int, ...] = (16,),
                 resolution: int = 256, z_channels: int = 256, dropout: float = 0.0,
                 num_groups: int = 32) -> None:
        super().__init__()
        self.latent_size = _check_resolution(resolution, ch_mult)

        def norm(c):
            return PlainGroupNorm(c, num_groups)

        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.levels = nn.ModuleList()
        res, c_in = resolution, ch
        for i, mult in enumerate(ch_mult):
            level, c_out = Level(), ch * mult
            for _ in range(num_res_blocks):
                level.blocks.append(ResBlock(c_in, c_out, norm, dropout))
                if res in attn_resolutions:
                    level.attns.append(AttnBlock(c_out, norm))
                c_in = c_out
            if i < len(ch_mult) - 1:
                level.resample = Downsample(c_in)
                res //= 2
            self.levels.append(level)
        self.mid1 = ResBlock(c_in, c_in, norm, dropout)
        self.mid_attn = AttnBlock(c_in, norm)
        self.mid2 = ResBlock(c_in, c_in, norm, dropout)
        self.norm_out = norm(c_in)
        self.conv_out = nn.Conv2d(c_in, z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.levels:
            h = level(h)
        h = self.mid2(self.mid_attn(self.mid1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """(F0 (B, in_channels, h, w), z_q) -> (B, out_channels, h * 2^(L-1), w * 2^(L-1)).

    norm: norm factory (see module doc); default plain GroupNorm everywhere (baseline VQGAN).
    """

    def __init__(self, in_channels: int, out_channels: int = 3, ch: int = 128,
                 ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4), num_res_blocks: int = 2,
                 attn_resolutions: tuple[int, ...] = (16,), resolution: int = 256,
                 dropout: float = 0.0, norm: NormFactory | None = None,
                 num_groups: int = 32) -> None:
        super().__init__()
        norm = norm or plain_norm_factory(num_groups)
        res = _check_resolution(resolution, ch_mult)
        c_in = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(in_channels, c_in, 3, padding=1)

        def mid(c):
            return norm(c, 0)

        self.mid1 = ResBlock(c_in, c_in, mid, dropout)
        self.mid_attn = AttnBlock(c_in, mid)
        self.mid2 = ResBlock(c_in, c_in, mid, dropout)
        self.levels = nn.ModuleList()  # lowest resolution first
        for j, i in enumerate(reversed(range(len(ch_mult)))):
            level, c_out = Level(), ch * ch_mult[i]

            def block_norm(c, idx=j + 1):
                return norm(c, idx)

            for _ in range(num_res_blocks + 1):
                level.blocks.append(ResBlock(c_in, c_out, block_norm, dropout))
                if res in attn_resolutions:
                    level.attns.append(AttnBlock(c_out, block_norm))
                c_in = c_out
            if i > 0:
                level.resample = Upsample(c_in)
                res *= 2
            self.levels.append(level)
        self.norm_out = norm(c_in, len(ch_mult) + 1)
        self.conv_out = nn.Conv2d(c_in, out_channels, 3, padding=1)

    @property
    def last_layer(self) -> torch.Tensor:
        """Weight of the output conv (for VQGAN's adaptive generator weight)."""
        return self.conv_out.weight

    def forward(self, f0: torch.Tensor, zq: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv_in(f0)
        h = self.mid2(self.mid_attn(self.mid1(h, zq), zq), zq)
        for level in self.levels:
            h = level(h, zq)
        return self.conv_out(F.silu(self.norm_out(h, zq)))
