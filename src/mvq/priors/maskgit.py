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
most confident and re-masks the rest so exactly `mask_schedule(t, T, L * c)` stay masked: at
least one entry is revealed per step while any is masked (the prior takes T <= L * c) and none
is masked after step T.

`MaskGITPrior` puts the network behind the prior interface (mvq.priors.base): codes (B, H, W)
or MoVQ's (B, H, W, c) are read as L = H * W positions of c ids.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mvq.errors import MvqError
from mvq.priors.base import Prior, codebook_sizes
from mvq.priors.gpt import Block, check_sizes, init_weights, sample_logits
from mvq.runtime.modes import eval_mode
from mvq.values.codes import Codes
from mvq.values.decoding import Draw


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

    min(floor(n_tokens * cos(pi/2 * step/total)), n_tokens - step): the cosine schedule, made to
    reveal at least one entry per step (needs total <= n_tokens); n_tokens at 0, 0 at total.
    """
    if step >= total:
        return 0
    cosine = math.floor(n_tokens * math.cos(math.pi / 2 * step / total))
    return max(0, min(n_tokens - step, cosine))


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
    def generate(self, n: int, steps: int = 12, draw: Draw = Draw(),
                 choice_temperature: float | None = None, cond: torch.Tensor | None = None,
                 generator: torch.Generator | None = None, return_history: bool = False):
        """Decode n sequences in `steps` parallel steps -> (n, L, c) ids in [0, K).

        draw: temperature, top_k, top_p of each draw (as in the GPT). choice_temperature scales
        the confidence noise (default: the draw's temperature; MaskGIT used 4.5).
        return_history=True also returns the (n, L, c) ids after every step. Every step reveals
        at least one of the L * c entries, so steps is at most L * c.
        """
        total = self.cfg.seq_len * self.cfg.channels
        if not 1 <= steps <= total:
            raise MvqError(f"MaskGIT steps must be in [1, {total}] ({total} entries per "
                           f"sequence, at least one revealed per step), got {steps}")
        noise_t = draw.temperature if choice_temperature is None else choice_temperature
        with eval_mode(self):
            return self._generate(n, steps, draw, noise_t, cond, generator, return_history)

    def _generate(self, n, steps, draw, noise_t, cond, generator, history):
        cfg = self.cfg
        total = cfg.seq_len * cfg.channels
        device = self.tok.weight.device
        ids = torch.full((n, total), self.mask_id, dtype=torch.long, device=device)
        seen = []
        for step in range(1, steps + 1):
            masked = ids == self.mask_id
            logits = self(ids.view(n, cfg.seq_len, cfg.channels), cond).view(n * total, -1)
            drawn = sample_logits(logits, draw.temperature, draw.top_k, draw.top_p,
                                  generator=generator)
            drawn = drawn.view(n, total)
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


class MaskGITPrior(Prior):
    """MaskGIT behind the prior interface (registry name "maskgit").

    shape: ids per item, (H, W) single-channel or (H, W, c) multichannel: L = H * W positions
    of c ids; vocab_size: K (the one codebook MoVQ's channels share); sizes: {n_layer, n_head,
    n_embd}.
    nll reports {'masked': nats/token}: the mean cross entropy of the hidden entries when
    `NLL_MASK_RATIO` of them are masked by one fixed seeded pattern (the same for every item,
    so it does not depend on batching). It is not a likelihood of the codes, and not comparable
    with the GPT's or PixelCNN's exact per-token NLL.
    """

    kind = "maskgit"
    layouts = ("single-channel", "multichannel")
    stages = ("masked",)
    decoding = ("temperature", "top_k", "top_p", "steps", "choice_temperature")
    NLL_MASK_RATIO = 0.5
    DEFAULT_STEPS = 12
    CHOICE_TEMPERATURE = 4.5  # MaskGIT's default

    def __init__(self, shape: tuple[int, ...], vocab_size: int, sizes: dict | None = None,
                 num_classes: int = 0, dropout: float = 0.0, meta: dict | None = None) -> None:
        super().__init__()
        if len(shape) not in (2, 3):
            raise MvqError(f"MaskGIT models (H, W) or (H, W, c) ids per item, got {shape}")
        self.shape = tuple(int(d) for d in shape)
        self.channels = self.shape[2] if len(self.shape) == 3 else 1
        self.num_classes, self.meta = num_classes, dict(meta or {})
        self._kwargs = dict(shape=list(self.shape), vocab_size=vocab_size,
                            sizes=dict(sizes or {}), num_classes=num_classes, dropout=dropout,
                            meta=dict(meta or {}))
        self.net = MaskGIT(MaskGITConfig(vocab_size, self.shape[0] * self.shape[1],
                                         self.channels, num_classes=num_classes,
                                         dropout=dropout, **(sizes or {})))

    @classmethod
    def from_codes(cls, codes: Codes, num_classes: int = 0, sizes: dict | None = None
                   ) -> MaskGITPrior:
        cls.check_layout(codes)
        return cls(tuple(codes.primary.shape[1:]), codebook_sizes(codes)[0], sizes,
                   num_classes, meta=codes.meta)

    @property
    def codebook_sizes(self) -> tuple[int, ...]:
        return (self.net.cfg.vocab_size,)

    def config(self) -> dict:
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in self._kwargs.items()}

    def _ids(self, codes: Codes) -> torch.Tensor:
        have = tuple(codes.primary.shape[1:])
        if have != self.shape or codes.secondary is not None:
            raise MvqError(f"this MaskGIT prior models ids of shape {self.shape} per item, the "
                           f"codes have {have}" + (" and secondary ids" if codes.secondary
                                                   is not None else ""))
        return codes.primary.reshape(len(codes), -1, self.channels)

    def loss(self, codes: Codes, labels: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Training: masked-token cross entropy at a random cosine-schedule ratio (torch's global
        RNG, checkpointed by the engine); in eval mode the fixed `nll` mask."""
        ids = self._ids(self.check_codes(codes))
        cond = self.check_labels(labels, len(codes))
        mask = None if self.training else self._nll_mask(ids)
        loss, _ = self.net.loss(ids, cond, mask=mask)
        return loss, {"masked": loss.detach() if self.training else loss}

    def _nll_mask(self, ids: torch.Tensor) -> torch.Tensor:
        b, n, c = ids.shape
        count = max(1, round(self.NLL_MASK_RATIO * n * c))
        order = torch.randperm(n * c, generator=torch.Generator().manual_seed(0))
        pattern = torch.zeros(n * c, dtype=torch.bool)
        pattern[order[:count]] = True
        return pattern.view(1, n, c).expand(b, n, c).to(ids.device)

    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None = None,
               generator: torch.Generator | None = None, temperature: float = 1.0,
               top_k: int | None = None, top_p: float | None = None,
               steps: int | None = None, choice_temperature: float | None = None) -> Codes:
        """n codes, primary (n, H, W) or (n, H, W, c), decoded in `steps` parallel steps
        (default 12, capped at the token count) with confidence noise `choice_temperature`
        (default 4.5)."""
        self.check_sample(n, temperature, top_k, top_p)
        cond = self.check_labels(labels, n)
        total = math.prod(self.shape)
        steps = min(self.DEFAULT_STEPS, total) if steps is None else steps
        if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= total:
            raise MvqError(f"MaskGIT steps must be in [1, {total}] ({total} tokens per item, "
                           f"at least one revealed per step), got {steps}")
        choice = self.CHOICE_TEMPERATURE if choice_temperature is None else choice_temperature
        if isinstance(choice, bool) or not isinstance(choice, (int, float)) \
                or not math.isfinite(choice) or choice < 0:
            raise MvqError(f"choice_temperature must be a finite number >= 0, got {choice!r}")
        ids = self.net.generate(n, steps, Draw(temperature, top_k, top_p), choice, cond,
                                self.new_generator(generator))
        return Codes(ids.reshape(n, *self.shape), meta=dict(self.meta))
