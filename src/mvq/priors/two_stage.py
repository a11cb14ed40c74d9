"""Two-stage prior over MVQ / hierarchical codes (MVQ paper 4.1 and Table 4).

Stage 1: a causal GPT over the S primary ids in raster order.
Stage 2: a second causal GPT over ``[primary ids, secondary ids + K1]`` (one shared vocabulary
of K1 + K2 ids); its loss and its samples use only the secondary positions and the secondary
slice of the vocabulary, so the primary ids act as a fully visible context.
MVQ mask bits are not modelled: `sample` draws them from Bernoulli(0.5) with a seeded
generator (MVQ paper 3.4: no distribution over masks is learned).
MoVQ's multichannel codes (B, H, W, c) are modelled as one raster sequence of H * W * c ids
(channels innermost), so autoregressive decoding can be compared with MaskGIT on them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mvq.errors import MvqError
from mvq.priors.base import LAYOUTS, Prior, codebook_sizes
from mvq.priors.gpt import GPT, GPTConfig, table4_size
from mvq.runtime.modes import eval_mode
from mvq.values.codes import Codes
from mvq.values.decoding import Draw


class MVQPrior(Prior):
    """Primary GPT + secondary GPT conditioned on the primary ids (registry name "gpt").

    primary_shape: (H, W) primary grid, S = H * W tokens with ids in [0, K1); or (H, W, c)
        multichannel ids, S = H * W * c.
    secondary_shape: (H', W') secondary grid (S' tokens, ids in [0, K2)), or None for one-level
        codes. mask_dim: D' mask bits per secondary token (0: no mask, e.g. hierarchical VQ).
    sizes: {"primary": {n_layer, n_head, n_embd}, "secondary": {...}}; default Table 4 for S.
    """

    kind = "gpt"
    layouts = tuple(LAYOUTS)
    stages = ("primary", "secondary")
    decoding = ("temperature", "top_k", "top_p", "use_cache", "seed")

    def __init__(self, primary_shape: tuple[int, int], codebook_sizes: list[int],
                 secondary_shape: tuple[int, int] | None = None, mask_dim: int = 0,
                 sizes: dict | None = None, num_classes: int = 0, dropout: float = 0.0,
                 meta: dict | None = None) -> None:
        super().__init__()
        sizes = sizes or table4_size(math.prod(primary_shape))
        self._kwargs = dict(primary_shape=list(primary_shape), codebook_sizes=list(codebook_sizes),
                            secondary_shape=None if secondary_shape is None
                            else list(secondary_shape), mask_dim=mask_dim, sizes=sizes,
                            num_classes=num_classes, dropout=dropout, meta=dict(meta or {}))
        self.primary_shape = tuple(primary_shape)
        self.secondary_shape = None if secondary_shape is None else tuple(secondary_shape)
        self.mask_dim, self.meta = mask_dim, dict(meta or {})
        self.num_classes = num_classes
        self.s1 = math.prod(self.primary_shape)
        self.s2 = 0 if secondary_shape is None else secondary_shape[0] * secondary_shape[1]
        if self.s2 and len(codebook_sizes) < 2:
            raise MvqError("two-level codes need two codebook sizes [K1, K2], got "
                           f"{codebook_sizes}")
        if mask_dim and not self.s2:
            raise MvqError("mask bits belong to secondary tokens: pass secondary_shape too")
        self.k1 = int(codebook_sizes[0])
        self.k2 = int(codebook_sizes[1]) if self.s2 else 0
        self.primary = GPT(GPTConfig(self.k1, self.s1, **sizes["primary"],
                                     num_classes=num_classes, dropout=dropout))
        self.secondary = None
        if self.s2:
            self.secondary = GPT(GPTConfig(self.k1 + self.k2, self.s1 + self.s2,
                                           **sizes["secondary"], num_classes=num_classes,
                                           dropout=dropout))

    @property
    def codebook_sizes(self) -> tuple[int, ...]:
        return (self.k1, self.k2) if self.s2 else (self.k1,)

    def config(self) -> dict:
        """JSON-able constructor arguments: ``MVQPrior(**prior.config())`` rebuilds it."""
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in self._kwargs.items()}

    @classmethod
    def from_codes(cls, codes: Codes, num_classes: int = 0, sizes: dict | None = None,
                   **kw) -> MVQPrior:
        """Shapes from a batch of codes, codebook sizes from codes.meta['codebook_sizes'].

        sizes: {"primary": {n_layer, n_head, n_embd}, "secondary": {...}} (default Table 4).
        """
        cls.check_layout(codes)
        return cls(tuple(codes.primary.shape[1:]), codebook_sizes(codes),
                   None if codes.secondary is None else tuple(codes.secondary.shape[1:]),
                   0 if codes.mask is None else codes.mask.shape[-1], sizes=sizes,
                   num_classes=num_classes, meta=codes.meta, **kw)

    # training / likelihood --------------------------------------------------------------
    def _check(self, codes: Codes) -> None:
        if tuple(codes.primary.shape[1:]) != self.primary_shape:
            raise MvqError(f"this prior models primary grids {self.primary_shape}, codes have "
                           f"{tuple(codes.primary.shape[1:])}")
        if self.s2 and (codes.secondary is None
                        or tuple(codes.secondary.shape[1:]) != self.secondary_shape):
            found = None if codes.secondary is None else tuple(codes.secondary.shape[1:])
            raise MvqError(f"this prior models secondary grids {self.secondary_shape}, codes "
                           f"have {found}")

    def loss(self, codes: Codes, labels: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Training loss (sum of the per-stage mean NLLs), {'primary', 'secondary'} nats/token.

        `nll` reports the same parts: 'secondary' only for two-level codes; mask bits carry no
        likelihood.
        """
        self._check(self.check_codes(codes))
        cond = self.check_labels(labels, len(codes))
        p = codes.primary.reshape(len(codes), -1)
        _, loss1 = self.primary(p, targets=p, cond=cond)
        parts = {"primary": loss1}
        if self.secondary is not None:
            s = codes.secondary.reshape(len(codes), -1)
            logits, _ = self.secondary(torch.cat([p, s + self.k1], 1), cond=cond)
            sec = logits[:, self.s1:, self.k1:]  # secondary positions, secondary ids only
            parts["secondary"] = F.cross_entropy(sec.reshape(-1, self.k2), s.reshape(-1))
        return sum(parts.values()), parts

    # sampling ----------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None = None,
               generator: torch.Generator | None = None, temperature: float = 1.0,
               top_k: int | None = None, top_p: float | None = None, use_cache: bool = True,
               seed: int | None = 0) -> Codes:
        """n codes: primary (n, H, W[, c]), secondary (n, H', W') or None, mask
        (n, H', W', D') or None.

        Tokens and masks come from one torch.Generator (seeded by `seed` unless given), so the
        same seed reproduces the same codes.
        """
        self.check_sample(n, temperature, top_k, top_p)
        cond = self.check_labels(labels, n)
        generator = self.new_generator(generator, 0 if seed is None else seed)
        with eval_mode(self):
            opts = dict(draw=Draw(temperature, top_k, top_p), cond=cond,
                        use_cache=use_cache, generator=generator)
            p = self.primary.generate(n, self.s1, **opts)
            secondary = mask = None
            if self.secondary is not None:
                s = self.secondary.generate(n, self.s2, prompt=p,
                                            vocab_range=(self.k1, self.k1 + self.k2), **opts)
                secondary = (s - self.k1).view(n, *self.secondary_shape)
                if self.mask_dim:
                    mask = torch.rand(n, *self.secondary_shape, self.mask_dim,
                                      generator=generator, device=p.device) < 0.5
        return Codes(p.view(n, *self.primary_shape), secondary, mask, dict(self.meta))
