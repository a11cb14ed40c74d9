"""Masked vector quantization with Multiple Hypotheses Dropout (MVQ paper, section 3).

Each instance is coded by a primary code e, a secondary code e' and a binary mask m over the
secondary channels:  y_hat = e + f(e' * m)  (eq. 5). Training samples J masks, keeps the
hypothesis nearest to the encoder output y (per instance), and only that one gets gradient
(eq. 6). The search runs without autograd; then f runs once more with autograd on the winning
mask. The gradient equals the naive "all J hypotheses with autograd, zero weight on the losers"
form (tests/test_masked.py).

Two searches give the same winners (tests/test_masked.py):

- **chunked** (the reference, and the path for per-instance masks or a spatial secondary
  code): f on every instance's J hypotheses, in chunks of masks (memory bounded by the chunk).
- **table**: when the masks are shared by the batch (the inference bank, or
  ``mask_sampling="batch"`` in training) and each instance's secondary code is one token, e' is
  one of K' codebook rows, so f(e' * m_j) takes at most K' x J values: T[k, j]. The search is
  then, per instance, J dot products against its row of the table,
  ``argmin_j ||T[k, j]||^2 - 2 T[k, j] . (y - e)``, like VQ's nearest-code search. In training
  the table is built when K' is at most the number of instances (fewer f calls than the chunked
  search); at inference it is built once and kept until the weights change. An FSQ or LFQ
  secondary (`ChannelCode`) has K' implicit codes: up to `mvq.quantize.secondary.TABLE_CODES`
  the table covers them all as it covers a codebook, beyond that it covers the codes the batch
  uses (built per batch, never kept).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mvq.errors import MvqError
from mvq.quantize.argmin import row_argmin
from mvq.quantize.secondary import ChannelCode
from mvq.quantize.vq import QuantizeOutput, VectorQuantizer, mse
from mvq.runtime.devices import host_reads_free
from mvq.runtime.memory import check_fits

MASK_SAMPLING = ("instance", "batch")  # J masks per instance (the paper) / one bank per batch
SEARCHES = ("auto", "table", "chunked")
# hypotheses f scores at once in the chunked search (B x masks per chunk), so that its
# activations stay in the cache when every position is an instance (B = 1568 in the benchmark)
SEARCH_ROWS = 8192


@dataclass
class MaskedOutput:
    """Result of `MaskedQuantizer`.

    y_hat: (B, D, H, W) representation fed to the decoder (straight-through to the encoders).
    mask: (B, H', W', D') bool, the winning mask (bits last, as in `mvq.values.codes.Codes`).
    primary, secondary: the two `QuantizeOutput`.
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
        primary, secondary: the two codebooks (K/2 entries each in the paper); the secondary
            may be an FSQ or LFQ code instead (`mvq.quantize.secondary.ChannelCode`: the mask
            covers its rounded channels or signs).
        f: network mapping a masked secondary code map (B, D', H', W') to (B, D, H, W).
        num_masks: J, masks sampled while training.
        eval_masks: masks searched by `search` at inference (default: ``num_masks``);
            drawn once from ``search_seed`` and shared by every image, so codes are
            deterministic and independent of the batch an image sits in.
        chunk_size: hypotheses evaluated at once per instance in the no-grad search.
        search_seed: seed of the inference bank.
        naive: evaluate all J hypotheses with autograd (reference / benchmark only).
        mask_sampling: ``"instance"`` (J fresh masks for every instance, the paper's reading)
            or ``"batch"`` (one bank of J fresh masks per training step, shared by the batch's
            instances, which lets the table search run in training).
        search: ``"auto"`` (the table where it applies, else chunked), ``"table"`` (the table
            wherever it applies, whatever it costs) or ``"chunked"`` (the reference).
    """

    def __init__(
        self,
        primary: VectorQuantizer,
        secondary: VectorQuantizer | ChannelCode,
        f: nn.Module,
        num_masks: int = 64,
        eval_masks: int | None = None,
        chunk_size: int = 256,
        search_seed: int = 0,
        naive: bool = False,
        mask_sampling: str = "instance",
        search: str = "auto",
    ) -> None:
        super().__init__()
        if num_masks < 1:
            raise ValueError(f"num_masks must be >= 1, got {num_masks}")
        if mask_sampling not in MASK_SAMPLING:
            raise ValueError(f"mask_sampling must be one of {MASK_SAMPLING}, got {mask_sampling!r}")
        if search not in SEARCHES:
            raise ValueError(f"search must be one of {SEARCHES}, got {search!r}")
        self.primary, self.secondary, self.f = primary, secondary, f
        self.num_masks = num_masks
        self.eval_masks = eval_masks or num_masks
        self.chunk_size = max(1, chunk_size)
        self.search_seed = search_seed
        self.naive = naive
        self.mask_sampling, self.search = mask_sampling, search
        self._bank: tuple | None = None  # (key, bank) of the inference masks
        self._table: tuple | None = None  # (key, table, norms) kept at inference

    def train(self, mode: bool = True) -> MaskedQuantizer:
        # training changes the codebooks in place (EMA writes .data, which no version counter
        # sees): a kept table would be stale
        self._table = None
        return super().train(mode)

    # ------------------------------------------------------------------ helpers
    def run_f(self, c: torch.Tensor, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        """f on a masked secondary code map, given in f's own dtype: the codes come out of
        the quantizers in fp32 (their maths), f may have been cast (``.to(torch.bfloat16)``,
        ``.half()``, ``.double()``); under autocast the cast changes nothing. ``shape``: the
        (N, D, H, W) f must give (a custom f of another shape is refused, naming both)."""
        dtype = next((t.dtype for t in self.f.parameters() if t.is_floating_point()), None)
        out = self.f(c if dtype is None or c.dtype == dtype else c.to(dtype))
        if shape is not None and (not isinstance(out, torch.Tensor) or tuple(out.shape) != shape):
            found = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise MvqError(f"f maps a {tuple(c.shape)} masked secondary code to {found}; it must "
                           f"give {shape}, the primary code's (B, D, H, W)")
        return out

    def combine(self, e: torch.Tensor, e2: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """y_hat = e + f(e' * m) in e's dtype. e: (B,D,H,W), e2: (B,D',H',W'),
        mask: (B,D',H',W')."""
        return e + self.run_f(e2 * mask.to(e2.dtype), tuple(e.shape)).to(e.dtype)

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

    def training_masks(self, batch: int, like: torch.Tensor) -> torch.Tensor:
        """A training step's hypotheses: (B, J, D', H', W') per instance, or one (J, D', H', W')
        bank for the whole batch (``mask_sampling="batch"``)."""
        if self.mask_sampling == "batch":
            return self.sample_masks(1, self.num_masks, like)[0]
        return self.sample_masks(batch, self.num_masks, like)

    @torch.no_grad()
    def best_masks(self, e: torch.Tensor, e2: torch.Tensor, y: torch.Tensor,
                   masks: torch.Tensor, ids2: torch.Tensor | None = None,
                   codebook2: torch.Tensor | None = None) -> torch.Tensor:
        """Winner-takes-all search, no autograd.

        e, y: (B, D, H, W); e2: (B, D', H', W'); masks: (B, J, D', H', W') or (J, D', H', W')
        shared by the batch. ``ids2`` (B, H', W'), the secondary ids of e2, and ``codebook2``
        (K', D'), the rows e2 was looked up in (default: the secondary codebook), let the table
        search run where it applies (module docstring). Returns the winning masks
        (B, D', H', W') (bool).
        """
        shared = masks.dim() == e2.dim()
        if shared and self._use_table(e2, ids2):
            rows = self.secondary.embedding if codebook2 is None else codebook2
            ids, keep = ids2.reshape(-1), True
            if rows is None:  # an implicit codebook too large to keep: the codes in use
                used, ids = torch.unique(ids, return_inverse=True)
                rows, keep = self.secondary.rows(used), False
            j = self._table_search(e, y, masks, ids, rows.detach(), keep)
            return masks[j]
        return self._chunked_search(e, e2, y, masks)

    def _use_table(self, e2: torch.Tensor, ids2: torch.Tensor | None) -> bool:
        if ids2 is None or self.search == "chunked" or math.prod(e2.shape[2:]) != 1:
            return False
        # training: a fresh table per step pays K' x J calls of f, the chunked search B x J
        return self.search == "table" or not self.training or \
            self.secondary.num_codes <= e2.shape[0]

    def _chunked_search(self, e, e2, y, masks) -> torch.Tensor:
        b = e.shape[0]
        shared = masks.dim() == e2.dim()
        j_total = masks.shape[0] if shared else masks.shape[1]
        best_d = torch.full((b,), float("inf"), device=e.device, dtype=torch.float64)
        best_j = torch.zeros(b, dtype=torch.long, device=e.device)
        dtype = torch.promote_types(y.dtype, torch.float32)  # fp32 at least, fp64 kept
        target = (y - e).to(dtype)  # f(c) should approximate y - e
        step = max(1, min(self.chunk_size, SEARCH_ROWS // max(1, b)))  # masks per chunk
        for start in range(0, j_total, step):
            chunk = (masks[start : start + step] if shared else masks[:, start : start + step])
            jc = chunk.shape[0] if shared else chunk.shape[1]
            m = chunk.unsqueeze(0).expand(b, *chunk.shape) if shared else chunk
            c = (e2.unsqueeze(1) * m.to(e2.dtype)).flatten(0, 1)  # (B*jc, D', H', W')
            out = self.run_f(c, (b * jc, *y.shape[1:])).to(dtype).view(b, jc, *y.shape[1:])
            d = (out - target.unsqueeze(1)).pow(2).flatten(2).sum(2)  # (B, jc)
            d_min, j_min = d.min(1)
            better = d_min < best_d
            best_d = torch.where(better, d_min, best_d)
            best_j = torch.where(better, j_min + start, best_j)
        if shared:
            return masks[best_j]
        return masks[torch.arange(b, device=e.device), best_j]

    # ------------------------------------------------------------------ the table search
    def mask_table(self, rows: torch.Tensor, masks: torch.Tensor, dtype: torch.dtype
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """T[k, j] = f(rows[k] * masks[j]) flattened, and ||T[k, j]||^2.

        rows: (K', D') secondary code vectors; masks: (J, D', 1, 1). Returns (K', J, P) and
        (K', J) in ``dtype``; f runs on chunks of masks (memory bounded as the chunked
        search's)."""
        k, j = rows.shape[0], masks.shape[0]
        parts = []
        for start in range(0, j, self.chunk_size):
            m = masks[start : start + self.chunk_size].to(rows.dtype)  # (jc, D', 1, 1)
            c = rows[:, None, :, None, None] * m[None]  # (K', jc, D', 1, 1)
            parts.append(self.run_f(c.flatten(0, 1)).to(dtype).view(k, m.shape[0], -1))
        table = torch.cat(parts, 1) if len(parts) > 1 else parts[0]
        return table, table.pow(2).sum(2)

    def _kept_table(self, rows, masks, dtype, keep=True):
        """At inference: the table of the whole codebook, built once per weights and bank
        (``keep=False``: rows of one batch, never kept)."""
        if self.training or not keep:
            return self.mask_table(rows, masks, dtype)
        tensors = [rows, masks, *self.f.parameters(), *self.f.buffers()]
        key = (dtype, *((t.data_ptr(), t._version, t.dtype, t.device, tuple(t.shape))
                        for t in tensors))
        kept = self._table  # read once: a server's threads may share the layer
        if kept is None or kept[0] != key:
            kept = self._table = (key, *self.mask_table(rows, masks, dtype))
        return kept[1], kept[2]

    def _table_search(self, e, y, masks, ids, rows, keep=True) -> torch.Tensor:
        """Index of the winning mask per instance, by the table (module docstring)."""
        dtype = torch.promote_types(y.dtype, torch.float32)
        table, norms = self._kept_table(rows.to(torch.promote_types(rows.dtype, e.dtype)),
                                        masks, dtype, keep)
        target = (y - e).to(dtype).flatten(1)  # (B, P)
        if table.shape[2] != target.shape[1]:
            raise MvqError(f"f gives {table.shape[2]} values per instance, the primary code "
                           f"has {target.shape[1]}")
        return table_argmin(table, norms, ids, target)

    def eval_mask_bank(self, like: torch.Tensor) -> torch.Tensor:
        """The fixed, seeded bank of masks searched at inference: (J_eval, D', H', W').
        Drawn once per size, seed and device, then kept (the table search keys on it)."""
        key = (self.eval_masks, self.search_seed, tuple(like.shape[1:]), like.device)
        kept = self._bank
        if kept is None or kept[0] != key:
            gen = torch.Generator().manual_seed(self.search_seed)
            kept = self._bank = (key, self.sample_masks(1, self.eval_masks, like[:1],
                                                        generator=gen)[0])
        return kept[1]

    # ------------------------------------------------------------------ forward
    def forward(self, y: torch.Tensor, y2: torch.Tensor, masks: torch.Tensor | None = None
                ) -> MaskedOutput:
        """y: primary encoder output (B, D, H, W); y2: secondary (B, D', H', W').

        masks: optional hypotheses (B, J, D', H', W') or (J, D', H', W'); by default J fresh
        random masks (per instance or per batch, ``mask_sampling``) when training, the seeded
        bank at inference.
        """
        # the rows the secondary codes are looked up in, before training updates them: only
        # where the masks are shared, so the table search may use them
        shared = masks.dim() == y2.dim() if masks is not None else self.mask_sampling == "batch"
        book = self.secondary.embedding  # None: an implicit codebook too large to keep
        rows = (book.detach().clone()
                if book is not None and self.training and shared and self.search != "chunked"
                else None)
        q1, q2 = self.primary(y), self.secondary(y2)
        e, e2 = q1.quantized, q2.quantized  # straight-through codes
        if masks is None:
            masks = self.training_masks(y.shape[0], q2.codes) if self.training \
                else self.eval_mask_bank(q2.codes)
        if self.naive:
            y_hat, mask = self._naive(e, e2, y, masks)
        else:
            mask = self.best_masks(q1.codes.detach(), q2.codes.detach(), y.detach(), masks,
                                   q2.indices, rows)
            y_hat = self.combine(e, e2, mask)
        mhd = mse(y_hat.float(), y.float())
        return MaskedOutput(y_hat=y_hat, mask=mask.permute(0, 2, 3, 1), primary=q1, secondary=q2,
                            mhd_loss=mhd)

    def _naive(self, e, e2, y, masks):
        """All J hypotheses with autograd; the loss weight of every loser is zero (eq. 6)."""
        b = e.shape[0]
        if masks.dim() == e2.dim():
            masks = masks.unsqueeze(0).expand(b, *masks.shape)
        j = masks.shape[1]
        c = (e2.unsqueeze(1) * masks.to(e2.dtype)).flatten(0, 1)
        hyp = e.unsqueeze(1) + self.run_f(c, (b * j, *e.shape[1:])).to(e.dtype).view(
            b, j, *e.shape[1:])  # (B, J, D, H, W)
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
        `decode_codes`; none (N = 0) gives e + f(0).
        """
        e = self.primary.lookup(primary_ids)
        n, b, *grid2 = secondary_ids.shape
        masked = self.secondary.lookup(secondary_ids.flatten(0, 1))
        masked = masked.view(n, b, self.secondary.dim, *grid2)
        masked = masked * masks.permute(0, 1, 4, 2, 3).to(masked.dtype)
        if not sum_outputs or n == 0:
            return e + self.run_f(masked.sum(0)).to(e.dtype)
        f0 = self.run_f(torch.zeros_like(masked[0])).to(e.dtype)
        return e + f0 + sum(self.run_f(c).to(e.dtype) - f0 for c in masked)


def table_argmin(table: torch.Tensor, norms: torch.Tensor, ids: torch.Tensor,
                 target: torch.Tensor) -> torch.Tensor:
    """``argmin_j ||table[ids[b], j]||^2 - 2 table[ids[b], j] . target[b]`` for each b.

    table (K, J, P), norms (K, J), ids (B,), target (B, P) -> (B,). On the CPU the instances
    are sorted by id and each id's group is scored against its row of the table as VQ's
    nearest-code search scores codes (one fused GEMM): all groups padded to the largest in one
    batched GEMM when the ids are used evenly, one GEMM per id otherwise (reading the group
    sizes on the host costs nothing there).
    Elsewhere each instance's row is gathered (no host read; memory bounded by chunks).
    """
    k, j, p = table.shape
    b = ids.shape[0]
    if b == 0:
        return ids.new_zeros(0)
    if host_reads_free(ids):
        order = torch.argsort(ids)
        counts = torch.bincount(ids, minlength=k)
        width = int(counts.max())
        best = torch.empty_like(ids)
        if k * width <= 2 * b:  # even usage: every group padded to the largest, one GEMM
            sid = ids[order]
            rank = torch.arange(b, device=ids.device) - (counts.cumsum(0) - counts)[sid]
            x = target.new_zeros(k, width, p)
            x[sid, rank] = target[order]
            d = torch.baddbmm(norms[:, None, :], x, table.transpose(1, 2), alpha=-2.0)
            best[order] = row_argmin(d)[sid, rank]
            return best
        parts = []  # uneven usage: one GEMM per id
        for u, group in enumerate(target[order].split(counts.tolist())):
            if len(group):
                parts.append(row_argmin(torch.addmm(norms[u], group, table[u].t(), alpha=-2.0)))
        best[order] = torch.cat(parts)
        return best
    step = max(1, (1 << 22) // max(1, j * p))  # ~4 M gathered values at a time
    return torch.cat([
        (norms[ids[s : s + step]]
         - 2 * torch.bmm(table[ids[s : s + step]], target[s : s + step, :, None])[..., 0]
         ).argmin(1) for s in range(0, b, step)])
