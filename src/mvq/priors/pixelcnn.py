"""Gated PixelCNN over a token grid (van den Oord et al. 2016, "Conditional Image Generation
with PixelCNN Decoders"), the prior family VQ-VAE(-2) uses.

Two stacks keep raster-order causality without a blind spot:
- the vertical stack at (i, j) sees rows <= i (a (k//2+1) x k kernel over rows above and the
  current row); it reaches the horizontal stack only after a one-row shift down, so what flows
  into position (i, j) comes from rows < i;
- the horizontal stack at (i, j) sees columns <= j of row i; in the first layer ("mask A") the
  current column is removed and there is no residual, so a position never sees its own token.
Each unit is gated: tanh(a) * sigmoid(b), a class embedding adding a bias to both halves.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mvq.errors import MvqError
from mvq.priors.gpt import sample_logits


class GatedLayer(nn.Module):
    """One gated layer: (v, h) (B, C, H, W) each -> (v, h)."""

    def __init__(self, channels: int, kernel: int, first: bool, num_classes: int) -> None:
        super().__init__()
        self.p, self.first = kernel // 2, first
        c2 = 2 * channels
        self.v_conv = nn.Conv2d(channels, c2, (self.p + 1, kernel))
        self.h_conv = nn.Conv2d(channels, c2, (1, self.p + 1))
        self.v_to_h = nn.Conv2d(c2, c2, 1)
        self.h_out = nn.Conv2d(channels, channels, 1)
        self.cls = nn.Embedding(num_classes, c2) if num_classes else None
        if first:  # mask A: the horizontal kernel's last column is the current position
            mask = torch.ones_like(self.h_conv.weight)
            mask[..., -1] = 0
            self.register_buffer("h_mask", mask, persistent=False)

    @staticmethod
    def _gate(x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        return torch.tanh(a) * torch.sigmoid(b)

    def forward(self, v: torch.Tensor, h: torch.Tensor, cond: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.p
        v_pre = self.v_conv(F.pad(v, (p, p, p, 0)))  # rows i-p..i, columns j-p..j+p
        h_weight = self.h_conv.weight * self.h_mask if self.first else self.h_conv.weight
        h_pre = F.conv2d(F.pad(h, (p, 0, 0, 0)), h_weight, self.h_conv.bias)  # columns j-p..j
        v_down = F.pad(v_pre, (0, 0, 1, 0))[:, :, :-1]  # row i now holds rows < i
        h_pre = h_pre + self.v_to_h(v_down)
        if self.cls is not None:
            bias = self.cls(cond)[:, :, None, None]
            v_pre, h_pre = v_pre + bias, h_pre + bias
        h_new = self.h_out(self._gate(h_pre))
        return self._gate(v_pre), h_new if self.first else h + h_new


class PixelCNN(nn.Module):
    """Gated PixelCNN prior: ids (B, H, W) in [0, K) -> logits (B, K, H, W), raster causal.

    logits[:, :, i, j] depends only on ids before (i, j) in raster order (and on cond).
    """

    def __init__(self, vocab_size: int, channels: int = 64, n_layers: int = 6,
                 kernel_size: int = 3, num_classes: int = 0) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise MvqError(f"PixelCNN kernel_size must be odd, got {kernel_size}")
        self.vocab_size, self.num_classes = vocab_size, num_classes
        self.embed = nn.Embedding(vocab_size, channels)
        self.layers = nn.ModuleList(GatedLayer(channels, kernel_size, i == 0, num_classes)
                                    for i in range(n_layers))
        self.out = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, 4 * channels, 1), nn.ReLU(),
                                 nn.Conv2d(4 * channels, vocab_size, 1))

    def forward(self, ids: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if self.num_classes and cond is None:
            raise MvqError("this PixelCNN is class conditional: pass cond=(B,) class ids")
        x = self.embed(ids).permute(0, 3, 1, 2)
        v = h = x
        for layer in self.layers:
            v, h = layer(v, h, cond)
        return self.out(h)

    def loss(self, ids: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Mean negative log-likelihood, nats/token, of (B, H, W) ids."""
        return F.cross_entropy(self(ids, cond), ids)

    @torch.no_grad()
    def sample(self, n: int, h: int, w: int, temperature: float = 1.0, top_k: int | None = None,
               cond: torch.Tensor | None = None, generator: torch.Generator | None = None
               ) -> torch.Tensor:
        """(n, h, w) ids drawn one position at a time in raster order (H * W forwards)."""
        was = self.training
        self.eval()
        try:
            ids = torch.zeros(n, h, w, dtype=torch.long, device=self.embed.weight.device)
            for i in range(h):
                for j in range(w):
                    logits = self(ids[:, : i + 1], cond)[:, :, i, j]  # rows > i are unused
                    ids[:, i, j] = sample_logits(logits, temperature, top_k, generator=generator)
            return ids
        finally:
            self.train(was)
