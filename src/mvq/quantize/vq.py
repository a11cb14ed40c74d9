"""Vector quantization: nearest code in fp32, straight-through, explicit codebook + beta commitment.

The loss follows the VQ-VAE paper (and MVQ eq. 2) exactly:

    L_cb(y, e) = ||sg[y] - e||^2  +  beta * ||y - sg[e]||^2
                 ^ moves the codebook  ^ moves the encoder ("commitment")

Several public implementations swap the two terms (taming's ``legacy=True``); the tests check
which parameters each term moves. With ``ema=True`` the codebook is updated by exponential
moving averages of assigned encoder outputs instead of the first term, which keeps MVQ stable
(docs/architecture.md, "Measured design decisions": gradient codebooks diverged on
FashionMNIST, EMA ones did not).
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
    LOOKUP_RENAMED,
    check_bool,
    check_codebook,
    check_int,
    check_vq_kwargs,
    linear,
)
from mvq.quantize.layout import (
    as_rows,
    check_ids,
    check_input,
    check_map,
    from_columns,
    to_columns,
)
from mvq.runtime import distributed
from mvq.runtime.devices import host_reads_free

NEAREST_BLOCK = 1 << 19  # distances scored at once by the nearest-code search (2 MB in fp32)


@dataclass
class QuantizeOutput:
    """Result of `VectorQuantize.quantize` (and of the multichannel and MVQ layers' codebooks).

    quantized: (B, D, H, W) straight-through codes (forward value = codes, gradient -> input).
    codes: (B, D, H, W) the raw code vectors (gradient -> codebook only).
    indices: (B, H, W) int64 code ids ((B, H, W, c) from `MultiChannelVectorQuantize`).
    codebook_loss, commit_loss: scalars (commit_loss not yet multiplied by beta).
    loss: codebook_loss (gradient codebooks only) + beta * commit_loss.
    """

    quantized: torch.Tensor
    codes: torch.Tensor
    indices: torch.Tensor
    loss: torch.Tensor
    codebook_loss: torch.Tensor
    commit_loss: torch.Tensor


class VectorQuantize(nn.Module):
    """Nearest-code VQ with a straight-through gradient, EMA codebook by default.

    ``quantized, indices, loss = vq(x)``: x ``(B, N, D)`` (or ``(B, D, H, W)`` with
    ``channel_first``); quantized has x's shape, indices ``(B, N)`` (``(B, H, W)``), loss the
    commitment term ``beta * ||x - sg[e]||^2`` (plus ``||sg[x] - e||^2`` without EMA).
    ``vq.quantize(z)`` gives the detailed output the tokenizers use
    ([`QuantizeOutput`][mvq.quantize.vq.QuantizeOutput]: every loss term, the raw codes) on a
    ``(B, D, H, W)`` map of the looked-up size.

    Args:
        dim: vector size D.
        codebook_size: entries K.
        channel_first: inputs are ``(B, D, ...)`` feature maps.
        codebook_dim: search a codebook of this size: a linear map takes each vector from
            ``dim`` down to it before the lookup and another back after (ViT-VQGAN's
            low-dimensional code lookup; the loss is the looked-up space's). Default ``dim``:
            no projection.
        cosine: search and output on the unit sphere: inputs and codes are l2-normalised
            (ViT-VQGAN's cosine code lookup); the losses compare the normalised vectors.
        rotation_trick: pass the gradient to the input through the rotation that takes it
            onto its code, scaled by their norm ratio (Fifty et al. 2024, "Restructuring
            Vector Quantization with the Rotation Trick"), instead of straight through; the
            forward value is the code either way.
        beta: ``beta=0.25``, the weight of the commitment term.
        ema: ``ema=True``, update the codebook with exponential moving averages (no codebook
            gradient term).
        decay: ``decay=0.99``, the EMA decay.
        eps: ``eps=1e-5``, the EMA smoothing.
        restart_dead: ``restart_dead=True``, re-seed codes whose running usage falls below
            ``dead_threshold`` from random vectors of the batch.
        dead_threshold: ``dead_threshold=0.03``, expected assignments per batch below which a
            code is dead.
        kmeans_init: ``kmeans_init=False``, k-means on the first training batch.
    """

    def __init__(self, dim: int, codebook_size: int, *, channel_first: bool = False,
                 codebook_dim: int | None = None, cosine: bool = False,
                 rotation_trick: bool = False, beta: float = 0.25, ema: bool = True,
                 decay: float = 0.99, eps: float = 1e-5, restart_dead: bool = True,
                 dead_threshold: float = 0.03, kmeans_init: bool = False,
                 **kwargs: object) -> None:
        layer = "VectorQuantize"
        check_int(layer, "dim", dim, 1, "dim=64")
        check_int(layer, "codebook_size", codebook_size, 1, "codebook_size=512")
        lookup = dim if codebook_dim is None else check_int(layer, "codebook_dim", codebook_dim,
                                                            1, "codebook_dim=8")
        for name, value in (("channel_first", channel_first), ("cosine", cosine),
                            ("rotation_trick", rotation_trick)):
            check_bool(layer, name, value)
        check_vq_kwargs(layer, {**kwargs, "beta": beta, "ema": ema, "decay": decay, "eps": eps,
                                "restart_dead": restart_dead, "dead_threshold": dead_threshold,
                                "kmeans_init": kmeans_init},
                        "dim, codebook_size, channel_first, codebook_dim, cosine, "
                        "rotation_trick", LOOKUP_RENAMED)
        check_codebook(layer, codebook_size, lookup)
        super().__init__()
        self.num_codes, self.dim, self.input_dim = codebook_size, lookup, dim
        self.channel_first, self.beta = channel_first, beta
        self.ema, self.decay, self.eps = ema, decay, eps
        self.restart_dead, self.dead_threshold = restart_dead, dead_threshold
        self.kmeans_init = kmeans_init
        self.cosine, self.rotation_trick = cosine, rotation_trick
        weight = torch.empty(codebook_size, lookup).uniform_(-1.0 / codebook_size,
                                                             1.0 / codebook_size)
        self.embedding = nn.Parameter(weight, requires_grad=not ema)
        # Running assignment counts (all modes: drives dead-code restart and usage stats).
        self.register_buffer("cluster_size", torch.ones(codebook_size))
        self.register_buffer("embed_sum", weight.clone())
        self.register_buffer("initialized", torch.tensor(not kmeans_init))
        # training batches holding NaN / Inf: their codebook update is skipped and counted
        # (no host read per step); `check_finite` raises on a count
        self.register_buffer("nonfinite_batches", torch.zeros((), dtype=torch.long),
                             persistent=False)
        self._init_checked = not kmeans_init  # host mirror of ``initialized`` once True
        self._calls = 0
        projects = lookup != dim
        self.project_in = nn.Linear(dim, lookup) if projects else nn.Identity()
        self.project_out = nn.Linear(lookup, dim) if projects else nn.Identity()

    CHECK_EVERY = 100  # training calls between two host reads of ``nonfinite_batches``

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        self._init_checked = False  # a loaded ``initialized`` is read again
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def check_finite(self) -> None:
        """MvqError when training batches held NaN or Inf since the last check (their
        codebook updates were skipped); one host read. The training engine calls it at its
        log steps, a standalone layer every ``CHECK_EVERY`` training calls."""
        bad = int(self.nonfinite_batches)
        if bad:
            self.nonfinite_batches.zero_()
            raise MvqError(f"{type(self).__name__}: {bad} training batch(es) held NaN or "
                           "infinite values; their codebook updates were skipped. Find where "
                           "the encoder output stops being finite (lower the learning rate, "
                           "check the input)")

    # ----------------------------------------------------------------- lookups
    def codebook(self) -> torch.Tensor:
        """The code vectors as the search and the output use them: the embedding, each row
        at unit length under ``cosine`` (the EMA averages normalised inputs)."""
        return F.normalize(self.embedding, dim=1) if self.cosine else self.embedding

    @torch.no_grad()
    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        """Ids of the nearest codes, computed in fp32. flat: (N, D) -> (N,)."""
        if flat.dtype != torch.float64:
            flat = flat.float()
        weight = self.codebook().to(flat.dtype)
        # ||x||^2 is the same for every code: argmin over ||e||^2 - 2 x.e (one fused addmm),
        # in blocks of rows whose distances stay in the cache (a (N, K) matrix would not)
        norms, codes_t = weight.pow(2).sum(1), weight.t()
        rows = max(1, NEAREST_BLOCK // self.num_codes)
        if flat.shape[0] <= rows:
            return row_argmin(torch.addmm(norms, flat, codes_t, alpha=-2.0))
        out = torch.empty(flat.shape[0], dtype=torch.long, device=flat.device)
        block = flat.new_empty(rows, self.num_codes)
        for start in range(0, flat.shape[0], rows):
            part = flat[start : start + rows]
            dist = torch.addmm(norms, part, codes_t, alpha=-2.0, out=block[: len(part)])
            out[start : start + rows] = row_argmin(dist)
        return out

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Code vectors for ids. indices: (B, H, W) -> (B, D, H, W)."""
        if indices.numel() and (indices.min() < 0 or indices.max() >= self.num_codes):
            raise MvqError(
                f"code ids must lie in [0, {self.num_codes}), found "
                f"[{int(indices.min())}, {int(indices.max())}]"
            )
        return F.embedding(indices, self.codebook()).permute(0, 3, 1, 2).contiguous()

    # ----------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x -> (quantized, indices, loss); see the class docstring for shapes."""
        x = check_input(x, self.input_dim, self.channel_first, "VectorQuantize")
        if self.input_dim != self.dim:
            return self._projected(x)
        if not self.channel_first:  # (B, ..., D): its rows as (M, D, 1, 1), no transpose
            out = self.quantize(as_rows(x, self.dim))
            return out.quantized.reshape(x.shape), out.indices.reshape(x.shape[:-1]), out.loss
        z, grid = to_columns(x, self.channel_first)
        out = self.quantize(z)
        return (from_columns(out.quantized, grid, self.channel_first),
                out.indices.reshape(x.shape[0], *grid), out.loss)

    def _projected(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Down to ``codebook_dim``, the lookup, back up (fp32 maths under autocast)."""
        last = x.movedim(1, -1) if self.channel_first else x
        with torch.autocast(device_type=x.device.type, enabled=False):
            rows = last.reshape(-1, self.input_dim)
            rows = rows if rows.dtype == torch.float64 else rows.float()
            out = self.quantize(linear(self.project_in, rows)[:, :, None, None])
            up = linear(self.project_out, out.quantized.flatten(1)).reshape(last.shape)
        up = up.movedim(-1, 1) if self.channel_first else up
        return up.to(x.dtype), out.indices.reshape(last.shape[:-1]), out.loss

    def get_output_from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Code vectors for ids ``(B, *grid)`` (after ``project_out``), in the layer's layout."""
        check_ids(indices, "indices")
        grid = tuple(indices.shape[1:])
        codes = self.lookup(indices.reshape(indices.shape[0], math.prod(grid), 1))  # (B, D, N, 1)
        if self.input_dim != self.dim:
            with torch.autocast(device_type=codes.device.type, enabled=False):
                up = linear(self.project_out, codes.squeeze(-1).transpose(1, 2))
            codes = up.transpose(1, 2).unsqueeze(-1)
        return from_columns(codes, grid, self.channel_first)

    def quantize(self, z: torch.Tensor) -> QuantizeOutput:
        """The detailed output on z, a ``(B, D, H, W)`` map of the looked-up size
        (``codebook_dim``): every loss term, the raw codes."""
        check_map(z, self.dim, f"{type(self).__name__}.quantize takes")
        with torch.autocast(device_type=z.device.type, enabled=False):
            z32 = z if z.dtype == torch.float64 else z.float()  # at least fp32
            if self.cosine:
                z32 = F.normalize(z32, dim=1)
            flat = z32.permute(0, 2, 3, 1).reshape(-1, self.dim)
            empty = flat.shape[0] == 0  # an empty batch or grid: no update, zero losses
            if self.training and not self._init_checked and not empty:
                if not bool(self.initialized):  # read until it is True, then never again
                    self._kmeans(flat.detach())
                self._init_checked = True
            indices = self.nearest(flat)
            codes = F.embedding(indices, self.codebook()).to(z32.dtype)
            codes = codes.view(z.shape[0], z.shape[2], z.shape[3], self.dim).permute(0, 3, 1, 2)
            codebook_loss = mse(codes, z32.detach())  # ||sg[y] - e||^2: moves e
            commit_loss = mse(z32, codes.detach())  # ||y - sg[e]||^2: moves y
            if self.training and not empty:
                self._update_stats(flat.detach(), indices)
            else:  # one host read per call at inference: codes of NaN would mean nothing
                self._check_eval_input(flat)
            loss = self.beta * commit_loss
            if not self.ema:
                loss = loss + codebook_loss
            if self.rotation_trick and torch.is_grad_enabled() and z32.requires_grad:
                quantized = rotated(z32, codes)
            else:
                quantized = z32 + (codes - z32).detach()  # straight-through estimator
        return QuantizeOutput(
            quantized=quantized.to(z.dtype),
            codes=codes,
            indices=indices.view(z.shape[0], z.shape[2], z.shape[3]),
            loss=loss,
            codebook_loss=codebook_loss,
            commit_loss=commit_loss,
        )

    def _check_eval_input(self, flat: torch.Tensor) -> None:
        if flat.numel() and not bool(torch.isfinite(flat).all()):
            raise MvqError(f"{type(self).__name__}: the input holds NaN or infinite values; "
                           "its codes would be meaningless. Clean the input (torch.isfinite)")

    # ----------------------------------------------------------------- training-time updates
    @torch.no_grad()
    def _update_stats(self, flat: torch.Tensor, indices: torch.Tensor) -> None:
        ok = torch.isfinite(flat).all()
        self.nonfinite_batches.add_(~ok)
        self._calls += 1
        free = host_reads_free(flat)
        if free or self._calls % self.CHECK_EVERY == 0:
            self.check_finite()  # the CPU: at once, before any update; else every CHECK_EVERY
        # off the CPU a batch that is not finite updates nothing: decay 1, zeroed vectors
        decay = self.decay if free else torch.where(ok, self.decay, 1.0).to(flat.dtype)
        if not free:
            flat = torch.where(ok, flat, torch.zeros((), dtype=flat.dtype, device=flat.device))
        counts = torch.bincount(indices, minlength=self.num_codes).to(flat.dtype)
        if self.ema:  # per-code sums without a (N, K) one-hot matrix
            sums = torch.zeros_like(self.embed_sum).index_add_(0, indices,
                                                               flat.to(self.embed_sum.dtype))
            if distributed.world_size() > 1:  # the global batch's statistics, one collective
                both = distributed.all_reduce_sum_(torch.cat([counts[:, None].to(sums.dtype),
                                                              sums], 1))
                counts, sums = both[:, 0].to(counts.dtype), both[:, 1:]
            _ema_(self.embed_sum, sums, decay)
        else:
            distributed.all_reduce_sum_(counts)
        _ema_(self.cluster_size, counts, decay)
        if self.ema:
            n = self.cluster_size.sum()
            smoothed = (self.cluster_size + self.eps) / (n + self.num_codes * self.eps) * n
            self.embedding.data.copy_(self.embed_sum / smoothed[:, None])
        if self.restart_dead:
            if free:
                self._restart(flat)
            else:
                self._restart_in_place(flat, ok)

    def _dead(self, flat: torch.Tensor) -> tuple[torch.Tensor, float]:
        expected = flat.shape[0] * distributed.world_size() / self.num_codes  # equal shares
        return self.cluster_size < self.dead_threshold * expected, expected

    @torch.no_grad()
    def _restart(self, flat: torch.Tensor) -> None:
        """Re-seed rarely used codes from this batch (rank 0's share under DDP)."""
        dead, expected = self._dead(flat)
        n_dead = int(dead.sum())  # the same on every rank: cluster_size is the global one
        if n_dead == 0:
            return
        pick = torch.randint(0, flat.shape[0], (n_dead,), device=flat.device)
        fresh = flat[pick] + 1e-3 * flat.std() * torch.randn_like(flat[pick])
        distributed.broadcast_(fresh)  # rank 0's draw everywhere
        self.embedding.data[dead] = fresh.to(self.embedding.dtype)
        self.cluster_size[dead] = expected
        self.embed_sum[dead] = fresh * expected  # keeps embedding == embed_sum / cluster_size

    @torch.no_grad()
    def _restart_in_place(self, flat: torch.Tensor, ok: torch.Tensor) -> None:
        """`_restart` without reading the number of dead codes on the host: a fresh
        candidate is drawn for every code and taken where the code is dead (and the batch
        finite). Same rule, other random draws."""
        dead, expected = self._dead(flat)
        dead = dead & ok
        pick = torch.randint(0, flat.shape[0], (self.num_codes,), device=flat.device)
        fresh = flat[pick] + 1e-3 * flat.std() * torch.randn_like(flat[pick])
        distributed.broadcast_(fresh)
        column = dead[:, None]
        self.embedding.data.copy_(torch.where(column, fresh.to(self.embedding.dtype),
                                              self.embedding.data))
        self.cluster_size.copy_(torch.where(dead, expected, self.cluster_size))
        self.embed_sum.copy_(torch.where(column, fresh * expected, self.embed_sum))

    @torch.no_grad()
    def _kmeans(self, flat: torch.Tensor, iters: int = 10) -> None:
        pick = torch.randperm(flat.shape[0], device=flat.device)[: self.num_codes]
        centers = flat[pick]
        if centers.shape[0] < self.num_codes:  # fewer vectors than codes: repeat with noise
            reps = centers[torch.randint(0, centers.shape[0], (self.num_codes - centers.shape[0],))]
            centers = torch.cat([centers, reps + 1e-3 * torch.randn_like(reps)])
        for _ in range(iters):
            assign = torch.cdist(flat, centers).argmin(1)
            for k in range(self.num_codes):
                members = flat[assign == k]
                if len(members):
                    centers[k] = members.mean(0)
        distributed.broadcast_(centers)  # rank 0's clustering everywhere
        self.embedding.data.copy_(centers)
        self.cluster_size.fill_(flat.shape[0] * distributed.world_size() / self.num_codes)
        self.embed_sum.copy_(centers * self.cluster_size[:, None])
        self.initialized.fill_(True)

    def extra_repr(self) -> str:
        return (f"K={self.num_codes}, D={self.dim}, beta={self.beta}, ema={self.ema}"
                + ", cosine" * self.cosine + ", rotation_trick" * self.rotation_trick)


def rotated(z: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """The codes ``(B, D, H, W)`` in the forward pass; in the backward pass the rotation
    trick's gradient to z: with u = z / |z| and q = e / |e| (constants), R = I - 2 w w^T +
    2 q u^T for w = (u + q) / |u + q| turns u onto q, and the output's gradient reaches z as
    (|e| / |z|) R^T g. R and the scale are held constant, so the map is linear in z."""
    tiny = torch.finfo(z.dtype).tiny
    e, x = codes.detach(), z.detach()
    z_norm, e_norm = x.norm(dim=1, keepdim=True), e.norm(dim=1, keepdim=True)
    q, live = e / e_norm.clamp_min(tiny), z_norm > 0
    u = torch.where(live, x / z_norm.clamp_min(tiny), q)  # z = 0: R = I, straight through
    w = F.normalize(u + q, dim=1)  # 0 where u = -q: R is then I + 2 q u^T, still u -> q
    turned = z - 2 * (z * w).sum(1, keepdim=True) * w + 2 * (z * u).sum(1, keepdim=True) * q
    moved = turned * torch.where(live, e_norm / z_norm.clamp_min(tiny), 1.0)
    return e + (moved - moved.detach())  # the code's exact value, the rotation's gradient


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``F.mse_loss(a, b)``, and 0 (still in the graph) for empty tensors, whose mean is NaN."""
    if a.numel():
        return F.mse_loss(a, b)
    return (a.sum() + b.sum()) * 0.0


def _ema_(buffer: torch.Tensor, new: torch.Tensor, decay: float | torch.Tensor) -> None:
    """buffer <- decay * buffer + (1 - decay) * new, in place (decay a number or a 0-d
    tensor, which is read on no host)."""
    if isinstance(decay, torch.Tensor):
        buffer.mul_(decay).add_(new * (1 - decay))
    else:
        buffer.mul_(decay).add_(new, alpha=1 - decay)


def usage_perplexity(indices: torch.Tensor, num_codes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Usage (fraction of codes used) and perplexity of a batch of ids, as 0-d tensors on the
    ids' device (a training step reads them on the host only when it logs)."""
    counts = torch.bincount(indices.reshape(-1), minlength=num_codes).float()
    p = counts / counts.sum().clamp_min(1)
    entropy = -torch.special.xlogy(p, p).sum()
    return (counts > 0).float().mean(), entropy.exp()


def code_stats(indices: torch.Tensor, num_codes: int) -> dict[str, float]:
    """Usage (fraction of codes used) and perplexity of a batch of ids, as floats."""
    usage, perplexity = usage_perplexity(indices, num_codes)
    return {"usage": float(usage), "perplexity": float(perplexity)}
