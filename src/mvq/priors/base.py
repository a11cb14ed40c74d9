"""The one interface every prior answers (docs/architecture.md, "Priors").

A prior is an ``nn.Module`` over `Codes`:

- ``loss(codes, labels=None) -> (loss, parts)``: the training loss and its named parts
  (``forward`` is the same call, so DDP can wrap a prior);
- ``nll(codes, labels=None) -> {stage: nats/token}``: what the prior reports as likelihood;
- ``sample(n, labels=None, generator=None, **decoding) -> Codes`` that its tokenizer decodes;
- ``config()`` / ``from_codes(codes, num_classes, sizes)``: rebuild it, or size it from codes.

A prior declares the code layouts it models (`LAYOUTS`) and the decoding options it takes;
anything else is refused with an `MvqError` before any work.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn

from mvq.errors import MvqError
from mvq.runtime.modes import eval_mode
from mvq.saved import checkpoint
from mvq.saved.pretrained import Pretrained
from mvq.values.codes import Codes
from mvq.values.decoding import check_sampling

# The layouts of `Codes` a tokenizer produces, by name.
LAYOUTS: dict[str, str] = {
    "single-channel": "primary ids (B, H, W) only (vqvae, vqgan)",
    "two-level": "primary (B, H, W) + secondary (B, H', W') ids (hvqvae, hvqgan)",
    "two-level+mask": "primary + secondary ids + mask bits (B, H', W', D') (mvqvae, mvqgan)",
    "multichannel": "primary ids (B, H, W, c), c ids per position (movq; vqvae with a "
                    "quantizer of several ids per position, e.g. residual VQ's stages)",
}


def layout_of(codes: Codes) -> str:
    """The `LAYOUTS` name of ``codes``; MvqError for a shape no tokenizer makes."""
    p = codes.primary
    if p.dim() == 4 and codes.secondary is None and codes.mask is None:
        return "multichannel"
    if p.dim() != 3:
        raise MvqError(f"codes with primary ids {tuple(p.shape)} fit no known layout: expected "
                       "(B, H, W) or (B, H, W, c) (multichannel, then without secondary ids)")
    if codes.secondary is None:
        if codes.mask is not None:
            raise MvqError("codes carry mask bits without secondary ids: no known layout")
        return "single-channel"
    return "two-level" if codes.mask is None else "two-level+mask"


def _check_ids(ids, name: str, k: int, n: int | None, kind: str) -> None:
    if not isinstance(ids, torch.Tensor) or ids.dtype == torch.bool or ids.is_floating_point() \
            or ids.is_complex():
        found = type(ids).__name__ if not isinstance(ids, torch.Tensor) else str(ids.dtype)
        raise MvqError(f"the {kind} prior takes integer {name} ids, found {found}; pass the ids "
                       "a tokenizer's encode() returned")
    if ids.dim() < 1 or (n is not None and ids.shape[0] != n):
        raise MvqError(f"{name} ids have shape {tuple(ids.shape)}, expected {n} items")
    if not ids.numel():
        return
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= k:
        raise MvqError(f"{name} ids span [{lo}, {hi}], this {kind} prior's codebook is "
                       f"[0, {k}); codes from a tokenizer with another codebook size?")


class Prior(Pretrained, nn.Module):
    """Base class of the priors; subclasses set the class attributes and implement the calls.

    ``Prior.from_pretrained(folder)`` / ``prior.save_pretrained(folder)`` (or ``mvq.load``)
    load and save any prior; loading gives eval mode."""

    saved_kind = "prior"
    kind: ClassVar[str] = ""  # the registry name ("gpt", "maskgit", ...)
    layouts: ClassVar[tuple[str, ...]] = ()  # `LAYOUTS` names it models
    stages: ClassVar[tuple[str, ...]] = ()  # keys of nll(), in order
    decoding: ClassVar[tuple[str, ...]] = ()  # keyword options sample() takes
    num_classes: int = 0

    @classmethod
    def check_layout(cls, codes: Codes) -> str:
        """The layout of ``codes`` if this prior models it; MvqError naming it otherwise."""
        layout = layout_of(codes)
        if layout not in cls.layouts:
            fits = sorted(c.kind for c in _subclasses(Prior) if c.kind and layout in c.layouts)
            raise MvqError(
                f"the {cls.kind} prior cannot model {layout} codes ({LAYOUTS[layout]}); it "
                f"models {', '.join(cls.layouts)}. Use --type {' or '.join(fits) or '?'} "
                "for these tokens")
        return layout

    @classmethod
    def _from_checkpoint(cls, folder, info: dict, device: str) -> Prior:
        path = folder / "config.json"
        checkpoint.expect_kind(info, path, "prior")
        kind = info.get("prior_type", "gpt")  # priors saved before the registry were all GPTs
        classes = {c.kind: c for c in _subclasses(Prior) if c.kind}
        if kind not in classes:
            raise MvqError(f"{path} names prior type {kind!r}: expected one of "
                           f"{', '.join(sorted(classes))}")
        try:  # a config an earlier mvq saved is upgraded to today's form first
            prior = classes[kind](**classes[kind].upgrade_config(info["prior"]))
        except (KeyError, TypeError) as err:
            raise MvqError(f"{path}: the prior's config does not build a prior ({err})") from None
        state = checkpoint.load_weights(folder / "model.safetensors", device)
        checkpoint.fit_weights(prior, state, folder, "prior")
        return prior

    def _checkpoint_info(self) -> dict:
        return checkpoint.prior_info(self.kind, self.config(), self.checkpoint_info)

    @classmethod
    def from_codes(cls, codes: Codes, num_classes: int = 0, sizes: dict | None = None) -> Prior:
        raise NotImplementedError

    def config(self) -> dict:
        """JSON-able constructor arguments: ``type(prior)(**prior.config())`` rebuilds it."""
        raise NotImplementedError

    @classmethod
    def upgrade_config(cls, config: dict) -> dict:
        """A `config()` saved by an earlier mvq, in today's form (what its keys' absence meant
        then); loading a checkpoint and `mvq.priors.build_prior` rebuild priors through it."""
        return config

    def forward(self, codes: Codes, labels: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.loss(codes, labels)

    def loss(self, codes: Codes, labels: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    @torch.no_grad()
    def nll(self, codes: Codes, labels: torch.Tensor | None = None) -> dict[str, float]:
        """{stage: mean NLL in nats/token} of ``codes`` (eval mode; `stages` names the keys)."""
        with eval_mode(self):
            _, parts = self.loss(codes, labels)
        return {k: float(v) for k, v in parts.items()}

    def sample(self, n: int, labels: torch.Tensor | None = None,
               generator: torch.Generator | None = None, **decoding) -> Codes:
        raise NotImplementedError

    @property
    def codebook_sizes(self) -> tuple[int, ...]:
        """(K1,) or (K1, K2): the ids this prior models per code level."""
        raise NotImplementedError

    # helpers for subclasses ------------------------------------------------------------
    def check_codes(self, codes: Codes) -> Codes:
        """MvqError unless ``codes`` is a non-empty batch of `Codes` whose ids lie in this
        prior's codebooks and whose mask bits (if any) are 0/1, all with one batch size.
        Shapes are each prior's own check. Called first by ``loss`` (so by ``nll``)."""
        if not isinstance(codes, Codes):
            raise MvqError(f"the {self.kind} prior takes mvq.Codes, found "
                           f"{type(codes).__name__}; wrap ids as "
                           "mvq.values.codes.Codes(primary, ...)")
        _check_ids(codes.primary, "primary", self.codebook_sizes[0], None, self.kind)
        n = len(codes)
        if n == 0:
            raise MvqError(f"the {self.kind} prior got an empty batch of codes: pass at least "
                           "one item")
        if codes.secondary is not None and len(self.codebook_sizes) > 1:
            _check_ids(codes.secondary, "secondary", self.codebook_sizes[1], n, self.kind)
        mask = codes.mask
        if mask is not None and (not isinstance(mask, torch.Tensor) or mask.shape[:1] != (n,) or (
                mask.dtype != torch.bool and not bool(((mask == 0) | (mask == 1)).all()))):
            raise MvqError(f"mask bits must be a bool or 0/1 tensor of {n} items, found "
                           f"{getattr(mask, 'dtype', type(mask).__name__)} "
                           f"{tuple(getattr(mask, 'shape', ()))}")
        return codes

    def check_sample(self, n: int, temperature: float = 1.0, top_k: int | None = None,
                     top_p: float | None = None) -> None:
        """MvqError unless ``n`` is an integer >= 1 and the decoding options are valid for this
        prior (`check_sampling` with its largest codebook). Called first by ``sample``."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise MvqError(f"the {self.kind} prior samples n >= 1 items, got n={n!r}")
        check_sampling(temperature, top_k, top_p)
        vocab = max(self.codebook_sizes)
        if top_k is not None and top_k > vocab:
            raise MvqError(f"top_k={top_k} exceeds the {vocab} ids of this prior's largest "
                           f"codebook; use top_k <= {vocab}, or None to keep every id")

    def check_labels(self, labels: torch.Tensor | None, n: int) -> torch.Tensor | None:
        """(n,) int64 class ids on the prior's device, or None for an unconditional prior."""
        if not self.num_classes:
            if labels is not None:
                raise MvqError(f"this {self.kind} prior is unconditional (trained without "
                               "--class-conditional): it takes no class labels")
            return None
        if labels is None:
            raise MvqError(f"this {self.kind} prior is class conditional ({self.num_classes} "
                           "classes): pass one class label per item")
        labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
        if len(labels) != n:
            raise MvqError(f"{len(labels)} class labels for {n} items: expected one per item")
        if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise MvqError(f"class labels span [{int(labels.min())}, {int(labels.max())}], "
                           f"this prior knows classes 0..{self.num_classes - 1}")
        return labels.to(self.device)

    def check_decoding(self, options: dict) -> None:
        unknown = sorted(set(options) - set(self.decoding))
        if unknown:
            raise MvqError(f"the {self.kind} prior has no decoding option "
                           f"{', '.join(map(repr, unknown))}; it takes "
                           f"{', '.join(self.decoding)}")

    def new_generator(self, generator: torch.Generator | None, seed: int = 0
                      ) -> torch.Generator:
        return generator or torch.Generator(device=self.device).manual_seed(seed)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


