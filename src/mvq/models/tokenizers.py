"""The VQ-VAE-2-style tokenizers: one-level VQ-VAE, the hierarchical VQ-VAE-2 baseline and
MVQ-VAE (the GAN-trained hvqgan / mvqgan are the same networks, MVQ 4.1).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mvq.configuration.config import ModelConfig
from mvq.errors import MvqError
from mvq.models.base import Tokenizer, TokenizerOutput
from mvq.models.inputs import CodeLayout
from mvq.nn.vqvae2 import Widths, build_networks, geometry
from mvq.quantize.masked import MaskedVectorQuantize
from mvq.quantize.refine import refine_masks
from mvq.quantize.registry import family, secondary_family, secondary_sizes
from mvq.quantize.vq import VectorQuantize
from mvq.runtime.modes import eval_mode
from mvq.values.codes import Codes


def _vq_settings(cfg: ModelConfig) -> dict:
    return dict(beta=cfg.beta, ema=cfg.ema, decay=cfg.decay, restart_dead=cfg.restart_dead,
                kmeans_init=cfg.kmeans_init)


def _vq(cfg: ModelConfig, k: int, dim: int) -> VectorQuantize:
    return VectorQuantize(dim, k, channel_first=True, **_vq_settings(cfg))


def _nets(cfg: ModelConfig, dim2: int | None = None, **kw) -> dict[str, nn.Module]:
    return build_networks(cfg.factor, cfg.image_size, cfg.channels, cfg.dim, dim2 or cfg.dim2,
                          Widths(cfg.hidden, cfg.res_blocks, cfg.res_channels), **kw)


def _two_level_tokens(cls, cfg: ModelConfig) -> tuple[int, int]:
    """(S, S'): the Table 3 geometry of F."""
    geo = geometry(cfg.factor, cfg.image_size)
    return geo.tokens, geo.tokens2


class VQVAE(Tokenizer):
    """One level: x -> E -> quantizer -> D. S positions; the quantizer is ``model.quantizer``,
    a family of `mvq.quantize.registry` (default: VQ with K entries). A family of depth d
    gives d ids per position (codes (B, H, W, d), S * d tokens)."""

    model_types = ("vqvae",)
    step_seconds = {"vqvae": 0.13}

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        nets = _nets(cfg)
        self.encoder, self.decoder = nets["E"], nets["D"]
        self.family = family(cfg.quantizer)
        self.quantizer = self.family.build(cfg)
        self._k, self._depth = self.family.codebook_size(cfg), self.family.depth(cfg)

    codebook_sizes = property(lambda self: [self._k])

    @classmethod
    def tokens_of(cls, cfg: ModelConfig) -> tuple[int, int]:
        """(S * d, 0): the family's d ids at each of the S positions."""
        return geometry(cfg.factor, cfg.image_size).tokens * family(cfg.quantizer).depth(cfg), 0

    def forward(self, x: torch.Tensor) -> TokenizerOutput:
        self._check_input(x)
        quantized, ids, loss = self.quantizer(self.encoder(x * 2 - 1))
        codes = Codes(ids, meta=self._meta())
        return self._output(x, self.decoder(quantized), {"vq": loss}, codes, [(ids, self._k)])

    @property
    def code_layout(self) -> CodeLayout:
        g = self.geo.grid
        return CodeLayout((g, g) if self._depth == 1 else (g, g, self._depth), self._k)

    def _encode_batch(self, x: torch.Tensor) -> Codes:
        with eval_mode(self):  # no codebook update
            ids = self.quantizer(self.encoder(x * 2 - 1))[1]
        return Codes(ids, meta=self._meta())

    def _decode_codes(self, codes: Codes) -> torch.Tensor:
        return (self.decoder(self.quantizer.get_output_from_indices(codes.primary)) + 1) / 2


class HVQVAE(Tokenizer):
    """VQ-VAE-2-style hierarchical baseline (MVQ paper A.6), S + S' tokens, K/2 entries each.

    The secondary encoder sees the primary encoder output *and* the image, which reaches the
    primary grid through the baseline's own full-resolution downsampling stem (``stem``, a
    quarter of the encoders' width), as in VQ-VAE-2's Algorithm 1; the decoder takes the
    concatenation of the primary code and the secondary code brought onto the primary grid by f.
    """

    model_types = ("hvqvae", "hvqgan")
    step_seconds = {"hvqvae": 0.16, "hvqgan": 0.30}

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        nets = _nets(cfg, stem=max(1, cfg.hidden // 4), dec_in=2 * cfg.dim)
        self.encoder, self.encoder2, self.stem = nets["E"], nets["E2"], nets["S"]
        self.decoder, self.f = nets["D"], nets["f"]
        half = cfg.codebook_size // 2
        self.quantizer, self.quantizer2 = _vq(cfg, half, cfg.dim), _vq(cfg, half, cfg.dim2)

    codebook_sizes = property(lambda self: [self.cfg.codebook_size // 2] * 2)
    tokens_of = classmethod(_two_level_tokens)

    def _encode(self, x):
        h = x * 2 - 1
        y = self.encoder(h)
        return y, self.encoder2(self._secondary_input(h, y))

    def _secondary_input(self, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """What E' sees: the primary encoder output and the image through the stem."""
        return torch.cat([y, self.stem(h)], 1)

    def _decode(self, e, e2):
        return self.decoder(torch.cat([e, self.f(e2)], 1))

    def forward(self, x: torch.Tensor) -> TokenizerOutput:
        self._check_input(x)
        y, y2 = self._encode(x)
        q1, q2 = self.quantizer.quantize(y), self.quantizer2.quantize(y2)
        codes = Codes(q1.indices, q2.indices, meta=self._meta())
        k = self.cfg.codebook_size // 2
        return self._output(x, self._decode(q1.quantized, q2.quantized),
                            {"vq": q1.loss, "vq2": q2.loss}, codes,
                            [(q1.indices, k), (q2.indices, k)])

    @property
    def code_layout(self) -> CodeLayout:
        g, g2, half = self.geo.grid, self.geo.grid2, self.cfg.codebook_size // 2
        return CodeLayout((g, g), half, (g2, g2), half)

    def _encode_batch(self, x: torch.Tensor) -> Codes:
        y, y2 = self._encode(x)
        ids = [q.nearest(z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]))
               .view(z.shape[0], *z.shape[2:])
               for q, z in ((self.quantizer, y), (self.quantizer2, y2))]
        return Codes(ids[0], ids[1], meta=self._meta())

    def _decode_codes(self, codes: Codes) -> torch.Tensor:
        e, e2 = self.quantizer.lookup(codes.primary), self.quantizer2.lookup(codes.secondary)
        return (self._decode(e, e2) + 1) / 2


class MVQVAE(Tokenizer):
    """Masked VQ (MVQ paper Fig. 3): y = E(x), y' = E'(y), y_hat = e + f(e' * m*), x = D(y_hat).

    The primary codebook has K/2 entries. The secondary code e' is, by default, a VQ codebook
    of K/2 entries of ``dim2``; ``model.secondary`` may name an FSQ or LFQ family instead
    (`mvq.quantize.registry.SECONDARIES`): e' is then its rounded channels (D' = len(levels),
    K' = prod(levels)) or its signs (D' = bits, K' = 2^bits), and the masks cover them."""

    model_types = ("mvqvae", "mvqgan")
    step_seconds = {"mvqvae": 0.17, "mvqgan": 0.31}

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        second = secondary_family(cfg.secondary)
        self._dim2, self._k2 = secondary_sizes(cfg)
        nets = _nets(cfg, dim2=self._dim2)
        self.encoder, self.decoder = nets["E"], nets["D"]
        half = cfg.codebook_size // 2
        layer2 = second.secondary(cfg) if second.secondary is not None else None
        sizes2 = {} if layer2 is not None else dict(dim2=cfg.dim2, codebook_size2=half)
        # the layer owns E' (y -> y', onto the secondary grid) and f (masked e' -> primary grid)
        self.mvq = MaskedVectorQuantize(
            cfg.dim, half, **sizes2, secondary=layer2, num_masks=cfg.num_masks,
            eval_masks=cfg.eval_masks or None, secondary_encoder=nets["E2"], f=nets["f"],
            channel_first=True, chunk_size=cfg.chunk_size, search_seed=cfg.search_seed,
            **_vq_settings(cfg))

    codebook_sizes = property(lambda self: [self.cfg.codebook_size // 2, self._k2])
    tokens_of = classmethod(_two_level_tokens)
    encoder2 = property(lambda self: self.mvq.secondary_encoder, doc="E': y -> y' (in the layer)")

    _E2_OLD, _E2_NEW = "encoder2.", "mvq.secondary_encoder."

    def upgrade_state_dict(self, state: dict) -> dict:
        """Weights saved before E' moved into the MVQ layer name it ``encoder2.*``."""
        old, new = self._E2_OLD, self._E2_NEW
        return {(new + k[len(old):] if k.startswith(old) else k): v for k, v in state.items()}

    def legacy_state_dict(self) -> dict:
        """The state dict under its names before E' moved into the MVQ layer (what token
        files and priors recorded the weights' sha256 of)."""
        old, new = self._E2_OLD, self._E2_NEW
        return {(old + k[len(new):] if k.startswith(new) else k): v
                for k, v in self.state_dict().items()}

    @property
    def mask_bits(self) -> float:
        """Mask information the code of ``encode(x)`` really carries. It picks each secondary
        token's mask from a fixed bank of J_eval masks, so the mask is a bank index: log2(J_eval)
        bits per secondary token (at most D', the bits of a freely chosen mask)."""
        per_token = min(math.log2(self.mvq.eval_masks), float(self._dim2))
        return self.geo.tokens2 * per_token

    @property
    def refine(self):
        raise AttributeError("MVQVAE has no refine flag: refinement is per call, "
                             "model.encode(x, refine=True)")

    @refine.setter
    def refine(self, value) -> None:
        raise MvqError(f"model.refine = {value!r} would change nothing: refinement is an "
                       "argument of encode, model.encode(x, refine=True)")

    @property
    def refined_mask_bits(self) -> float:
        """Mask bits of ``encode(x, refine=True)``: a refined mask is any of the 2^D' masks,
        D' bits per secondary token."""
        return float(self.geo.tokens2 * self._dim2)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, refine: bool = False) -> Codes:
        """As `Tokenizer.encode`; ``refine`` improves each bank mask by greedy
        single-bit flips (never a larger distance to E's output; mvq.quantize.refine)."""
        return self._encode_checked(x, refine=refine)

    def _quantize(self, x: torch.Tensor, masks: torch.Tensor | None = None,
                  refine: bool = False):
        self._check_input(x)
        y = self.encoder(x * 2 - 1)
        out = self.mvq.quantize(y, masks=masks)
        mask = out.mask  # (B, H', W', D')
        if refine and not self.training:
            start = mask.permute(0, 3, 1, 2)
            mask = refine_masks(self.mvq, out.primary.codes, out.secondary.codes, y, start)[0]
            mask = mask.permute(0, 2, 3, 1)
        codes = Codes(out.primary.indices, out.secondary.indices, mask.contiguous(),
                      meta=self._meta())
        return out, codes

    def forward(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> TokenizerOutput:
        out, codes = self._quantize(x, masks)
        k, k2 = self.codebook_sizes
        losses = {"vq": out.primary.loss, "vq2": out.secondary.loss, "mhd": out.mhd_loss}
        return self._output(x, self.decoder(out.y_hat), losses, codes,
                            [(out.primary.indices, k), (out.secondary.indices, k2)])

    @property
    def code_layout(self) -> CodeLayout:
        g, g2, (half, k2) = self.geo.grid, self.geo.grid2, self.codebook_sizes
        return CodeLayout((g, g), half, (g2, g2), k2, (g2, g2, self._dim2))

    def _encode_batch(self, x: torch.Tensor, refine: bool = False) -> Codes:
        """Deterministic: the mask is searched over the seeded bank of ``eval_masks`` masks."""
        with eval_mode(self):
            return self._quantize(x, refine=refine)[1]  # no decoder pass

    def _decode_codes(self, codes: Codes) -> torch.Tensor:
        return self.decode_latent(self.mvq.decode_codes(codes.primary, codes.secondary,
                                                        codes.mask))

    def decode_latent(self, y_hat: torch.Tensor) -> torch.Tensor:
        """D(y_hat): a latent on the primary grid (B, D, H, W), as the MVQ layer gives it,
        to images (B, C, H, W) on the [0, 1] scale (not clamped)."""
        return (self.decoder(y_hat) + 1) / 2

    @torch.no_grad()
    def decode_sum(self, primary: torch.Tensor, configs: list[Codes],
                   sum_outputs: bool = False) -> torch.Tensor:
        """Images of a primary code (B, H, W) plus the sum of masked configurations, each the
        secondary code and mask of a Codes of B images (MVQ Fig. 6b; the sum as in
        `mvq.quantize.masked.MaskedVectorQuantize.decode_sum`). [0, 1] scale, not clamped."""
        dev = self._param().device
        layout = self.code_layout
        b = len(primary)
        ids = torch.stack([c.secondary for c in configs]) if configs else \
            torch.zeros(0, b, *layout.secondary, dtype=torch.long)
        masks = torch.stack([c.mask.bool() for c in configs]) if configs else \
            torch.zeros(0, b, *layout.mask, dtype=torch.bool)
        y_hat = self.mvq.decode_sum(primary.to(dev), ids.to(dev), masks.to(dev), sum_outputs)
        return self.decode_latent(y_hat)
