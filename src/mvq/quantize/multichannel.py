"""MoVQ multichannel quantization: c chunks of the latent, one shared codebook.

The latent z (B, c * n_q, H, W) is split along channels into c chunks
``z[:, k*n_q:(k+1)*n_q]``; every chunk is quantized by the same
`VectorQuantizer` of dimension n_q (the chunks are stacked on the batch
axis, so one call does all of them and EMA / dead-code restart see every chunk's vectors). Each
position thus carries c ids: K^c combinations from a K-entry codebook.

Ids are (B, H, W, c), channel k of the ids belonging to chunk k. With c = 1 the quantizer is the
plain VectorQuantizer (same weights, same outputs; tested).
"""

from __future__ import annotations

import torch
from torch import nn

from mvq.quantize.vq import QuantizeOutput, VectorQuantizer


class MultiChannelQuantizer(nn.Module):
    """Quantize (B, c * n_q, H, W) as c chunks with one shared K x n_q codebook.

    Args:
        num_codes: codebook entries K.
        dim_total: latent channels n_z = c * n_q.
        channels: number of chunks c (``dim_total % channels == 0``).
        **vq_kwargs: passed to `VectorQuantizer` (beta, ema, decay, restart_dead, ...).
    """

    def __init__(self, num_codes: int, dim_total: int, channels: int = 4, **vq_kwargs) -> None:
        super().__init__()
        if channels < 1 or dim_total % channels:
            raise ValueError(f"dim_total={dim_total} must split into channels={channels} equal "
                             "chunks (dim_total % channels == 0)")
        self.channels, self.dim_total = channels, dim_total
        self.code_dim = dim_total // channels
        self.vq = VectorQuantizer(num_codes, self.code_dim, **vq_kwargs)

    num_codes = property(lambda self: self.vq.num_codes)
    embedding = property(lambda self: self.vq.embedding)

    # ------------------------------------------------------------- chunk <-> batch reshapes
    def _split(self, z: torch.Tensor) -> torch.Tensor:
        """(B, c*n_q, H, W) -> (B*c, n_q, H, W), chunk k of image b at row b*c + k."""
        if z.dim() != 4 or z.shape[1] != self.dim_total:
            raise ValueError(f"expected (B, {self.dim_total}, H, W), got {tuple(z.shape)}")
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

    # ------------------------------------------------------------- API
    def forward(self, z: torch.Tensor) -> QuantizeOutput:
        """z: (B, c*n_q, H, W). quantized / codes: (B, c*n_q, H, W); indices: (B, H, W, c);
        losses averaged over all chunks (the plain VQ losses of the stacked chunks)."""
        out = self.vq(self._split(z))
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
            raise ValueError(f"expected ids of shape (B, H, W, {self.channels}), "
                             f"got {tuple(indices.shape)}")
        b, h, w, c = indices.shape
        per_chunk = indices.permute(0, 3, 1, 2).reshape(b * c, h, w)
        return self._merge(self.vq.lookup(per_chunk))

    def extra_repr(self) -> str:
        return f"c={self.channels}, n_q={self.code_dim}"
