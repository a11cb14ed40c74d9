"""Gated PixelCNN over a token grid (van den Oord et al. 2016, "Conditional Image Generation
with PixelCNN Decoders"), the prior family VQ-VAE(-2) uses.

Two stacks keep raster-order causality without a blind spot:
- the vertical stack at (i, j) sees rows <= i (a (k//2+1) x k kernel over rows above and the
  current row); it reaches the horizontal stack only after a one-row shift down, so what flows
  into position (i, j) comes from rows < i;
- the horizontal stack at (i, j) sees columns <= j of row i; in the first layer ("mask A") the
  current column is removed and there is no residual, so a position never sees its own token.
Each unit is gated: tanh(a) * sigmoid(b), a class embedding adding a bias to both halves.
A spatial condition (B, C, H, W) (VQ-VAE-2's bottom prior sees the top codes) is added the same
way through a 1x1 conv; it depends on no id of this grid, so causality is untouched.

`PixelCNNPrior` puts it behind the prior interface (mvq.priors.base): one PixelCNN over the
primary grid and, for two-level codes, a second one over the secondary grid conditioned on the
whole primary grid (VQ-VAE-2's top and bottom priors; `PrimaryContext`). MVQ mask bits are
drawn at random, as the GPT prior does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mvq.errors import MvqError
from mvq.priors.base import Prior, codebook_sizes
from mvq.priors.gpt import sample_logits
from mvq.runtime.modes import eval_mode
from mvq.values.codes import Codes
from mvq.values.decoding import Draw


class GatedLayer(nn.Module):
    """One gated layer: (v, h) (B, C, H, W) each -> (v, h)."""

    def __init__(self, channels: int, kernel: int, first: bool, num_classes: int,
                 spatial: bool = False) -> None:
        super().__init__()
        self.p, self.first = kernel // 2, first
        c2 = 2 * channels
        self.v_conv = nn.Conv2d(channels, c2, (self.p + 1, kernel))
        self.h_conv = nn.Conv2d(channels, c2, (1, self.p + 1))
        self.v_to_h = nn.Conv2d(c2, c2, 1)
        self.h_out = nn.Conv2d(channels, channels, 1)
        self.cls = nn.Embedding(num_classes, c2) if num_classes else None
        self.spatial = nn.Conv2d(channels, c2, 1) if spatial else None
        if first:  # mask A: the horizontal kernel's last column is the current position
            mask = torch.ones_like(self.h_conv.weight)
            mask[..., -1] = 0
            self.register_buffer("h_mask", mask, persistent=False)

    @staticmethod
    def _gate(x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        return torch.tanh(a) * torch.sigmoid(b)

    def forward(self, v: torch.Tensor, h: torch.Tensor, cond: torch.Tensor | None = None,
                where: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """cond: (B,) class ids; where: (B, C, H, W) spatial condition (both fully visible)."""
        p = self.p
        v_pre = self.v_conv(F.pad(v, (p, p, p, 0)))  # rows i-p..i, columns j-p..j+p
        h_weight = self.h_conv.weight * self.h_mask if self.first else self.h_conv.weight
        h_pre = F.conv2d(F.pad(h, (p, 0, 0, 0)), h_weight, self.h_conv.bias)  # columns j-p..j
        v_down = F.pad(v_pre, (0, 0, 1, 0))[:, :, :-1]  # row i now holds rows < i
        h_pre = h_pre + self.v_to_h(v_down)
        if self.cls is not None:
            bias = self.cls(cond)[:, :, None, None]
            v_pre, h_pre = v_pre + bias, h_pre + bias
        if self.spatial is not None:
            bias = self.spatial(where)
            v_pre, h_pre = v_pre + bias, h_pre + bias
        h_new = self.h_out(self._gate(h_pre))
        return self._gate(v_pre), h_new if self.first else h + h_new


class PixelCNN(nn.Module):
    """Gated PixelCNN prior: ids (B, H, W) in [0, K) -> logits (B, K, H, W), raster causal.

    logits[:, :, i, j] depends only on ids before (i, j) in raster order (and on cond / where).
    spatial: layers take a (B, channels, H, W) spatial condition ``where``.
    """

    def __init__(self, vocab_size: int, channels: int = 64, n_layers: int = 6,
                 kernel_size: int = 3, num_classes: int = 0, spatial: bool = False) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise MvqError(f"PixelCNN kernel_size must be odd, got {kernel_size}")
        self.vocab_size, self.num_classes = vocab_size, num_classes
        self.embed = nn.Embedding(vocab_size, channels)
        self.layers = nn.ModuleList(GatedLayer(channels, kernel_size, i == 0, num_classes,
                                               spatial) for i in range(n_layers))
        self.out = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, 4 * channels, 1), nn.ReLU(),
                                 nn.Conv2d(4 * channels, vocab_size, 1))

    def forward(self, ids: torch.Tensor, cond: torch.Tensor | None = None,
                where: torch.Tensor | None = None) -> torch.Tensor:
        if self.num_classes and cond is None:
            raise MvqError("this PixelCNN is class conditional: pass cond=(B,) class ids")
        if self.layers[0].spatial is not None and where is None:
            raise MvqError("this PixelCNN is spatially conditioned: pass where=(B, C, H, W)")
        x = self.embed(ids).permute(0, 3, 1, 2)
        v = h = x
        if where is not None:
            where = where[..., : ids.shape[1], :]  # sampling feeds the rows up to i only
        for layer in self.layers:
            v, h = layer(v, h, cond, where)
        return self.out(h)

    def loss(self, ids: torch.Tensor, cond: torch.Tensor | None = None,
             where: torch.Tensor | None = None) -> torch.Tensor:
        """Mean negative log-likelihood, nats/token, of (B, H, W) ids."""
        return F.cross_entropy(self(ids, cond, where), ids)

    @torch.no_grad()
    def sample(self, n: int, h: int, w: int, draw: Draw = Draw(),
               cond: torch.Tensor | None = None, generator: torch.Generator | None = None,
               where: torch.Tensor | None = None) -> torch.Tensor:
        """(n, h, w) ids drawn one position at a time in raster order (H * W forwards), each
        with ``draw``'s temperature, top_k and top_p (drawn from ``generator``)."""
        with eval_mode(self):
            ids = torch.zeros(n, h, w, dtype=torch.long, device=self.embed.weight.device)
            for i in range(h):
                for j in range(w):
                    logits = self(ids[:, : i + 1], cond, where)[:, :, i, j]  # rows > i unused
                    ids[:, i, j] = sample_logits(logits, draw.temperature, draw.top_k,
                                                 draw.top_p, generator)
            return ids


