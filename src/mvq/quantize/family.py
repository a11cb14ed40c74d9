"""What the tokenizers and the config need to know of a quantizer family, said once.

A `Family` describes one quantizer that the one-level backbone (``model.type=vqvae``:
x -> E -> quantizer -> D) can use as ``model.quantizer``: its name, a one-line summary, its
bits per token, the model keys of its own, how to build its layer from the model config, and
the shape and codebook of its ids. Each family is one module of `mvq.quantize.families`
holding ``FAMILY = Family(...)``; `mvq.quantize.registry` collects them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from mvq.values.fields import Range


def _no_check(cfg: Any) -> None:
    """Families whose keys need no check beyond their ranges."""


@dataclass(frozen=True)
class Family:
    """One quantizer family.

    name: the ``model.quantizer`` value. summary: one line for ``mvq quantizers``.
    bits: bits per token as a formula of its keys (text, e.g. ``"sum(log2 levels)"``).
    fields: the model keys it reads beyond the backbone's (``dim``, ...), each with its range;
        every one is a field of `mvq.configuration.sections.ModelConfig`, and a model of another
        family must leave it at its default.
    reads_codebook_size: whether ``model.codebook_size`` is its K (else K follows from
        ``fields``).
    build: model config -> the drop-in layer (``quantized, indices, loss = layer(z)`` on
        ``(B, dim, H, W)`` maps, ``get_output_from_indices(ids)`` back).
    codebook_size: model config -> K, the entries each id indexes.
    depth: model config -> ids per position: 1 gives ids ``(B, H, W)``, d > 1 ids
        ``(B, H, W, d)`` (the multichannel layout, modelled as d tokens per position).
    check: model config -> None, MvqError for a combination of keys the ranges cannot refuse.
    secondary: model config -> the channel-code layer (no projection: its code vector is its
        channels) that MVQ's masked secondary code is when ``model.secondary`` names this
        family (`mvq.quantize.secondary.ChannelCode`); None where the family cannot be one
        (the default, VQ, is MVQ's own secondary codebook of K/2 entries of ``dim2``).
    rate: bits per token (an integer) -> the model keys of its own that give about that many
        (None: the family sets no rate; rate sweeps such as ``mvq reproduce frontier`` ask it).
    optional: those of ``fields`` recorded (and hashed) only when they leave their default:
        options added to a family whose models were written before them, so that those
        models keep their record and hash (the vq family's lookup options).
    """

    name: str
    summary: str
    bits: str
    build: Callable[[Any], nn.Module]
    codebook_size: Callable[[Any], int]
    fields: dict[str, Range] = field(default_factory=dict)
    reads_codebook_size: bool = False
    depth: Callable[[Any], int] = lambda cfg: 1
    check: Callable[[Any], None] = _no_check
    secondary: Callable[[Any], nn.Module] | None = None
    optional: frozenset[str] = frozenset()
    rate: Callable[[int], dict] | None = None

    def bits_per_token(self, cfg: Any) -> float:
        """Bits of one position's ids: depth * log2(K)."""
        return self.depth(cfg) * math.log2(self.codebook_size(cfg))

    def reads(self) -> frozenset[str]:
        """The model keys of its own that it reads (``codebook_size`` among them when K)."""
        return frozenset(self.fields) | ({"codebook_size"} if self.reads_codebook_size else set())
