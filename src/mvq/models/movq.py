"""MoVQ (Zheng et al. 2022): VQGAN encoder, multichannel quantizer, spatially modulated decoder.

Data flow (images in [0, 1], networks on [-1, 1])::

    x -> Encoder -> z (z_channels) -> quant_conv -> z_hat (c * n_q)
      -> MultiChannelVectorQuantize (c chunks, one K x n_q codebook) -> z_q, ids (B, h, w, c)
      -> F0(z_q) -> Decoder(F0, z_q)  (SpatialNorm(F, z_q) in the first blocks / all / none)
      -> recon

z_q given to SpatialNorm is the quantized map itself (no ``post_quant_conv``); with
``f0='none'`` the decoder input is ``post_quant_conv(z_q)`` (the VQGAN input), otherwise F0 is
the Fourier features of z_q, a sinusoidal position code or a learned constant. ``spatial_norm=
'none', f0='none'`` is the baseline VQGAN (with ``num_channels=1``: taming's VQGAN exactly, up to
init); MoVQ paper settings are ``spatial_norm='first3'`` (or 'all'), ``f0='fourier'``,
``num_channels=4``, ``code_dim=64``, ``codebook_size=1024``.

Codes: ``Codes.primary`` is (B, h, w, c) for MoVQ (it is (B, h, w) for the other tokenizers):
the c ids of a position belong to its c channel chunks, in channel order. ``tokens`` counts
h * w * c ids per image, so ``bits_per_image = h * w * c * log2(K)``.

The adversarial / perceptual objective lives in `mvq.losses.VQGANLoss`; ``forward`` returns
the plain tokenizer output (MSE 'rec' + quantizer 'vq'), like every tokenizer here.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from mvq.configuration.sections import MoVQConfig
from mvq.errors import MvqError
from mvq.models.base import Tokenizer, TokenizerOutput
from mvq.models.inputs import CodeLayout
from mvq.nn.spatial_norm import build_f0
from mvq.nn.taming import Decoder, Encoder, decoder_norm_factory, spatial_blocks
from mvq.quantize.multichannel import MultiChannelVectorQuantize
from mvq.runtime.modes import eval_mode
from mvq.values.codes import Codes


class MoVQ(Tokenizer):
    """MoVQ tokenizer: ``encode(x) -> Codes`` (primary (B, h, w, c)), ``decode(Codes) -> x``,
    ``forward(x) -> TokenizerOutput`` (recon in [0, 1] scale, losses 'rec' (MSE) and 'vq')."""

    model_types = ("movq",)
    step_seconds = {"movq": 0.55}

    def __init__(self, cfg: MoVQConfig) -> None:
        nn.Module.__init__(self)  # Tokenizer.__init__ computes a vqvae2 geometry we do not use
        cfg = dataclasses.replace(cfg, ch_mult=tuple(cfg.ch_mult),
                                  attn_resolutions=tuple(cfg.attn_resolutions))
        cfg.validate()
        self.cfg = cfg
        n_z = cfg.num_channels * cfg.code_dim
        g = cfg.grid
        self.encoder = Encoder(cfg.channels, cfg.ch, cfg.ch_mult, cfg.num_res_blocks,
                               cfg.attn_resolutions, cfg.image_size, cfg.z_channels, cfg.dropout,
                               cfg.num_groups)
        self.quant_conv = nn.Conv2d(cfg.z_channels, n_z, 1)
        self.quantizer = MultiChannelVectorQuantize(
            n_z, cfg.codebook_size, channels=cfg.num_channels, channel_first=True, beta=cfg.beta,
            ema=cfg.ema, decay=cfg.decay, restart_dead=cfg.restart_dead,
            kmeans_init=cfg.kmeans_init)
        self.f0 = build_f0(cfg.f0, n_z, cfg.z_channels, (g, g), cfg.fourier_frequencies,
                           cfg.fourier_sigma, cfg.fourier_learnable)
        norm = decoder_norm_factory(spatial_blocks(cfg.spatial_norm, len(cfg.ch_mult)), n_z,
                                    cfg.num_groups)
        self.decoder = Decoder(self.f0.out_channels, cfg.channels, cfg.ch, cfg.ch_mult,
                               cfg.num_res_blocks, cfg.attn_resolutions, cfg.image_size,
                               cfg.dropout, norm, cfg.num_groups)

    # token accounting ------------------------------------------------------
    codebook_sizes = property(lambda self: [self.cfg.codebook_size])

    @classmethod
    def tokens_of(cls, cfg: MoVQConfig) -> tuple[int, int]:
        """(h * w * c, 0): every channel id counts as a token."""
        return (cfg.grid ** 2 * cfg.num_channels, 0)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(h, w, c) of ``Codes.primary`` per image."""
        return (self.cfg.grid, self.cfg.grid, self.cfg.num_channels)

    @property
    def last_layer(self) -> torch.Tensor:
        """Decoder output-conv weight (VQGANLoss's adaptive weight)."""
        return self.decoder.last_layer

    def _meta(self) -> dict:
        return {**super()._meta(), "latent_shape": list(self.latent_shape)}

    # networks --------------------------------------------------------------
    def _latent(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(x * 2 - 1))

    def _decode(self, zq: torch.Tensor) -> torch.Tensor:
        """z_q (B, c*n_q, h, w) -> image on the [-1, 1] scale."""
        return self.decoder(self.f0(zq), zq)

    def forward(self, x: torch.Tensor) -> TokenizerOutput:
        self._check_input(x)
        q = self.quantizer.quantize(self._latent(x))
        codes = Codes(q.indices, meta=self._meta())
        return self._output(x, self._decode(q.quantized), {"vq": q.loss}, codes,
                            [(q.indices, self.cfg.codebook_size)])

    @property
    def code_layout(self) -> CodeLayout:
        return CodeLayout(self.latent_shape, self.cfg.codebook_size)

    def _encode_batch(self, x: torch.Tensor) -> Codes:
        """Deterministic (dropout off, no codebook update): primary ids (B, h, w, c)."""
        with eval_mode(self):
            ids = self.quantizer.encode(self._latent(x))
        return Codes(ids, meta=self._meta())

    def _decode_codes(self, codes: Codes) -> torch.Tensor:
        return (self._decode(self.quantizer.lookup(codes.primary)) + 1) / 2


def build_movq(cfg: MoVQConfig) -> MoVQ:
    try:
        return MoVQ(cfg)
    except ValueError as err:
        raise MvqError(f"cannot build movq: {err}") from None
