"""The tokenizers: one-level VQ-VAE, hierarchical VQ-VAE-2 baseline, and MVQ-VAE.

All share the :class:`Tokenizer` interface: ``encode(x) -> Codes``, ``decode(codes) -> x``,
``forward(x) -> TokenizerOutput`` (reconstruction, losses, statistics). Images are (B, C, H, W)
in [0, 1]; the networks see them in [-1, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from mvq import checkpoint
from mvq.codes import Codes
from mvq.config import Config, ModelConfig, check_section, config_from_dict, model_hash
from mvq.errors import MvqError
from mvq.memory import check_fits
from mvq.models.inputs import CodeLayout, check_codes, check_images
from mvq.modes import eval_mode
from mvq.nn.vqvae2 import build_networks, geometry
from mvq.pretrained import Pretrained
from mvq.quantize.layers import MaskedVectorQuantize, VectorQuantize
from mvq.quantize.refine import refine_masks
from mvq.quantize.vq import code_stats


@dataclass
class TokenizerOutput:
    """recon: (B, C, H, W) in image scale (not clamped); loss: total scalar to minimise;
    losses: named scalar terms (detached floats for logging come from ``.item()``);
    codes: the batch's Codes; stats: codebook usage / perplexity of this batch."""

    recon: torch.Tensor
    loss: torch.Tensor
    losses: dict[str, torch.Tensor]
    codes: Codes
    stats: dict[str, float] = field(default_factory=dict)


