"""Residual vector quantization (RVQ; SoundStream's Algorithm 1, Zeghidour et al. 2021) as a
drop-in layer with mvq's contract: ``quantized, indices, loss = rvq(x)``.

``depth`` stages, each one of mvq's own `VectorQuantize` layers
(nearest code in fp32, EMA codebook and dead-code restart by default): the first quantizes the
input, each next one what the stages before it left over (the residual); the output is the sum
of the stages' codes. The residual is taken from each stage's straight-through output, so the
gradient reaches the input through the first stage only (as the identity) and the later stages'
commitment terms move their own inputs, not the encoder; vector-quantize-pytorch's
``ResidualVQ`` (the test reference) does the same.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mvq.quantize.arguments import check_bool, check_codebook, check_int, check_vq_kwargs
from mvq.quantize.layout import check_ids_per_position, check_input, from_columns, to_columns
from mvq.quantize.vq import VectorQuantize

# ResidualVQ's own names in vector-quantize-pytorch (its VQ ones: arguments.VQ_RENAMED)
_RENAMED = {
    "num_quantizers": "give depth=, the number of stages (e.g. depth=4)",
    "codebook_dim": "mvq's stages quantize at dim; project the input to the size you want first",
    "commitment_weight": "give beta=, the commitment weight of each stage (e.g. beta=0.25)",
    "shared_codebook": "not supported: each stage has its own codebook",
    "quantize_dropout": "not supported",
    "quantize_dropout_cutoff_index": "not supported",
    "quantize_dropout_multiple_of": "not supported",
    "beam_size": "not supported: each stage takes its nearest code",
    "eval_beam_size": "not supported: each stage takes its nearest code",
    "implicit_neural_codebook": "not supported",
}


class ResidualVQ(nn.Module):
    """Residual VQ: ``quantized, indices, loss = rvq(x)``.

    x ``(B, N, D)`` (or ``(B, D, H, W)`` with ``channel_first``); quantized has x's shape and
    dtype (the sum of the stages' codes, straight-through), indices ``(B, N, depth)``
    (``(B, H, W, depth)``: the per-position axis before the stage axis, as mvq's multichannel
    ids), loss the sum of the stages' losses (each ``beta * ||r - sg[e]||^2``, plus
    ``||sg[r] - e||^2`` when ``ema=False``). The maths runs in fp32 whatever autocast says.

    Args:
        dim: vector size D (every stage's codebook has vectors of D).
        codebook_size: K, entries of each stage's codebook.
        depth: the number of stages.
        channel_first: inputs are ``(B, D, ...)`` feature maps.
        **vq_kwargs: each stage's ``beta``, ``ema``, ``decay``, ``restart_dead``,
            ``dead_threshold``, ``kmeans_init``
            ([`mvq.VectorQuantize`][mvq.quantize.vq.VectorQuantize]'s).

    Attributes:
        stages: the ``depth`` [`mvq.VectorQuantize`][mvq.quantize.vq.VectorQuantize]
            layers, first to last.
        codebook_size: K (per stage).
        bits_per_token: depth * log2(K).
    """

    def __init__(self, dim: int, codebook_size: int, depth: int = 4, *,
                 channel_first: bool = False, **vq_kwargs: object) -> None:
        super().__init__()
        self.dim = check_int("ResidualVQ", "dim", dim, 1, "dim=64")
        self.codebook_size = check_int("ResidualVQ", "codebook_size", codebook_size, 1,
                                       "codebook_size=1024")
        self.depth = check_int("ResidualVQ", "depth", depth, 1, "depth=4")
        self.channel_first = check_bool("ResidualVQ", "channel_first", channel_first)
        stage_kwargs = check_vq_kwargs("ResidualVQ", vq_kwargs,
                                       "dim, codebook_size, depth, channel_first", _RENAMED)
        check_codebook("ResidualVQ", codebook_size * depth, dim)
        self.stages = nn.ModuleList(VectorQuantize(dim, codebook_size, **stage_kwargs)
                                    for _ in range(depth))
        self.bits_per_token = depth * math.log2(codebook_size)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = check_input(x, self.dim, self.channel_first, "ResidualVQ")
        batch = x.shape[0]
        with torch.autocast(device_type=x.device.type, enabled=False):
            z, grid = to_columns(x, self.channel_first)  # (B, D, M, 1)
            z = z if z.dtype == torch.float64 else z.float()
            loss = torch.zeros((), device=x.device)
            if z.numel() == 0:  # nothing to quantize: no codebook update, no NaN loss
                ids = torch.zeros(batch, *grid, self.depth, dtype=torch.long, device=x.device)
                return torch.zeros_like(x), ids, loss
            residual, total, ids = z, torch.zeros_like(z), []
            for stage in self.stages:
                out = stage.quantize(residual)
                residual = residual - out.quantized  # no gradient to the earlier stages' input
                total = total + out.quantized
                ids.append(out.indices)  # (B, M, 1)
                loss = loss + out.loss
        indices = torch.cat(ids, -1).reshape(batch, *grid, self.depth)
        return from_columns(total, grid, self.channel_first).to(x.dtype), indices, loss

    def get_output_from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """The sum of the stages' codes for ids ``(B, *grid, depth)``, in the layer's layout."""
        grid = check_ids_per_position(indices, self.depth, "stage")
        flat = indices.reshape(indices.shape[0], math.prod(grid), 1, self.depth)
        codes = sum(stage.lookup(flat[..., k]) for k, stage in enumerate(self.stages))
        return from_columns(codes, grid, self.channel_first)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, codebook_size={self.codebook_size}, depth={self.depth}"
