"""The `Tokenizer` interface every tokenizer implements, and the builder of a
tokenizer from its model config.

``encode(x) -> Codes``, ``decode(codes) -> x``, ``forward(x) -> TokenizerOutput``
(reconstruction, losses, statistics). Images are (B, C, H, W) in [0, 1]; the networks see them
in [-1, 1]. Each subclass names the ``model.type`` values it is built for (``model_types``,
each a record of `mvq.configuration.config.MODEL_TYPES`: what the config knows of it) and says
what the layers above need of each (its tokens for a config, reproduce's seconds per training step);
`build_model` looks the type up among them, and `model_class` gives the class of a type.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from mvq.configuration.config import (
    MODEL_TYPES,
    Config,
    ModelConfig,
    check_section,
    config_from_dict,
    model_hash,
)
from mvq.errors import MvqError
from mvq.models.inputs import CodeLayout, check_codes, check_images, values_deferred
from mvq.nn.vqvae2 import geometry
from mvq.quantize.vq import usage_perplexity
from mvq.runtime.memory import check_fits
from mvq.runtime.modes import eval_mode
from mvq.saved import checkpoint
from mvq.saved.pretrained import Pretrained
from mvq.values.codes import Codes

# model.type -> class, filled by the subclasses' ``model_types`` (mvq.models imports them all)
MODELS: dict[str, type[Tokenizer]] = {}


@dataclass
class TokenizerOutput:
    """recon: (B, C, H, W) in image scale (not clamped); loss: total scalar to minimise;
    losses: named scalar terms (detached floats for logging come from ``.item()``);
    codes: the batch's Codes; stats: codebook usage / perplexity of this batch."""

    recon: torch.Tensor
    loss: torch.Tensor
    losses: dict[str, torch.Tensor]
    codes: Codes
    stats: dict[str, torch.Tensor] = field(default_factory=dict)  # 0-d, read when logged


class Tokenizer(Pretrained, nn.Module):
    """Base class: holds the config and the image-scale conversions.

    ``Tokenizer.from_pretrained(folder)`` / ``model.save_pretrained(folder)`` (or ``mvq.load``)
    load and save any tokenizer; loading gives eval mode."""

    saved_kind = "tokenizer"
    model_types: ClassVar[tuple[str, ...]] = ()  # the model.type values this class is built for
    # reproduce's timing model (mvq.reproduce.timing) for a run nobody has measured yet: seconds
    # of one training step (batch 32, the quick presets, a quiet 2-core CPU) of each of
    # model_types, before MH-Dropout's per-mask search
    step_seconds: ClassVar[dict[str, float]] = {}

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        names = cls.__dict__.get("model_types", ())
        for name in names:
            if name not in MODEL_TYPES:
                raise MvqError(f"{cls.__name__} names model.type {name!r}, which has no record "
                               "in mvq.configuration.sections.MODEL_TYPES: add its ModelType there")
            if name not in cls.step_seconds:
                raise MvqError(f"{cls.__name__} has no step_seconds for model.type {name!r}")
            if name in MODELS and MODELS[name].__qualname__ != cls.__qualname__:
                raise MvqError(f"model.type {name!r} is built by {MODELS[name].__name__} "
                               f"already; give {cls.__name__} a model_types name of its own")
            MODELS[name] = cls

    @classmethod
    def _from_checkpoint(cls, folder, info: dict, device: str) -> Tokenizer:
        checkpoint.expect_kind(info, folder / "config.json", "tokenizer")
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

    @classmethod
    def tokens_of(cls, cfg) -> tuple[int, int]:
        """(S, S'): primary and secondary tokens per image of a model of config ``cfg``,
        without building it."""
        raise NotImplementedError

    @property
    def tokens(self) -> tuple[int, int]:
        """(S, S'): primary and secondary tokens per image."""
        return self.tokens_of(self.cfg)

    @property
    def mask_bits(self) -> float:
        """Bits of the code beyond its token ids (MVQ's mask)."""
        return 0.0

    @property
    def num_parameters(self) -> int:
        """Trainable parameters (compared across models in the reports)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    @property
    def id_bits(self) -> float:
        """Bits of one image's token ids: S log2(K_1) + S' log2(K_2)."""
        s, s2 = self.tokens
        sizes = self.codebook_sizes
        return s * math.log2(sizes[0]) + (s2 * math.log2(sizes[1]) if s2 else 0.0)

    @property
    def bits_per_image(self) -> float:
        """Information in one image's code: the ids' bits plus the mask bits."""
        return self.id_bits + self.mask_bits

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
        return self._encode_checked(x)

    def _encode_checked(self, x: torch.Tensor, **options) -> Codes:
        """encode's checks, device and mode around ``_encode_batch(x, **options)``."""
        self._check_input(x, values=True)
        p = self._param()
        x = x.to(device=p.device, dtype=p.dtype)
        with eval_mode(self):  # deterministic, and no BatchNorm statistics of a batch of one
            if len(x) == 0:  # the codes of one blank image, sliced to none: right shapes, meta
                return self._encode_batch(x.new_zeros(1, *x.shape[1:]), **options)[:0]
            return self._encode_batch(x, **options)

    def decode(self, codes: Codes, force: bool = False) -> torch.Tensor:
        """Codes (ids within the codebooks, masks bool or 0/1, per ``code_layout``) -> images
        (B, C, H, W) on the [0, 1] scale (not clamped).

        Codes whose ``meta`` names another tokenizer config (its ``config_hash``: codes encoded
        by another model, whose ids mean other vectors here) raise MvqError; ``force=True``
        decodes them anyway. Codes without a ``config_hash`` in their meta are not checked."""
        if not force:
            self._check_origin(codes)
        codes = check_codes(codes, self.code_layout, self.cfg.type).to(self._param().device)
        if len(codes) == 0:
            s = self.cfg.image_size
            return self._param().new_zeros(0, self.cfg.channels, s, s)
        return self._decode_codes(codes)

    def _check_origin(self, codes: Codes) -> None:
        """MvqError when ``codes.meta`` carries a config hash other than this model's."""
        meta = getattr(codes, "meta", None)
        theirs = meta.get("config_hash") if isinstance(meta, dict) else None
        if theirs is None:
            return
        mine = self._meta()
        if theirs != mine["config_hash"]:
            raise MvqError(
                f"these codes were encoded by a {meta.get('model', '?')} tokenizer with config "
                f"hash {theirs}, this is a {mine['model']} tokenizer with config hash "
                f"{mine['config_hash']}: its ids mean other vectors here. Decode them with the "
                "tokenizer that encoded them, or pass force=True to decode them anyway")

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
            stats[f"usage{name}"], stats[f"perplexity{name}"] = usage_perplexity(ids, k)
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
    check_images(x, model.cfg.channels, model.cfg.image_size, model.cfg.type,
                 values=not values_deferred())
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


def model_class(name: str) -> type[Tokenizer]:
    """The tokenizer class built for ``model.type`` ``name``; MvqError listing the types
    otherwise."""
    if not isinstance(name, str) or name not in MODELS:
        raise MvqError(f"model.type must be one of {', '.join(MODELS)}, got {name!r}")
    return MODELS[name]


def _construct(cfg) -> Tokenizer:
    cls = model_class(cfg.type)
    try:
        return cls(cfg)
    except ValueError as err:
        raise MvqError(f"cannot build {cfg.type}: {err}") from None