class Tokenizer(Pretrained, nn.Module):
    """Base class: holds the config and the image-scale conversions.

    ``Tokenizer.from_pretrained(folder)`` / ``model.save_pretrained(folder)`` (or ``mvq.load``)
    load and save any tokenizer; loading gives eval mode."""

    saved_kind = "tokenizer"

    @classmethod
    def _from_checkpoint(cls, folder, info: dict, device: str) -> Tokenizer:
        if info.get("format") != checkpoint.FORMAT:
            raise MvqError(f"{folder / 'config.json'} has format {info.get('format')!r}, "
                           f"expected {checkpoint.FORMAT!r}")
        cfg = config_from_dict(info.get("config"))
        model = build_model(cfg.model)
        state = checkpoint.load_weights(folder / "model.safetensors", device)
        checkpoint.fit_weights(model, state, folder, cfg.model.type)
        return model

    def _checkpoint_info(self) -> dict:
        if self.checkpoint_info is not None:  # loaded: keep its training record
            return dict(self.checkpoint_info)
        return checkpoint.tokenizer_info(Config(model=self.cfg), 0)

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.geo = geometry(cfg.factor, cfg.image_size)
        self.register_forward_pre_hook(_check_forward)  # model(x): every tokenizer, under DDP too

    # token accounting ------------------------------------------------------
    @property
    def codebook_sizes(self) -> list[int]:
        raise NotImplementedError

    @property
    def tokens(self) -> tuple[int, int]:
        """(S, S'): primary and secondary tokens per image."""
        raise NotImplementedError

    @property
    def mask_bits(self) -> float:
        """Bits of the code beyond its token ids (MVQ's mask)."""
        return 0.0

    @property
    def num_parameters(self) -> int:
        """Trainable parameters (compared across models in the reports)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    @property
    def bits_per_image(self) -> float:
        """Information in one image's code: S log2(K_1) + S' log2(K_2) + mask bits."""
        s, s2 = self.tokens
        sizes = self.codebook_sizes
        bits = s * math.log2(sizes[0]) + (s2 * math.log2(sizes[1]) if s2 else 0.0)
        return bits + self.mask_bits

    # helpers ---------------------------------------------------------------
    @property
    def code_layout(self) -> CodeLayout:
        """Per-image shapes of the codes and their codebook sizes (what ``decode`` accepts)."""
        raise NotImplementedError

    def _check_input(self, x: torch.Tensor, values: bool = False) -> None:
        """Shape and dtype (``forward``: no pass over the values, no device sync per step);
        with ``values`` also finite and in [0, 1] (``encode``)."""
        check_images(x, self.cfg.channels, self.cfg.image_size, self.cfg.type, values)

    def _param(self) -> torch.Tensor:
        return next(self.parameters())

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> Codes:
        """Images (B, C, H, W), float in [0, 1] -> Codes (deterministic). Any float dtype and
        device are accepted (moved to the model's); an empty batch gives empty codes."""
        self._check_input(x, values=True)
        p = self._param()
        x = x.to(device=p.device, dtype=p.dtype)
        with eval_mode(self):  # deterministic, and no BatchNorm statistics of a batch of one
            if len(x) == 0:  # the codes of one blank image, sliced to none: right shapes, meta
                return self._encode_batch(x.new_zeros(1, *x.shape[1:]))[:0]
            return self._encode_batch(x)

    def decode(self, codes: Codes) -> torch.Tensor:
        """Codes (ids within the codebooks, masks bool or 0/1, per ``code_layout``) -> images
        (B, C, H, W) on the [0, 1] scale (not clamped)."""
        codes = check_codes(codes, self.code_layout, self.cfg.type).to(self._param().device)
        if len(codes) == 0:
            s = self.cfg.image_size
            return self._param().new_zeros(0, self.cfg.channels, s, s)
        return self._decode_codes(codes)

    def _encode_batch(self, x: torch.Tensor) -> Codes:
        raise NotImplementedError

    def _decode_codes(self, codes: Codes) -> torch.Tensor:
        raise NotImplementedError

    def _meta(self) -> dict:
        return {"model": self.cfg.type, "config_hash": model_hash(self.cfg),
                "codebook_sizes": self.codebook_sizes}

    def _output(self, x, rec, losses: dict, codes: Codes, indices: list) -> TokenizerOutput:
        recon = (rec + 1) / 2
        losses = {"rec": F.mse_loss(recon, x), **losses}
        stats = {}
        for name, (ids, k) in zip(("", "2"), indices):
            st = code_stats(ids, k)
            stats[f"usage{name}"], stats[f"perplexity{name}"] = st["usage"], st["perplexity"]
        return TokenizerOutput(recon, sum(losses.values()), losses, codes, stats)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """encode -> decode, clamped to [0, 1]."""
        return self.decode(self.encode(x)).clamp(0, 1)


def _check_forward(model: Tokenizer, args: tuple) -> tuple:
    """The training forward's input: images (B, C, S, S), finite and in [0, 1] (a NaN pixel
    would give a NaN loss), B >= 1, and B >= 2 in training mode when the model has BatchNorm
    (batch statistics of one image are undefined). Returns the arguments with the images in
    the model's float dtype (as encode takes them)."""
    x = args[0] if args else None
    check_images(x, model.cfg.channels, model.cfg.image_size, model.cfg.type, values=True)
    if len(x) == 0:
        raise MvqError(f"this {model.cfg.type} tokenizer's forward needs at least one image, "
                       "found an empty batch; encode() takes empty batches")
    if model.training and len(x) < 2 and any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise MvqError(f"a {model.cfg.type} tokenizer in training mode needs batches of at "
                       "least 2 images (its BatchNorm layers normalise over the batch), found 1; "
                       "raise train.batch_size (and train.train_limit) to 2 or more, or call "
                       "model.eval() first")
    return (x.to(dtype=model._param().dtype), *args[1:])


def _vq_settings(cfg: ModelConfig) -> dict:
    return dict(beta=cfg.beta, ema=cfg.ema, decay=cfg.decay, restart_dead=cfg.restart_dead,
                kmeans_init=cfg.kmeans_init)


def _vq(cfg: ModelConfig, k: int, dim: int) -> VectorQuantize:
    return VectorQuantize(dim, k, channel_first=True, **_vq_settings(cfg))


def _nets(cfg: ModelConfig, **kw) -> dict[str, nn.Module]:
    return build_networks(cfg.factor, cfg.image_size, cfg.channels, cfg.dim, cfg.dim2,
                          cfg.hidden, cfg.res_blocks, cfg.res_channels, **kw)


class VQVAE(Tokenizer):
    """One level: x -> E -> VQ(K) -> D. S tokens, K entries."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        nets = _nets(cfg)
        self.encoder, self.decoder = nets["E"], nets["D"]
        self.quantizer = _vq(cfg, cfg.codebook_size, cfg.dim)

    codebook_sizes = property(lambda self: [self.cfg.codebook_size])
    tokens = property(lambda self: (self.geo.tokens, 0))

    def forward(self, x: torch.Tensor) -> TokenizerOutput:
        self._check_input(x)
        q = self.quantizer.quantize(self.encoder(x * 2 - 1))
        codes = Codes(q.indices, meta=self._meta())
        return self._output(x, self.decoder(q.quantized), {"vq": q.loss}, codes,
                            [(q.indices, self.cfg.codebook_size)])

    @property
    def code_layout(self) -> CodeLayout:
        g = self.geo.grid
        return CodeLayout((g, g), self.cfg.codebook_size)

    def _encode_batch(self, x: torch.Tensor) -> Codes:
        z = self.encoder(x * 2 - 1)
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        ids = self.quantizer.nearest(flat).view(z.shape[0], z.shape[2], z.shape[3])
        return Codes(ids, meta=self._meta())

    def _decode_codes(self, codes: Codes) -> torch.Tensor:
        return (self.decoder(self.quantizer.lookup(codes.primary)) + 1) / 2


class HVQVAE(Tokenizer):
    """VQ-VAE-2-style hierarchical baseline (MVQ paper A.6), S + S' tokens, K/2 entries each.

    The secondary encoder sees the primary encoder output *and* the image, which reaches the
    primary grid through the baseline's own full-resolution downsampling stem (``stem``, a
    quarter of the encoders' width), as in VQ-VAE-2's Algorithm 1; the decoder takes the
    concatenation of the primary code and the secondary code brought onto the primary grid by f.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        nets = _nets(cfg, stem=max(1, cfg.hidden // 4), dec_in=2 * cfg.dim)
        self.encoder, self.encoder2, self.stem = nets["E"], nets["E2"], nets["S"]
        self.decoder, self.f = nets["D"], nets["f"]
        half = cfg.codebook_size // 2
        self.quantizer, self.quantizer2 = _vq(cfg, half, cfg.dim), _vq(cfg, half, cfg.dim2)

    codebook_sizes = property(lambda self: [self.cfg.codebook_size // 2] * 2)
    tokens = property(lambda self: (self.geo.tokens, self.geo.tokens2))

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
    """Masked VQ (MVQ paper Fig. 3): y = E(x), y' = E'(y), y_hat = e + f(e' * m*), x = D(y_hat)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        nets = _nets(cfg)
        self.encoder, self.decoder = nets["E"], nets["D"]
        half = cfg.codebook_size // 2
        # the layer owns E' (y -> y', onto the secondary grid) and f (masked e' -> primary grid)
        self.mvq = MaskedVectorQuantize(
            cfg.dim, half, dim2=cfg.dim2, codebook_size2=half, num_masks=cfg.num_masks,
            eval_masks=cfg.eval_masks or None, secondary_encoder=nets["E2"], f=nets["f"],
            channel_first=True, chunk_size=cfg.chunk_size, search_seed=cfg.search_seed,
            **_vq_settings(cfg))
        # encode's default: refine the bank's mask bit by bit (mvq.quantize.refine); a refined
        # mask is free, so mask_bits then counts D' bits per secondary token
        self.refine = False

    codebook_sizes = property(lambda self: [self.cfg.codebook_size // 2] * 2)
    tokens = property(lambda self: (self.geo.tokens, self.geo.tokens2))
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
        """Mask information the code really carries. ``encode`` picks each secondary token's
        mask from a fixed bank of J_eval masks, so the mask is a bank index: log2(J_eval) bits
        per secondary token (at most D', the bits of a freely chosen mask). With ``refine`` on,
        the mask is any of the 2^D' masks: D' bits per secondary token."""
        if self.refine:
            return float(self.geo.tokens2 * self.cfg.dim2)
        per_token = min(math.log2(self.mvq.eval_masks), float(self.cfg.dim2))
        return self.geo.tokens2 * per_token

    def encode(self, x: torch.Tensor, refine: bool | None = None) -> Codes:
        """As :meth:`Tokenizer.encode`; ``refine`` (default: the model's ``refine``) improves
        each bank mask by greedy single-bit flips (never a larger distance to E's output)."""
        if refine is None or refine == self.refine:
            return super().encode(x)
        self.refine = refine
        try:
            return super().encode(x)
        finally:
            self.refine = not refine

    def _quantize(self, x: torch.Tensor, masks: torch.Tensor | None = None):
        self._check_input(x)
        y = self.encoder(x * 2 - 1)
        out = self.mvq.quantize(y, masks=masks)
        mask = out.mask  # (B, H', W', D')
        if self.refine and not self.training:
            start = mask.permute(0, 3, 1, 2)
            mask = refine_masks(self.mvq, out.primary.codes, out.secondary.codes, y, start)[0]
            mask = mask.permute(0, 2, 3, 1)
        codes = Codes(out.primary.indices, out.secondary.indices, mask.contiguous(),
                      meta=self._meta())
        return out, codes

    def forward(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> TokenizerOutput:
        out, codes = self._quantize(x, masks)
        k = self.cfg.codebook_size // 2
        losses = {"vq": out.primary.loss, "vq2": out.secondary.loss, "mhd": out.mhd_loss}
        return self._output(x, self.decoder(out.y_hat), losses, codes,
                            [(out.primary.indices, k), (out.secondary.indices, k)])

    @property
    def code_layout(self) -> CodeLayout:
        g, g2, half = self.geo.grid, self.geo.grid2, self.cfg.codebook_size // 2
        return CodeLayout((g, g), half, (g2, g2), half, (g2, g2, self.cfg.dim2))

    def _encode_batch(self, x: torch.Tensor) -> Codes:
        """Deterministic: the mask is searched over the seeded bank of ``eval_masks`` masks."""
        with eval_mode(self):
            return self._quantize(x)[1]  # no decoder pass

    def _decode_codes(self, codes: Codes) -> torch.Tensor:
        decoded = self.mvq.decode_codes(codes.primary, codes.secondary, codes.mask)
        return (self.decoder(decoded) + 1) / 2


# hvqgan / mvqgan are the same networks as hvqvae / mvqvae, trained with the VQGAN loss (MVQ 4.1).
MODELS: dict[str, type[Tokenizer]] = {"vqvae": VQVAE, "hvqvae": HVQVAE, "mvqvae": MVQVAE,
                                      "hvqgan": HVQVAE, "mvqgan": MVQVAE}


def build_model(cfg) -> Tokenizer:
    """Tokenizer for a ModelConfig (or a MoVQConfig when cfg.type == 'movq'); its keys are
    checked against the config's types and ranges first."""
    check_section(cfg, "model")
    check_fits(model_bytes(cfg), f"the weights of a {cfg.type} model of these sizes",
               SIZE_FIX)
    return _construct(cfg)


SIZE_FIX = "lower model.hidden, res_channels, dim / dim2 or codebook_size"


def model_bytes(cfg) -> int:
    """Bytes of the weights and buffers ``build_model(cfg)`` allocates, counted on torch's meta
    device (nothing is allocated, so a model of 1e8 channels is refused, not built)."""
    try:
        with torch.device("meta"):
            model = _construct(cfg)
    except (RuntimeError, NotImplementedError):  # an op without a meta kernel: no estimate
        return 0
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


def _construct(cfg) -> Tokenizer:
    if cfg.type == "movq":
        from mvq.models.movq import build_movq

        return build_movq(cfg)
    if cfg.type not in MODELS:
        raise MvqError(f"model.type must be one of {', '.join(MODELS)}, got {cfg.type!r}")
    try:
        return MODELS[cfg.type](cfg)
    except ValueError as err:
        raise MvqError(f"cannot build {cfg.type}: {err}") from None