@torch.no_grad()
def validate_prior(prior: Prior, codes: Codes, batch_size: int = 256,
                   labels: torch.Tensor | None = None) -> dict[str, float]:
    """Mean NLL over ``codes`` (N items): val_{stage}_{nll (nats),bits} per token for each
    stage the prior reports. ``val_nll`` is the sum of the per-stage means.

    labels: (N,) class ids, needed by (only) a class-conditional prior.
    """
    sums: dict[str, float] = {}
    for start in range(0, len(codes), batch_size):
        chunk = codes[start : start + batch_size]
        lab = None if labels is None else labels[start : start + batch_size]
        for k, v in prior.nll(chunk, lab).items():
            sums[k] = sums.get(k, 0.0) + v * len(chunk)
    out: dict[str, float] = {}
    for k, s in sums.items():
        out[f"val_{k}_nll"] = s / len(codes)
        out[f"val_{k}_bits"] = out[f"val_{k}_nll"] / math.log(2)
    out["val_nll"] = sum(out[f"val_{k}_nll"] for k in sums)
    return out


def _subclasses(cls: type) -> list[type]:
    return [c for sub in cls.__subclasses__() for c in (sub, *_subclasses(sub))]


def codebook_sizes(codes: Codes) -> list[int]:
    """codes.meta['codebook_sizes'] (what the tokenizer writes); MvqError without them."""
    sizes = codes.meta.get("codebook_sizes")
    if not sizes:
        raise MvqError("codes.meta has no 'codebook_sizes': encode them with an mvq tokenizer")
    return [int(k) for k in sizes]
