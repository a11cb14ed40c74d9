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
from mvq.quantize.arguments import (
    check_bool,
    check_choice,
    check_codebook,
    check_int,
    check_module,
    check_optional_int,
    check_vq_kwargs,
)
from mvq.quantize.layout import (
    as_rows,
    check_ids,
    check_input,
    check_map,
    check_mask,
    from_columns,
    to_columns,
)
from mvq.quantize.pointwise import Pointwise, pointwise_mlp
from mvq.quantize.secondary import ChannelCode
from mvq.quantize.vq import QuantizeOutput, VectorQuantize, mse
from mvq.runtime.devices import host_reads_free
from mvq.runtime.memory import check_fits

MASK_SAMPLING = ("instance", "batch")  # J masks per instance (the paper) / one bank per batch
SEARCHES = ("auto", "table", "chunked")
# hypotheses f scores at once in the chunked search (B x masks per chunk), so that its
# activations stay in the cache when every position is an instance (B = 1568 in the benchmark)
SEARCH_ROWS = 8192


@dataclass
class MaskedOutput:
    """Result of `MaskedVectorQuantize.quantize`.

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


class MaskedVectorQuantize(nn.Module):
    """Masked VQ with Multiple Hypotheses Dropout (MVQ paper, section 3) as one layer.

    Each position gets a primary code e, a secondary code e' of the secondary projection
    y' = E'(x), and a mask m over e''s D' channels; the output is ``e + f(e' * m)`` (eq. 5).
    Training searches ``num_masks`` random masks per position and keeps the nearest to x
    (winner takes all); at inference the search runs over a fixed seeded bank, so codes are
    deterministic.

    ``quantized, (indices, indices2), loss, mask = mvq(x)``: x ``(B, N, D)`` (or
    ``(B, D, H, W)``); ids ``(B, N)`` each; mask ``(B, N, D')`` bool; loss = primary VQ +
    secondary quantizer + MH-Dropout terms.

    The layer owns E' and f. By default both are per position (a 1x1 convolution and a
    two-layer 1x1 MLP), so every position is an independent instance of the search. Give your
    own ``secondary_encoder`` ((B, D, H, W) -> (B, D', H', W'), e.g. a downsampling network)
    and ``f`` ((B, D', H', W') -> (B, D, H, W)) for a coarser secondary grid (VQ-VAE-2 style,
    as the tokenizers do); then inputs must be ``channel_first`` maps, each image is one
    instance, and ids / mask follow the two grids: ``(B, H, W)``, ``(B, H', W')``,
    ``(B, H', W', D')``.

    Args:
        dim: D, the input's vector size.
        codebook_size: K of the primary codebook (the paper gives each codebook K/2).
        dim2: D', the secondary code's size and the mask's bits (default D).
        codebook_size2: K' of the secondary codebook (default K).
        num_masks: J, hypotheses per instance while training.
        eval_masks: the size of the seeded bank searched at inference (default J).
        secondary_encoder: E', (B, D, H, W) -> (B, D', H', W') (default: a 1x1 convolution).
        f: (B, D', H', W') -> (B, D, H, W) (default: a 1x1 two-layer MLP).
        hidden: width of the default f (default 2 max(D, D')).
        channel_first: inputs are ``(B, D, ...)`` feature maps.
        chunk_size: hypotheses scored at once in the search (memory bound, not a result).
        search_seed: seed of the inference bank.
        naive: score all J hypotheses with autograd (a reference; slower, same gradients).
        mask_sampling: ``"instance"`` (J fresh masks per instance while training, the paper's
            reading) or ``"batch"`` (one bank of J fresh masks per step, shared by the batch's
            instances: the search becomes a table lookup, docs/implementation.md).
        search: ``"auto"``, ``"table"`` or ``"chunked"`` (the reference search); the winners
            are the same.
        secondary: the secondary quantizer: ``None`` (a VQ codebook of ``codebook_size2``
            entries of ``dim2``) or a channel-code layer, ``mvq.FSQ(levels)`` (e' = the rounded
            channels, D' = len(levels), K' = prod(levels)) or ``mvq.LFQ(bits)`` (e' = the
            signs, D' = bits, K' = 2^bits), built without ``dim`` (no projection: the mask
            covers the code's own channels); ``dim2`` and ``codebook_size2`` follow from it.
            Its loss (LFQ's commitment and entropy terms; FSQ has none) joins the layer's.
        **vq_kwargs: both codebooks' ``beta``, ``ema``, ``decay``, ``eps``,
            ``restart_dead``, ``dead_threshold``, ``kmeans_init`` (the primary's only when
            ``secondary`` is a channel code).
    """

    def __init__(self, dim: int, codebook_size: int, *, dim2: int | None = None,
                 codebook_size2: int | None = None, num_masks: int = 64,
                 eval_masks: int | None = None, secondary_encoder: nn.Module | None = None,
                 f: nn.Module | None = None, hidden: int | None = None,
                 channel_first: bool = False, chunk_size: int = 256, search_seed: int = 0,
                 naive: bool = False, mask_sampling: str = "instance", search: str = "auto",
                 secondary: nn.Module | None = None, **vq_kwargs: object) -> None:
        layer = "MaskedVectorQuantize"
        check_int(layer, "dim", dim, 1, "dim=64")
        check_int(layer, "codebook_size", codebook_size, 1, "codebook_size=512")
        channel_code = None if secondary is None else ChannelCode(secondary)
        if channel_code is not None:
            for name, given, implied in (("dim2", dim2, channel_code.dim),
                                         ("codebook_size2", codebook_size2,
                                          channel_code.num_codes)):
                if given is not None and given != implied:
                    raise MvqError(f"MaskedVectorQuantize: {name}={given!r} disagrees with the "
                                   f"secondary {type(secondary).__name__}, which has {implied}; "
                                   f"leave {name} out")
            dim2, codebook_size2 = channel_code.dim, channel_code.num_codes
        dim2 = check_optional_int(layer, "dim2", dim2, 1, "dim2=16 (or None: dim)") or dim
        codebook_size2 = check_optional_int(layer, "codebook_size2", codebook_size2, 1,
                                            "codebook_size2=512 (or None: codebook_size)"
                                            ) or codebook_size
        check_int(layer, "num_masks", num_masks, 1, "num_masks=64")
        check_optional_int(layer, "eval_masks", eval_masks, 1, "eval_masks=256 (or None: "
                           "num_masks)")
        check_optional_int(layer, "hidden", hidden, 1, "hidden=128 (or None: 2 max(dim, dim2))")
        check_int(layer, "chunk_size", chunk_size, 1, "chunk_size=256")
        check_int(layer, "search_seed", search_seed, 0, "search_seed=0")
        check_bool(layer, "channel_first", channel_first)
        check_bool(layer, "naive", naive)
        check_choice(layer, "mask_sampling", mask_sampling, MASK_SAMPLING)
        check_choice(layer, "search", search, SEARCHES)
        check_module(layer, "secondary_encoder", secondary_encoder)
        check_module(layer, "f", f)
        vq_kwargs = check_vq_kwargs(layer, vq_kwargs, "dim, codebook_size, dim2, codebook_size2, "
                                    "num_masks, eval_masks, secondary_encoder, f, hidden, "
                                    "channel_first, chunk_size, search_seed, naive, "
                                    "mask_sampling, search, secondary")
        check_codebook(layer, codebook_size + (0 if channel_code else codebook_size2),
                       max(dim, dim2))
        custom = secondary_encoder is not None or f is not None
        if custom and (secondary_encoder is None or f is None):
            raise MvqError("MaskedVectorQuantize: give both secondary_encoder and f, or neither "
                           "(the per-position defaults)")
        if custom and not channel_first:
            raise MvqError("MaskedVectorQuantize: a custom secondary_encoder / f works on "
                           "feature maps; pass channel_first=True and (B, D, H, W) inputs")
        super().__init__()
        self.primary = VectorQuantize(dim, codebook_size, channel_first=True, **vq_kwargs)
        self.secondary = channel_code or VectorQuantize(dim2, codebook_size2,
                                                        channel_first=True, **vq_kwargs)
        width = hidden or 2 * max(dim, dim2)
        self.f = f if custom else pointwise_mlp(dim2, dim, width)
        self.secondary_encoder = secondary_encoder if custom else Pointwise(dim, dim2)
        self.per_position = not custom
        self.channel_first = channel_first
        self.dim, self.dim2 = dim, dim2
        self.num_masks = num_masks
        self.eval_masks = eval_masks or num_masks
        self.chunk_size = chunk_size
        self.search_seed = search_seed
        self.naive = naive
        self.mask_sampling, self.search = mask_sampling, search
        self._bank: tuple | None = None  # (key, bank) of the inference masks
        self._table: tuple | None = None  # (key, table, norms) kept at inference


    def train(self, mode: bool = True) -> MaskedVectorQuantize:
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
    def quantize(self, y: torch.Tensor, masks: torch.Tensor | None = None,
                 y2: torch.Tensor | None = None) -> MaskedOutput:
        """The detailed output on y, the primary encoder output (B, D, H, W), each image one
        instance (the per-position layer's instances are (B*N, D, 1, 1) maps).

        masks: optional hypotheses, bits (bool, or 0 / 1 numbers), (B, J, D', H', W') per
            instance or (J, D', H', W') shared by the batch, J >= 1; by default J fresh
        random masks (per instance or per batch, ``mask_sampling``) when training, the seeded
        bank at inference. y2: the secondary projection (B, D', H', W') when computed
        elsewhere (default ``secondary_encoder(y)``).
        """
        check_map(y, self.dim, "MaskedVectorQuantize.quantize: y, the primary encoder output, "
                  "must be")
        if y2 is None:
            y2 = self.secondary_encoder(y)
        check_map(y2, self.dim2, "MaskedVectorQuantize.quantize: y2, the secondary projection, "
                  "must be")
        if masks is not None:
            masks = self._check_masks(masks, y2)
        # the rows the secondary codes are looked up in, before training updates them: only
        # where the masks are shared, so the table search may use them
        shared = masks.dim() == y2.dim() if masks is not None else self.mask_sampling == "batch"
        book = self.secondary.embedding  # None: an implicit codebook too large to keep
        rows = (book.detach().clone()
                if book is not None and self.training and shared and self.search != "chunked"
                else None)
        q1, q2 = self.primary.quantize(y), self.secondary.quantize(y2)
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

    def _check_masks(self, masks: object, y2: torch.Tensor) -> torch.Tensor:
        """The hypotheses as bool, (B, J, D', H', W') or (J, D', H', W') with J >= 1."""
        grid = tuple(y2.shape[2:])
        ok = (isinstance(masks, torch.Tensor) and not masks.is_complex()
              and ((masks.dim() == 4 and tuple(masks.shape[1:]) == (self.dim2, *grid))
                   or (masks.dim() == 5 and masks.shape[0] == y2.shape[0]
                       and tuple(masks.shape[2:]) == (self.dim2, *grid)))
              and masks.shape[-4] >= 1)
        if not ok:
            found = (f"a {masks.dtype} tensor of shape {tuple(masks.shape)}"
                     if isinstance(masks, torch.Tensor) else type(masks).__name__)
            where = ", ".join(map(str, (self.dim2, *grid)))
            raise MvqError(f"MaskedVectorQuantize.quantize: masks must be bits, (B, J, {where}) "
                           f"per instance or (J, {where}) shared by the batch of "
                           f"{y2.shape[0]}, J >= 1; found {found}")
        return check_mask(masks, tuple(masks.shape))

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

    def _instances(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        """Per-position: (B*N, D, 1, 1) instances; custom modules: the map as it is."""
        if not self.per_position:
            if x.dim() != 4:
                raise MvqError(f"MaskedVectorQuantize with custom modules expects (B, {self.dim}, "
                               f"H, W), found shape {tuple(x.shape)}")
            return x, tuple(x.shape[2:])
        if not self.channel_first:
            return as_rows(x, self.dim), tuple(x.shape[1:-1])
        z, grid = to_columns(x, self.channel_first)  # (B, D, N, 1)
        return z.permute(0, 2, 1, 3).reshape(-1, self.dim, 1, 1), grid

    def _restore(self, y: torch.Tensor, batch: int, grid: tuple[int, ...]) -> torch.Tensor:
        if not self.per_position:
            return y
        if not self.channel_first:  # the rows of as_rows, back in place
            return y.reshape(batch, *grid, self.dim)
        cols = y.reshape(batch, math.prod(grid), self.dim, 1).permute(0, 2, 1, 3)  # (B, D, N, 1)
        return from_columns(cols, grid, self.channel_first)

    def forward(self, x: torch.Tensor):
        """x -> (quantized, (ids, ids2), loss, mask); see the class docstring for shapes."""
        x = check_input(x, self.dim, self.channel_first, "MaskedVectorQuantize")
        z, grid = self._instances(x)
        out = self.quantize(z)
        loss = out.primary.loss + out.secondary.loss + out.mhd_loss
        b = x.shape[0]
        if self.per_position:
            ids = out.primary.indices.reshape(b, *grid)
            return (self._restore(out.y_hat, b, grid),
                    (ids, out.secondary.indices.reshape(b, *grid)), loss,
                    out.mask.reshape(b, *grid, self.dim2))
        return out.y_hat, (out.primary.indices, out.secondary.indices), loss, out.mask

    def get_output_from_indices(self, indices: torch.Tensor, indices2: torch.Tensor,
                                mask: torch.Tensor) -> torch.Tensor:
        """``e + f(e' * m)`` for ids and mask in the layouts ``forward`` returns."""
        check_ids(indices, "indices"), check_ids(indices2, "indices2")
        if not self.per_position:
            if indices.dim() != 3 or indices2.dim() != 3 or indices.shape[0] != indices2.shape[0]:
                raise MvqError(f"indices and indices2 must be (B, H, W) and (B, H', W'), found "
                               f"{tuple(indices.shape)} and {tuple(indices2.shape)}")
            mask = check_mask(mask, (*indices2.shape, self.dim2))
            return self.decode_codes(indices, indices2, mask)
        check_ids(indices2, "indices2", indices.shape)
        mask = check_mask(mask, (*indices.shape, self.dim2))
        b, grid = indices.shape[0], tuple(indices.shape[1:])
        flat = (indices.reshape(-1, 1, 1), indices2.reshape(-1, 1, 1),
                mask.reshape(-1, 1, 1, self.dim2))
        return self._restore(self.decode_codes(*flat), b, grid)


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
