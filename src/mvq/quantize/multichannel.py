"""MoVQ multichannel quantization: c chunks of the latent, one shared codebook.

The latent z (B, c * n_q, H, W) is split along channels into c chunks
``z[:, k*n_q:(k+1)*n_q]``; every chunk is quantized by the same
`VectorQuantize` of dimension n_q (the chunks are stacked on the batch
axis, so one call does all of them and EMA / dead-code restart see every chunk's vectors). Each
position thus carries c ids: K^c combinations from a K-entry codebook.

Ids are (B, H, W, c), channel k of the ids belonging to chunk k. With c = 1 the quantizer is the
plain VectorQuantize (same weights, same outputs; tested).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mvq.errors import MvqError
from mvq.quantize.arguments import check_bool, check_codebook, check_int, check_vq_kwargs
from mvq.quantize.layout import (
    as_rows,
    check_ids_per_position,
    check_input,
    check_map,
    from_columns,
    to_columns,
)
from mvq.quantize.vq import QuantizeOutput, VectorQuantize


class MultiChannelVectorQuantize(nn.Module):
    """MoVQ's multichannel VQ: each D-vector is cut into ``channels`` chunks of D / channels,
    all quantized by one shared codebook (a [`VectorQuantize`][mvq.quantize.vq.VectorQuantize]
    of D / channels, ``.vq``).

    ``quantized, indices, loss = vq(x)``: x ``(B, N, D)`` (or ``(B, D, H, W)``), indices
    ``(B, N, channels)`` (``(B, H, W, channels)``), loss as ``VectorQuantize``'s.
    ``vq.quantize(z)`` gives the detailed output on a ``(B, D, H, W)`` map.

    Args:
        dim: D = channels x the chunk size.
        codebook_size: entries K of the shared codebook.
        channels: chunks per vector (a divisor of ``dim``).
        channel_first: inputs are ``(B, D, ...)`` feature maps.
        **kwargs: the codebook's ``beta``, ``ema``, ``decay``, ``eps``, ``restart_dead``,
            ``dead_threshold``, ``kmeans_init`` (``VectorQuantize``'s, same defaults).
    """

    def __init__(self, dim: int, codebook_size: int, *, channels: int = 4,
                 channel_first: bool = False, **kwargs) -> None:
        layer = "MultiChannelVectorQuantize"
        check_int(layer, "dim", dim, 1, "dim=64")
        check_int(layer, "codebook_size", codebook_size, 1, "codebook_size=512")
        check_int(layer, "channels", channels, 1, "channels=4")
        check_bool(layer, "channel_first", channel_first)
        kwargs = check_vq_kwargs(layer, kwargs, "dim, codebook_size, channels, channel_first")
        if dim % channels:
            raise MvqError(f"MultiChannelVectorQuantize: dim={dim} must split into channels="
                           f"{channels} equal chunks; pick a divisor of dim")
        check_codebook(layer, codebook_size, dim // channels)
        super().__init__()
        self.channels, self.dim_total, self.channel_first = channels, dim, channel_first
        self.code_dim = dim // channels
        self.vq = VectorQuantize(self.code_dim, codebook_size, channel_first=True, **kwargs)

    num_codes = property(lambda self: self.vq.num_codes)
    embedding = property(lambda self: self.vq.embedding)

    # ------------------------------------------------------------- chunk <-> batch reshapes
    def _split(self, z: torch.Tensor) -> torch.Tensor:
        """(B, c*n_q, H, W) -> (B*c, n_q, H, W), chunk k of image b at row b*c + k."""
        if z.dim() != 4 or z.shape[1] != self.dim_total:
            raise MvqError(f"MultiChannelVectorQuantize: expected (B, {self.dim_total}, H, W), "
                           f"found {tuple(z.shape)}")
        b, _, h, w = z.shape
        return z.reshape(b * self.channels, self.code_dim, h, w)

    def _merge(self, z: torch.Tensor) -> torch.Tensor:
        """(B*c, n_q, H, W) -> (B, c*n_q, H, W) (sizes explicit: an empty map has no -1)."""
        bc, _, h, w = z.shape
        return z.reshape(bc // self.channels, self.dim_total, h, w)

    def _ids_out(self, ids: torch.Tensor) -> torch.Tensor:
        """(B*c, H, W) -> (B, H, W, c)."""
        bc, h, w = ids.shape
        ids = ids.reshape(bc // self.channels, self.channels, h, w)
        return ids.permute(0, 2, 3, 1).contiguous()

    # ------------------------------------------------------------- the layer
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x -> (quantized, indices, loss); see the class docstring for shapes."""
        x = check_input(x, self.dim_total, self.channel_first, "MultiChannelVectorQuantize")
        if not self.channel_first:  # each chunk of each vector one row of the shared codebook
            out = self.vq.quantize(as_rows(x, self.code_dim))
            ids = out.indices.reshape(*x.shape[:-1], self.channels)
            return out.quantized.reshape(x.shape), ids, out.loss
        z, grid = to_columns(x, self.channel_first)
        out = self.quantize(z)
        ids = out.indices.reshape(x.shape[0], *grid, self.channels)
        return from_columns(out.quantized, grid, self.channel_first), ids, out.loss

    def get_output_from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Vectors for ids ``(B, *grid, channels)``, in the layer's layout."""
        grid = check_ids_per_position(indices, self.channels, "channel")
        flat = indices.reshape(indices.shape[0], math.prod(grid), 1, self.channels)
        return from_columns(self.lookup(flat), grid, self.channel_first)

    # ------------------------------------------------------------- maps (B, c*n_q, H, W)
    def quantize(self, z: torch.Tensor) -> QuantizeOutput:
        """The detailed output on z (B, c*n_q, H, W): quantized / codes (B, c*n_q, H, W),
        indices (B, H, W, c); losses averaged over all chunks (the plain VQ losses of the
        stacked chunks)."""
        check_map(z, self.dim_total, "MultiChannelVectorQuantize.quantize takes")
        out = self.vq.quantize(self._split(z))
        return QuantizeOutput(
            quantized=self._merge(out.quantized),
            codes=self._merge(out.codes),
            indices=self._ids_out(out.indices),
            loss=out.loss,
            codebook_loss=out.codebook_loss,
            commit_loss=out.commit_loss,
        )

    @torch.no_grad()
    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """Nearest ids without any training-time update: (B, c*n_q, H, W) -> (B, H, W, c)."""
        chunks = self._split(z)
        flat = chunks.permute(0, 2, 3, 1).reshape(-1, self.code_dim)
        return self._ids_out(self.vq.nearest(flat).view(chunks.shape[0], *chunks.shape[2:]))

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Code vectors for ids: (B, H, W, c) -> (B, c*n_q, H, W)."""
        if indices.dim() != 4 or indices.shape[-1] != self.channels:
            raise MvqError(f"MultiChannelVectorQuantize: expected ids of shape (B, H, W, "
                           f"{self.channels}), found {tuple(indices.shape)}")
        b, h, w, c = indices.shape
        per_chunk = indices.permute(0, 3, 1, 2).reshape(b * c, h, w)
        return self._merge(self.vq.lookup(per_chunk))

    def extra_repr(self) -> str:
        return f"c={self.channels}, n_q={self.code_dim}"
