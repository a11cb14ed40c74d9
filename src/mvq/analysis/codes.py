"""What the analyses do to MVQ codes: load an MVQ tokenizer, draw masks, swap and sum masked
configurations, decode.

A *masked configuration* is a secondary code with a mask, (e', m). MVQ decodes
x = D(e + f(e' * m)) (paper eq. 5); the analyses keep e and change (e', m).
"""

from __future__ import annotations

from pathlib import Path

import torch

from mvq.configuration.config import MASK_TYPES
from mvq.errors import MvqError
from mvq.models.tokenizers import MVQVAE
from mvq.saved.checkpoint import read_info
from mvq.saved.pretrained import load_tokenizer, resolve
from mvq.values.codes import Codes

SUM_MODES = ("codes", "outputs")


def load_mvq(checkpoint: str | Path, device: str = "cpu") -> tuple[MVQVAE, object]:
    """(model in eval mode, config) of an MVQ checkpoint; MvqError for any other tokenizer."""
    kind = read_info(resolve(checkpoint)).get("model_type")
    if kind not in MASK_TYPES:
        raise MvqError(f"{checkpoint} holds a {kind} checkpoint; the mask analyses need an MVQ "
                       f"tokenizer ({' or '.join(MASK_TYPES)}), whose codes carry a mask: pass "
                       "one of those")
    model, cfg, _ = load_tokenizer(checkpoint, device=device)
    return model.eval(), cfg


def random_masks(codes: Codes, count: int, seed: int) -> torch.Tensor:
    """``count`` seeded masks shaped like one image's mask: (count, H', W', D') bool, each bit
    Bernoulli(0.5) as in MH-Dropout."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand((count, *codes.mask.shape[1:]), generator=gen) < 0.5


def repeat(codes: Codes, i: int, count: int) -> Codes:
    """Image ``i``'s code ``count`` times."""
    return Codes.cat([codes[i : i + 1]] * count)


def with_masks(codes: Codes, masks: torch.Tensor) -> Codes:
    """Copies of ``codes`` (one image, or as many as masks) with the masks (M, H', W', D')."""
    base = repeat(codes, 0, len(masks)) if len(codes) == 1 else codes
    return Codes(base.primary, base.secondary, masks.to(base.primary.device).bool(), base.meta)


def transfer(codes: Codes, primary_from: Codes) -> Codes:
    """The masked configurations (e', m) of ``codes`` on the primary codes of ``primary_from``
    (same length)."""
    return Codes(primary_from.primary, codes.secondary, codes.mask, codes.meta)


@torch.no_grad()
def decode(model: MVQVAE, codes: Codes) -> torch.Tensor:
    """Codes -> images (B, C, H, W) clamped to [0, 1]."""
    return model.decode(codes).clamp(0, 1)


@torch.no_grad()
def decode_sum(model: MVQVAE, primary: torch.Tensor, configs: list[Codes],
               mode: str = "codes") -> torch.Tensor:
    """Decode a primary code plus the sum of several masked configurations (MVQ Fig. 6b).

    primary: (B, H, W) ids; configs: Codes of B images each (their secondary and mask used).
    ``mode="codes"`` (default) sums the masked secondary codes before f:
        y = e + f(sum_j e'_j * m_j);
    ``mode="outputs"`` sums what each configuration adds through f:
        y = e + f(0) + sum_j (f(e'_j * m_j) - f(0)).
    With one configuration both are the ordinary decode; with none, e + f(0) (e alone).
    """
    if mode not in SUM_MODES:
        raise MvqError(f"sum mode must be one of {', '.join(SUM_MODES)}, got {mode!r}")
    return model.decode_sum(primary, configs, sum_outputs=mode == "outputs").clamp(0, 1)
