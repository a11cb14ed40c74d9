"""Per-position networks: a 1x1 convolution as a matrix product (MVQ's default E') and the
two-layer MLP of them (its default ``f``; `mvq.quantize.masked.MaskedVectorQuantize`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Pointwise(nn.Conv2d):
    """A 1x1 convolution computed as a matrix product over positions (channels last): the
    same parameters and outputs as ``nn.Conv2d(dim_in, dim_out, 1)``, without the convolution
    machinery that dominates on the many 1x1 maps of the per-position MVQ search."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__(dim_in, dim_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            return super().forward(x)
        weight = self.weight.flatten(1)
        if x.shape[2] * x.shape[3] == 1:
            return F.linear(x.flatten(1), weight, self.bias)[:, :, None, None]
        return F.linear(x.permute(0, 2, 3, 1), weight, self.bias).permute(0, 3, 1, 2)


def pointwise_mlp(dim_in: int, dim_out: int, hidden: int) -> nn.Module:
    """Two 1x1 convolutions: a per-position MLP on ``(B, C, H, W)`` maps."""
    return nn.Sequential(Pointwise(dim_in, hidden), nn.GELU(), Pointwise(hidden, dim_out))
