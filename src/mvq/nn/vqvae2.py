"""VQ-VAE-2-style encoders and decoders, sized by the MVQ paper's Table 3.

Table 3 gives, per downsampling factor F, the kernel sizes of the four networks (primary
encoder E, secondary encoder E', decoder D, secondary decoder f), 128 channels, 2 residual
blocks (kernels 3,1; 64 channels) and batch normalisation. It does not give strides or
paddings, so they are planned here from the sizes:

* encoders: a layer halves the map (stride 2, padding 1) while it is larger than the target,
  then keeps it (stride 1, 'same' padding);
* decoders retrace the encoder's sizes in reverse: each layer either keeps the size, or grows
  it to the next size with a transposed convolution that leaves no output position uncovered,
  or, where no such convolution exists for that kernel, with nearest upsampling + convolution.

``plan_encoder``/``plan_decoder`` return the plan, so tests can check every factor's sizes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# F -> kernel sizes of (E, E', D, f), MVQ paper Table 3. "7/8" is one column: F=7 at 28 px,
# 8 at 32/64 px.
TABLE3: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = {
    "7/8": ((4, 3, 3, 3), (4, 3, 3), (3, 3, 4, 4), (2, 2, 4)),
    "14": ((4, 3, 3, 3, 3), (4, 3), (2, 2, 3, 4, 4), (2, 1)),
    "16": ((4, 4, 4, 3, 3), (4, 3, 3), (3, 4, 4, 4, 4), (2, 1)),
    "28": ((4, 4, 4, 4, 3), (4, 3), (1, 2, 3, 4, 4), (2, 1)),
    "32": ((4, 3, 3, 3, 3, 3), (4, 3), (2, 2, 4, 4, 4, 4), (2, 1)),
    "64": ((4, 4, 4, 4, 4, 4), (3, 1), (2, 4, 4, 4, 4, 4), (2, 1)),
}
FACTORS = (7, 8, 14, 16, 28, 32, 64)


def table3_column(factor: int) -> str:
    """Table 3 column for a downsampling factor."""
    key = "7/8" if factor in (7, 8) else str(factor)
    if key not in TABLE3:
        raise ValueError(f"downsampling factor must be one of {FACTORS} (MVQ Table 3), "
                         f"got {factor}")
    return key


@dataclass(frozen=True)
class Layer:
    """One planned layer: kind in {'down', 'same', 'up', 'full', 'resize'}; sizes in/out."""

    kind: str
    kernel: int
    n_in: int
    n_out: int
    stride: int = 1
    padding: int = 0
    output_padding: int = 0


def plan_encoder(kernels: tuple[int, ...], n_in: int, n_out: int) -> list[Layer]:
    """Strides for an encoder taking an n_in map to n_out."""
    layers, n = [], n_in
    for k in kernels:
        if n > n_out:
            m = (n + 2 - k) // 2 + 1
            layers.append(Layer("down", k, n, m, stride=2, padding=1))
            n = m
        else:
            layers.append(Layer("same", k, n, n))
    if n != n_out:
        raise ValueError(f"kernels {kernels} take a {n_in}px map to {n}px, not {n_out}px")
    return layers


def _grow(k: int, n: int, m: int) -> Layer | None:
    """A stride-2 transposed conv n -> m that covers every output position, if one exists."""
    if k < 2:
        return None
    for p in range(0, k):
        for op in range(0, min(2, p + 1)):  # output_padding <= padding: no uncovered last row
            if (n - 1) * 2 - 2 * p + k + op == m:
                return Layer("up", k, n, m, stride=2, padding=p, output_padding=op)
    return None


def plan_decoder(kernels: tuple[int, ...], path: list[int]) -> list[Layer]:
    """Layers that take path[0] to path[-1] through the sizes of ``path`` (increasing).

    The first kernel is a plain convolution (it may grow the map by k-1 with 'full' padding);
    the rest are transposed convolutions or nearest-resize + convolution.
    """
    steps = [m for m in path[1:]]
    layers, n = [], path[0]
    for i, k in enumerate(kernels):
        left_after = len(kernels) - i - 1
        if not steps:
            layers.append(Layer("same", k, n, n))
            continue
        m = steps[0]
        if i == 0:
            cand = Layer("full", k, n, m, padding=k - 1) if n + k - 1 == m else None
        else:
            cand = _grow(k, n, m)
        if cand is None and left_after >= len(steps):
            layers.append(Layer("same", k, n, n))
            continue
        layers.append(cand or Layer("resize", k, n, m))
        n = steps.pop(0)
    if steps:
        raise ValueError(f"kernels {kernels} cannot follow sizes {path}")
    return layers


def size_path(layers: list[Layer]) -> list[int]:
    """Distinct map sizes an encoder plan passes through, in order."""
    sizes = [layers[0].n_in]
    for layer in layers:
        if layer.n_out != sizes[-1]:
            sizes.append(layer.n_out)
    return sizes


def make_norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(32, channels), channels)
    if kind == "layer":  # per-sample statistics over (C, H, W): fine on 1x1 maps
        return nn.GroupNorm(1, channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be batch, group, layer or none, got {kind!r}")


class SameConv2d(nn.Conv2d):
    """A stride-1 convolution whose output has its input's size for an even kernel k: the input
    is zero-padded by (k - 1) // 2 before and k // 2 after on each axis, which is what
    ``padding="same"`` computes (same weights, same numbers) without torch's warning about the
    padded copy it makes for even kernels."""

    def __init__(self, c_in: int, c_out: int, k: int) -> None:
        super().__init__(c_in, c_out, k, padding=0)
        before, after = (k - 1) // 2, k // 2
        self.pads = (before, after, before, after)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, self.pads))


def same_conv(c_in: int, c_out: int, k: int) -> nn.Conv2d:
    """A stride-1 convolution keeping the map's size: symmetric padding for an odd kernel,
    `SameConv2d` for an even one (the state dict's keys are a plain conv's)."""
    if k % 2:
        return nn.Conv2d(c_in, c_out, k, padding=k // 2)
    return SameConv2d(c_in, c_out, k)


def make_conv(layer: Layer, c_in: int, c_out: int) -> nn.Module:
    k = layer.kernel
    if layer.kind == "down":
        return nn.Conv2d(c_in, c_out, k, stride=2, padding=layer.padding)
    if layer.kind == "same":
        return same_conv(c_in, c_out, k)
    if layer.kind == "full":
        return nn.Conv2d(c_in, c_out, k, padding=k - 1)
    if layer.kind == "up":
        return nn.ConvTranspose2d(
            c_in, c_out, k, stride=2, padding=layer.padding, output_padding=layer.output_padding
        )
    if layer.kind == "resize":
        return nn.Sequential(
            nn.Upsample(size=(layer.n_out, layer.n_out), mode="nearest"),
            same_conv(c_in, c_out, k),
        )
    raise ValueError(layer.kind)


class ResBlock(nn.Module):
    """x + BN(conv1x1(ReLU(BN(conv3x3(ReLU(x))))))  (Table 3: kernels 3,1; 64 channels)."""

    def __init__(self, channels: int, hidden: int, norm: str = "batch") -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, hidden, 3, padding=1),
            make_norm(norm, hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, channels, 1),
            make_norm(norm, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Encoder(nn.Module):
    """Convs (ReLU, norm between) -> residual blocks -> ReLU -> 1x1 conv to ``c_out``.

    (B, c_in, n_in, n_in) -> (B, c_out, n_out, n_out).
    """

    def __init__(self, c_in: int, c_out: int, kernels: tuple[int, ...], n_in: int, n_out: int,
                 channels: int = 128, res_blocks: int = 2, res_channels: int = 64,
                 norm: str = "batch") -> None:
        super().__init__()
        self.plan = plan_encoder(kernels, n_in, n_out)
        mods: list[nn.Module] = []
        c = c_in
        for i, layer in enumerate(self.plan):
            mods.append(make_conv(layer, c, channels))
            c = channels
            if i < len(self.plan) - 1:
                mods += [make_norm(norm, channels), nn.ReLU()]
        mods += [ResBlock(channels, res_channels, norm) for _ in range(res_blocks)]
        mods += [nn.ReLU(), nn.Conv2d(channels, c_out, 1)]
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """First conv -> norm -> residual blocks -> transposed convs (LeakyReLU between) -> c_out.

    (B, c_in, path[0], path[0]) -> (B, c_out, path[-1], path[-1]).
    """

    def __init__(self, c_in: int, c_out: int, kernels: tuple[int, ...], path: list[int],
                 channels: int = 128, res_blocks: int = 2, res_channels: int = 64,
                 norm: str = "batch") -> None:
        super().__init__()
        self.plan = plan_decoder(kernels, path)
        first, rest = self.plan[0], self.plan[1:]
        mods: list[nn.Module] = [make_conv(first, c_in, channels), make_norm(norm, channels)]
        mods += [ResBlock(channels, res_channels, norm) for _ in range(res_blocks)]
        mods.append(nn.ReLU())
        for i, layer in enumerate(rest):
            last = i == len(rest) - 1
            mods.append(make_conv(layer, channels, c_out if last else channels))
            if not last:
                mods += [make_norm(norm, channels), nn.LeakyReLU(0.2)]
        if not rest:
            mods.append(nn.Conv2d(channels, c_out, 1))
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@dataclass(frozen=True)
class Geometry:
    """Token grid of a factor at an image size: primary grid side, secondary grid side (1)."""

    factor: int
    image_size: int
    grid: int
    grid2: int = 1

    @property
    def tokens(self) -> int:
        return self.grid * self.grid

    @property
    def tokens2(self) -> int:
        return self.grid2 * self.grid2


def geometry(factor: int, image_size: int) -> Geometry:
    """Primary grid for F at an image size: side = image_size / F (F=7 at 28 px -> 4)."""
    table3_column(factor)
    grid = image_size // factor
    if grid < 1 or abs(image_size / factor - grid) > 1e-9:
        raise ValueError(
            f"factor {factor} does not divide image size {image_size}: pick F from {FACTORS} "
            f"with image_size % F == 0 (e.g. 7/14/28 at 28px, 8/16/32 at 32px)"
        )
    return Geometry(factor, image_size, grid)


@dataclass(frozen=True)
class Widths:
    """The size of every Table 3 network's body: ``hidden`` conv channels, ``res_blocks``
    residual blocks of ``res_channels`` bottleneck channels (the MVQ paper's 128, 2, 64)."""

    hidden: int = 128
    res_blocks: int = 2
    res_channels: int = 64


def build_networks(factor: int, image_size: int, channels: int, dim: int, dim2: int,
                   widths: Widths = Widths(), stem: int = 0,
                   dec_in: int | None = None) -> dict[str, nn.Module]:
    """The four Table 3 networks for F at an image size (five with a stem).

    Returns {'E': (B,C,s,s)->(B,D,g,g), 'E2': (B,D+stem,g,g)->(B,D',1,1),
             'D': (B,dec_in,g,g)->(B,C,s,s), 'f': (B,D',1,1)->(B,D,g,g)}.
    f normalises per sample (GroupNorm with one group): the MH-Dropout search runs it on J
    copies, and BatchNorm statistics must not see those.

    ``stem`` > 0 adds 'S': (B,C,s,s)->(B,stem,g,g), the hierarchical baseline's own path from
    the full-resolution image to the primary grid (VQ-VAE-2: the secondary encoder sees x and the
    primary encoder output; MVQ paper A.6). It uses E's Table 3 kernels at a quarter of E's width
    and no residual blocks, which keeps the baseline within about 10% of MVQ's parameter count
    (tests/test_fairness.py).
    """
    geo = geometry(factor, image_size)
    k_e, k_e2, k_d, k_f = TABLE3[table3_column(factor)]
    hidden, res_blocks, res_channels = widths.hidden, widths.res_blocks, widths.res_channels
    enc = Encoder(channels, dim, k_e, image_size, geo.grid, hidden, res_blocks, res_channels)
    enc2 = Encoder(dim + stem, dim2, k_e2, geo.grid, geo.grid2, hidden, res_blocks, res_channels)
    path = size_path(enc.plan)[::-1]
    dec = Decoder(dec_in or dim, channels, k_d, path, hidden, res_blocks, res_channels)
    path2 = size_path(enc2.plan)[::-1]
    f = Decoder(dim2, dim, k_f, path2, hidden, res_blocks, res_channels, norm="layer")
    nets = {"E": enc, "E2": enc2, "D": dec, "f": f}
    if stem:
        nets["S"] = Encoder(channels, stem, k_e, image_size, geo.grid, max(1, hidden // 4), 0)
    return nets
