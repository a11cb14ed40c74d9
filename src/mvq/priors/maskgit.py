"""MaskGIT-style bidirectional prior over multichannel tokens (MoVQ paper 3.2).

Tokens come as (B, L, c): L positions, c channel indices per position (c = 1 is plain
MaskGIT). Per position the c channel tokens are embedded with one shared table (the MoVQ
channels share a codebook), concatenated and projected to one transformer input; the head
predicts c indices per position. The mask token id is ``vocab_size`` and the head only has
``vocab_size`` outputs, so it can never be produced as a code id. Masking is independent per
(position, channel) entry.

Training: r ~ U(0, 1) per sequence, ceil(cos(pi/2 * r) * L * c) entries masked at random,
cross entropy over the masked entries only.
Decoding: T fixed steps on a cosine schedule; each step samples every masked entry, scores it by
its log-probability plus Gumbel noise annealed as ``choice_temperature * (1 - t/T)``, keeps the
most confident and re-masks the rest so exactly `mask_schedule(t, T, L * c)` stay masked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mvq.errors import MvqError
from mvq.priors.gpt import Block, check_sizes, init_weights, sample_logits


@dataclass
class MaskGITConfig:
    """vocab_size K (mask id = K), seq_len L positions, channels c indices per position."""

    vocab_size: int
    seq_len: int
    channels: int = 1
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 64
    num_classes: int = 0
    dropout: float = 0.0

    def __post_init__(self) -> None:
        check_sizes(self, "vocab_size", "seq_len", "channels")


def mask_schedule(step: int, total: int, n_tokens: int) -> int:
    """Entries still masked after decoding step `step` of `total` (step 0: all of them).

    floor(n_tokens * cos(pi/2 * step/total)): non-increasing, n_tokens at 0, exactly 0 at total.
    """
    if step >= total:
        return 0
    return min(n_tokens, math.floor(n_tokens * math.cos(math.pi / 2 * step / total)))


def training_mask(batch: int, n_tokens: int, generator: torch.Generator | None = None,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """(batch, n_tokens) bool: ceil(cos(pi/2 * r) * n_tokens) random entries per row, r ~ U(0,1)."""
    r = torch.rand(batch, generator=generator, device=device)
    count = torch.ceil(torch.cos(math.pi / 2 * r) * n_tokens).long().clamp(1, n_tokens)
    ranks = torch.rand(batch, n_tokens, generator=generator, device=device).argsort(1).argsort(1)
    return ranks < count[:, None]


class MaskGIT(nn.Module):
    """Bidirectional transformer: (B, L, c) ids (mask id allowed) -> logits (B, L, c, K)."""

    def __init__(self, cfg: MaskGITConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.mask_id = cfg.vocab_size
        c, d = cfg.channels, cfg.n_embd
        self.tok = nn.Embedding(cfg.vocab_size + 1, d)  # +1: the mask token
        self.fuse = nn.Linear(c * d, d)  # concatenated channel embeddings -> one input
        extra = 1 if cfg.num_classes else 0  # a class token prefix
        self.pos = nn.Embedding(cfg.seq_len + extra, d)
        self.cls = nn.Embedding(cfg.num_classes, d) if cfg.num_classes else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(d, cfg.n_head, cfg.dropout, causal=False)
                                    for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, c * cfg.vocab_size)
        init_weights(self, cfg.n_layer)

    def forward(self, ids: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """ids (B, L, c) in [0, K] (K = mask) -> logits (B, L, c, K)."""
        b, n, c = ids.shape
        if n != self.cfg.seq_len or c != self.cfg.channels:
            raise MvqError(f"MaskGIT expects (B, {self.cfg.seq_len}, {self.cfg.channels}) ids, "
                           f"got {tuple(ids.shape)}")
        x = self.fuse(self.tok(ids).reshape(b, n, -1))
        if self.cls is not None:
            if cond is None:
                raise MvqError("this prior is class conditional: pass cond=(B,) class ids")
            x = torch.cat([self.cls(cond.view(b, 1)), x], 1)
        x = self.drop(x + self.pos.weight[:x.shape[1]])
        for block in self.blocks:
            x = block(x)
        x = self.ln_f(x[:, x.shape[1] - n:])
        return self.head(x).view(b, n, c, self.cfg.vocab_size)

    def loss(self, ids: torch.Tensor, cond: torch.Tensor | None = None,
             mask: torch.Tensor | None = None, generator: torch.Generator | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked-token cross entropy over (B, L, c) ids -> (loss, mask (B, L, c) bool).

        mask: which entries to hide (default: the cosine training schedule).
        """
        b, n, c = ids.shape
        if mask is None:
            mask = training_mask(b, n * c, generator, ids.device).view(b, n, c)
        logits = self(ids.masked_fill(mask, self.mask_id), cond)
        return F.cross_entropy(logits[mask], ids[mask]), mask

    @torch.no_grad()
    def generate(self, n: int, steps: int = 12, temperature: float = 1.0,
                 choice_temperature: float | None = None, cond: torch.Tensor | None = None,
                 generator: torch.Generator | None = None, return_history: bool = False):
        """Decode n sequences in `steps` parallel steps -> (n, L, c) ids in [0, K).

        choice_temperature scales the confidence noise (default: `temperature`; MaskGIT used
        4.5). return_history=True also returns the (n, L, c) ids after every step.
        """
        was = self.training
        self.eval()
        try:
            return self._generate(n, steps, temperature, choice_temperature, cond, generator,
                                  return_history)
        finally:
            self.train(was)

    def _generate(self, n, steps, temperature, choice_temperature, cond, generator, history):
        cfg = self.cfg
        total = cfg.seq_len * cfg.channels
        noise_t = temperature if choice_temperature is None else choice_temperature
        device = self.tok.weight.device
        ids = torch.full((n, total), self.mask_id, dtype=torch.long, device=device)
        seen = []
        for step in range(1, steps + 1):
            masked = ids == self.mask_id
            logits = self(ids.view(n, cfg.seq_len, cfg.channels), cond).view(n * total, -1)
            drawn = sample_logits(logits, temperature, generator=generator).view(n, total)
            logp = logits.log_softmax(-1).gather(1, drawn.view(-1, 1)).view(n, total)
            u = torch.rand(n, total, generator=generator, device=device)
            gumbel = -torch.log((-torch.log(u.clamp_min(1e-20))).clamp_min(1e-20))
            conf = logp + noise_t * (1.0 - step / steps) * gumbel
            conf = conf.masked_fill(~masked, float("inf"))  # decided entries stay decided
            ids = torch.where(masked, drawn, ids)
            keep_masked = mask_schedule(step, steps, total)
            if keep_masked:  # the least confident of the newly drawn go back under the mask
                low = conf.topk(keep_masked, dim=1, largest=False).indices
                ids = ids.scatter(1, low, self.mask_id)
            if history:
                seen.append(ids.view(n, cfg.seq_len, cfg.channels).clone())
        out = ids.view(n, cfg.seq_len, cfg.channels)
        return (out, seen) if history else out
