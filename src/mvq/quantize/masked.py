"""Masked vector quantization with Multiple Hypotheses Dropout (MVQ paper, section 3).

Each instance is coded by a primary code e, a secondary code e' and a binary mask m over the
secondary channels:  y_hat = e + f(e' * m)  (eq. 5). Training samples J masks, keeps the
hypothesis nearest to the encoder output y (per instance), and only that one gets gradient
(eq. 6). The search runs without autograd in chunks of masks (memory bounded by the chunk, not
by J), then f runs once more with autograd on the winning mask. The gradient equals the naive
"all J hypotheses with autograd, zero weight on the losers" form (tests/test_masked.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mvq.memory import check_fits
from mvq.quantize.vq import QuantizeOutput, VectorQuantizer


@dataclass
class MaskedOutput:
    """Result of :class:`MaskedQuantizer`.

    y_hat: (B, D, H, W) representation fed to the decoder (straight-through to the encoders).
    mask: (B, H', W', D') bool, the winning mask (bits last, as in :class:`mvq.codes.Codes`).
    primary, secondary: the two :class:`QuantizeOutput`.
    mhd_loss: ||y_hat_j* - y||^2 (mean over elements).
    """

    y_hat: torch.Tensor
    mask: torch.Tensor
    primary: QuantizeOutput
    secondary: QuantizeOutput
    mhd_loss: torch.Tensor


class MaskedQuantizer(nn.Module):
    """Primary VQ + secondary VQ + MH-Dropout over masks of the secondary code.

    Args:
        primary, secondary: the two codebooks (K/2 entries each in the paper).
        f: network mapping a masked secondary code map (B, D', H', W') to (B, D, H, W).
        num_masks: J, masks sampled per instance while training.
        eval_masks: masks searched by :meth:`search` at inference (default: ``num_masks``);
            drawn once from ``search_seed`` and shared by every image, so codes are
            deterministic and independent of the batch an image sits in.
        chunk_size: hypotheses evaluated at once per instance in the no-grad search.
        naive: evaluate all J hypotheses with autograd (reference / benchmark only).
    """

    def __init__(
        self,
        primary: VectorQuantizer,
        secondary: VectorQuantizer,
        f: nn.Module,
        num_masks: int = 64,
        eval_masks: int | None = None,
        chunk_size: int = 256,
        search_seed: int = 0,
        naive: bool = False,
    ) -> None:
        super().__init__()
        if num_masks < 1:
            raise ValueError(f"num_masks must be >= 1, got {num_masks}")
        self.primary, self.secondary, self.f = primary, secondary, f
        self.num_masks = num_masks
        self.eval_masks = eval_masks or num_masks
        self.chunk_size = max(1, chunk_size)
        self.search_seed = search_seed
        self.naive = naive

    # ------------------------------------------------------------------ helpers
    def combine(self, e: torch.Tensor, e2: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """y_hat = e + f(e' * m). e: (B,D,H,W), e2: (B,D',H',W'), mask: (B,D',H',W')."""
        return e + self.f(e2 * mask.to(e2.dtype))

    def sample_masks(
        self, batch: int, j: int, like: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """(batch, j, D', H', W') bool masks, each bit Bernoulli(0.5)."""
        shape = (batch, j, *like.shape[1:])
        check_fits(5 * math.prod(shape),
                   f"{batch} x {j} MH-Dropout masks of {like.shape[1:].numel()} "
                   "bits", "lower num_masks / eval_masks or the batch size", like.device)
        rand = torch.rand(shape, generator=generator, device="cpu" if generator else like.device)
        return (rand < 0.5).to(like.device)

    @torch.no_grad()
    def best_masks(self, e: torch.Tensor, e2: torch.Tensor, y: torch.Tensor,
                   masks: torch.Tensor) -> torch.Tensor:
        """Winner-takes-all search, no autograd, in chunks of hypotheses.

        e, y: (B, D, H, W); e2: (B, D', H', W'); masks: (B, J, D', H', W') or (J, D', H', W')
        shared by the batch. Returns the winning masks (B, D', H', W') (bool).
        """
        b = e.shape[0]
        shared = masks.dim() == e2.dim()
        j_total = masks.shape[0] if shared else masks.shape[1]
        best_d = torch.full((b,), float("inf"), device=e.device, dtype=torch.float64)
        best_j = torch.zeros(b, dtype=torch.long, device=e.device)
        dtype = torch.promote_types(y.dtype, torch.float32)  # fp32 at least, fp64 kept
        target = (y - e).to(dtype)  # f(c) should approximate y - e
        for start in range(0, j_total, self.chunk_size):
            chunk = (masks[start : start + self.chunk_size] if shared
                     else masks[:, start : start + self.chunk_size])
            jc = chunk.shape[0] if shared else chunk.shape[1]
            m = chunk.unsqueeze(0).expand(b, *chunk.shape) if shared else chunk
            c = (e2.unsqueeze(1) * m.to(e2.dtype)).flatten(0, 1)  # (B*jc, D', H', W')
            out = self.f(c).to(dtype).view(b, jc, *y.shape[1:])
            d = (out - target.unsqueeze(1)).pow(2).flatten(2).sum(2)  # (B, jc)
            d_min, j_min = d.min(1)
            better = d_min < best_d
            best_d = torch.where(better, d_min, best_d)
            best_j = torch.where(better, j_min + start, best_j)
        if shared:
            return masks[best_j]
        return masks[torch.arange(b, device=e.device), best_j]

    def eval_mask_bank(self, like: torch.Tensor) -> torch.Tensor:
        """The fixed, seeded bank of masks searched at inference: (J_eval, D', H', W')."""
        gen = torch.Generator().manual_seed(self.search_seed)
        return self.sample_masks(1, self.eval_masks, like[:1], generator=gen)[0]

    # ------------------------------------------------------------------ forward
    def forward(self, y: torch.Tensor, y2: torch.Tensor, masks: torch.Tensor | None = None
                ) -> MaskedOutput:
        """y: primary encoder output (B, D, H, W); y2: secondary (B, D', H', W').

        masks: optional hypotheses (B, J, D', H', W') or (J, D', H', W'); by default J fresh
        random masks per instance when training, the seeded bank at inference.
        """
        q1, q2 = self.primary(y), self.secondary(y2)
        e, e2 = q1.quantized, q2.quantized  # straight-through codes
        if masks is None:
            if self.training:
                masks = self.sample_masks(y.shape[0], self.num_masks, q2.codes)
            else:
                masks = self.eval_mask_bank(q2.codes)
        if self.naive:
            y_hat, mask = self._naive(e, e2, y, masks)
        else:
            mask = self.best_masks(q1.codes.detach(), q2.codes.detach(), y.detach(), masks)
            y_hat = self.combine(e, e2, mask)
        mhd = F.mse_loss(y_hat.float(), y.float())
        return MaskedOutput(y_hat=y_hat, mask=mask.permute(0, 2, 3, 1), primary=q1, secondary=q2,
                            mhd_loss=mhd)

    def _naive(self, e, e2, y, masks):
        """All J hypotheses with autograd; the loss weight of every loser is zero (eq. 6)."""
        b = e.shape[0]
        if masks.dim() == e2.dim():
            masks = masks.unsqueeze(0).expand(b, *masks.shape)
        j = masks.shape[1]
        c = (e2.unsqueeze(1) * masks.to(e2.dtype)).flatten(0, 1)
        hyp = e.unsqueeze(1) + self.f(c).view(b, j, *e.shape[1:])  # (B, J, D, H, W)
        d = (hyp - y.unsqueeze(1)).pow(2).flatten(2).sum(2)
        w = F.one_hot(d.detach().argmin(1), j).to(hyp.dtype)  # Kronecker delta of eq. 6
        y_hat = (w.view(b, j, 1, 1, 1) * hyp).sum(1)
        mask = masks[torch.arange(b, device=e.device), d.argmin(1)]
        return y_hat, mask

    # ------------------------------------------------------------------ codes
    def decode_codes(self, primary_ids: torch.Tensor, secondary_ids: torch.Tensor,
                     mask: torch.Tensor) -> torch.Tensor:
        """ids (B,H,W), (B,H',W'); mask (B,H',W',D') bool -> y_hat (B, D, H, W)."""
        e = self.primary.lookup(primary_ids)
        e2 = self.secondary.lookup(secondary_ids)
        return self.combine(e, e2, mask.permute(0, 3, 1, 2))

    def decode_sum(self, primary_ids: torch.Tensor, secondary_ids: torch.Tensor,
                   masks: torch.Tensor, sum_outputs: bool = False) -> torch.Tensor:
        """y_hat of a primary code plus N masked configurations (MVQ Fig. 6b).

        primary_ids (B,H,W); secondary_ids (N,B,H',W') and masks (N,B,H',W',D'): configuration
        j is (secondary_ids[j], masks[j]). Their masked secondary codes are summed before f,
        y = e + f(sum_j e'_j * m_j), or with ``sum_outputs`` what each adds through f,
        y = e + f(0) + sum_j (f(e'_j * m_j) - f(0)). One configuration gives
        :meth:`decode_codes`; none (N = 0) gives e + f(0).
        """
        e = self.primary.lookup(primary_ids)
        n, b, *grid2 = secondary_ids.shape
        masked = self.secondary.lookup(secondary_ids.flatten(0, 1))
        masked = masked.view(n, b, self.secondary.dim, *grid2)
        masked = masked * masks.permute(0, 1, 4, 2, 3).to(masked.dtype)
        if not sum_outputs or n == 0:
            return e + self.f(masked.sum(0))
        f0 = self.f(torch.zeros_like(masked[0]))
        return e + f0 + sum(self.f(c) - f0 for c in masked)