CONDITIONINGS = {
    "layout": "the whole primary grid through a learned projection (PrimaryContext)",
    "average": "the primary ids' embedding averaged onto the secondary grid (the first kind: it "
               "loses which id sits where; a prior saved without 'conditioning' is of this kind)",
}


def fold(x: torch.Tensor, fh: int, fw: int) -> torch.Tensor:
    """Space to depth: (B, C, H, W) -> (B, C*fh*fw, H/fh, W/fw), each fh x fw block's positions
    kept apart in channels (channel c*fh*fw + a*fw + b holds block position (a, b))."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // fh, fh, w // fw, fw).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(b, c * fh * fw, h // fh, w // fw)


def unfold(x: torch.Tensor, uh: int, uw: int) -> torch.Tensor:
    """Depth to space, the inverse of `fold`: (B, C*uh*uw, H, W) -> (B, C, H*uh, W*uw)."""
    b, cu, h, w = x.shape
    x = x.reshape(b, cu // (uh * uw), uh, uw, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(b, cu // (uh * uw), h * uh, w * uw)


class PrimaryContext(nn.Module):
    """The secondary PixelCNN's condition from the whole primary grid (VQ-VAE-2's bottom prior
    conditions on the top codes): primary ids (B, H, W) -> (B, channels, H', W').

    The ids' embedding goes through ``layers`` residual 3x3 convolutions at the primary grid's
    size, then to the secondary grid without mixing positions away: along a side where the
    primary grid is r times the secondary one, each r primary positions are folded into channels
    (space to depth) and a 1x1 convolution projects them, a learned map of every id in the block
    (the presets' secondary grid is 1x1: a projection of the whole primary grid); where the
    secondary side is r times the primary one, the projection gives r x channels per primary
    position, unfolded onto the r secondary positions it covers. A side that divides neither way
    (no tokenizer here makes one) is average-pooled to the secondary size first.
    """

    def __init__(self, vocab_size: int, channels: int, primary_shape: tuple[int, int],
                 secondary_shape: tuple[int, int], layers: int = 2) -> None:
        super().__init__()
        pre, down, up = [], [], []
        for a, b in zip(primary_shape, secondary_shape):
            a = a if a % b == 0 or b % a == 0 else b  # neither divides: pool this side to b
            pre.append(a)
            down.append(max(1, a // b))
            up.append(max(1, b // a))
        self.pre, self.down, self.up = tuple(pre), tuple(down), tuple(up)
        self.embed = nn.Embedding(vocab_size, channels)
        self.convs = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1)
                                   for _ in range(layers))
        self.proj = nn.Conv2d(channels * down[0] * down[1], channels * up[0] * up[1], 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids).permute(0, 3, 1, 2)
        for conv in self.convs:
            x = x + conv(F.relu(x))
        if tuple(x.shape[2:]) != self.pre:
            x = F.adaptive_avg_pool2d(x, self.pre)
        return unfold(self.proj(fold(x, *self.down)), *self.up)


class PixelCNNPrior(Prior):
    """Gated PixelCNN prior over single- and two-level codes (registry name "pixelcnn").

    primary_shape (H, W), codebook_sizes [K1] or [K1, K2], secondary_shape (H', W') or None,
    mask_dim D' (mask bits drawn at random when sampling); sizes: {channels, n_layers,
    kernel_size} of both PixelCNNs, plus how the secondary one sees the primary ids:
    ``conditioning`` (a `CONDITIONINGS` name, default "layout") and ``context_layers`` (the
    `PrimaryContext`'s convolutions, default 2). `config()` records the conditioning; a config
    without it (saved before it existed) is the "average" kind, which still loads.
    nll: {'primary', 'secondary'} exact mean NLL in nats/token, as the GPT prior reports.
    """

    kind = "pixelcnn"
    layouts = ("single-channel", "two-level", "two-level+mask")
    stages = ("primary", "secondary")
    decoding = ("temperature", "top_k", "top_p")

    def __init__(self, primary_shape: tuple[int, int], codebook_sizes: list[int],
                 secondary_shape: tuple[int, int] | None = None, mask_dim: int = 0,
                 sizes: dict | None = None, num_classes: int = 0,
                 meta: dict | None = None) -> None:
        super().__init__()
        sizes = {"conditioning": "layout", **(sizes or {})}
        self._kwargs = dict(primary_shape=list(primary_shape), codebook_sizes=list(codebook_sizes),
                            secondary_shape=None if secondary_shape is None
                            else list(secondary_shape), mask_dim=mask_dim, sizes=dict(sizes),
                            num_classes=num_classes, meta=dict(meta or {}))
        self.conditioning = sizes.pop("conditioning")
        if self.conditioning not in CONDITIONINGS:
            raise MvqError(f"PixelCNN conditioning must be one of {', '.join(CONDITIONINGS)}, "
                           f"got {self.conditioning!r}")
        context_layers = sizes.pop("context_layers", 2)
        self.primary_shape = tuple(primary_shape)
        self.secondary_shape = None if secondary_shape is None else tuple(secondary_shape)
        self.mask_dim, self.num_classes, self.meta = mask_dim, num_classes, dict(meta or {})
        if self.secondary_shape is not None and len(codebook_sizes) < 2:
            raise MvqError(f"two-level codes need two codebook sizes [K1, K2], got "
                           f"{codebook_sizes}")
        self.primary = PixelCNN(int(codebook_sizes[0]), num_classes=num_classes, **sizes)
        self.secondary = self.context = None
        if self.secondary_shape is not None:
            self.secondary = PixelCNN(int(codebook_sizes[1]), num_classes=num_classes,
                                      spatial=True, **sizes)
            width, k1 = self.secondary.embed.embedding_dim, int(codebook_sizes[0])
            self.context = (PrimaryContext(k1, width, self.primary_shape, self.secondary_shape,
                                           context_layers) if self.conditioning == "layout"
                            else nn.Embedding(k1, width))

    @classmethod
    def from_codes(cls, codes: Codes, num_classes: int = 0, sizes: dict | None = None
                   ) -> PixelCNNPrior:
        cls.check_layout(codes)
        return cls(tuple(codes.primary.shape[1:]), codebook_sizes(codes),
                   None if codes.secondary is None else tuple(codes.secondary.shape[1:]),
                   0 if codes.mask is None else codes.mask.shape[-1], sizes, num_classes,
                   meta=codes.meta)

    @classmethod
    def upgrade_config(cls, config: dict) -> dict:
        """A config saved before the conditioning was recorded is the "average" kind."""
        sizes = config.get("sizes") if isinstance(config, dict) else None
        if not isinstance(sizes or {}, dict) or "conditioning" in (sizes or {}):
            return config  # today's form, or not a config at all (the constructor says why)
        return {**config, "sizes": {"conditioning": "average", **(sizes or {})}}

    @property
    def codebook_sizes(self) -> tuple[int, ...]:
        first = (self.primary.vocab_size,)
        return first if self.secondary is None else (*first, self.secondary.vocab_size)

    def config(self) -> dict:
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in self._kwargs.items()}

    def condition(self, primary: torch.Tensor) -> torch.Tensor:
        """(B, H, W) primary ids -> (B, C, H', W') condition of the secondary PixelCNN."""
        if self.conditioning == "layout":
            return self.context(primary)
        emb = self.context(primary).permute(0, 3, 1, 2)
        return F.adaptive_avg_pool2d(emb, self.secondary_shape)

    def _check(self, codes: Codes) -> None:
        found = (tuple(codes.primary.shape[1:]),
                 None if codes.secondary is None else tuple(codes.secondary.shape[1:]))
        if found != (self.primary_shape, self.secondary_shape):
            raise MvqError(f"this PixelCNN prior models primary {self.primary_shape} and "
                           f"secondary {self.secondary_shape} grids, the codes have {found}")

    def loss(self, codes: Codes, labels: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        self._check(self.check_codes(codes))
        cond = self.check_labels(labels, len(codes))
        parts = {"primary": self.primary.loss(codes.primary, cond)}
        if self.secondary is not None:
            parts["secondary"] = self.secondary.loss(codes.secondary, cond,
                                                     self.condition(codes.primary))
        return sum(parts.values()), parts

    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None = None,
               generator: torch.Generator | None = None, temperature: float = 1.0,
               top_k: int | None = None, top_p: float | None = None) -> Codes:
        """n codes drawn position by position: primary grid, then secondary given primary."""
        self.check_sample(n, temperature, top_k, top_p)
        cond = self.check_labels(labels, n)
        generator = self.new_generator(generator)
        opts = dict(draw=Draw(temperature, top_k, top_p), cond=cond, generator=generator)
        p = self.primary.sample(n, *self.primary_shape, **opts)
        secondary = mask = None
        if self.secondary is not None:
            secondary = self.secondary.sample(n, *self.secondary_shape, where=self.condition(p),
                                              **opts)
            if self.mask_dim:
                mask = torch.rand(n, *self.secondary_shape, self.mask_dim, generator=generator,
                                  device=p.device) < 0.5
        return Codes(p, secondary, mask, dict(self.meta))
