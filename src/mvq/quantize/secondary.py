"""MVQ's secondary code from a quantizer whose code vector is its channels (FSQ, LFQ).

`MaskedVectorQuantize` masks the D' channels of a secondary code e'. By default e' is a row of a
learned VQ codebook (K' entries of D'). `ChannelCode` lets it be an FSQ code (each channel
rounded to its levels: D' = len(levels), K' = prod(levels)) or an LFQ code (a sign per
channel: D' = bits, K' = 2^bits): the mask then selects which of the rounded channels (or
signs) reach f. It gives `MaskedVectorQuantize` what it asks of its secondary quantizer (a
`QuantizeOutput` on ``(B, D', H', W')`` maps, ``lookup`` of ids, ``num_codes``, ``dim`` and
the code rows the table search scores), so the search, the ids and the decoding are the same
as over a VQ codebook. The layer must quantize its input channels themselves (no projection:
``dim`` = its code channels), so that the masked channels are the code's.
"""

from __future__ import annotations

import torch
from torch import nn

from mvq.errors import MvqError
from mvq.quantize.vq import QuantizeOutput

# implicit codebooks up to this many codes keep all their code vectors (a buffer, never saved)
# for the table search; larger ones score the codes a batch uses
TABLE_CODES = 4096


class ChannelCode(nn.Module):
    """A channel-code quantizer layer (``quantized, indices, loss = layer(x)``, with
    ``get_output_from_indices``, ``codebook_size`` and no projection) as MVQ's secondary.

    Attributes:
        layer: the wrapped layer (its own state, e.g. FSQ's levels).
        num_codes: K', the implicit codebook's size. dim: D', the code's channels.
        embedding: (K', D') every code vector when K' <= `TABLE_CODES`, else None.
    """

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        needs = ("get_output_from_indices", "indices_to_codes", "codebook_size", "dim")
        missing = [name for name in needs if not hasattr(layer, name)]
        if missing or not isinstance(layer, nn.Module):
            raise MvqError(f"MaskedVectorQuantize: secondary must be a channel-code quantizer "
                           f"layer such as mvq.FSQ(levels) or mvq.LFQ(bits), found "
                           f"{type(layer).__name__} (it lacks {', '.join(missing) or 'nn.Module'})")
        if getattr(layer, "has_projections", False):
            raise MvqError(f"MaskedVectorQuantize: the secondary {type(layer).__name__} projects "
                           f"its input (dim={layer.dim}); the mask covers the code's own "
                           f"channels, so build it without dim (dim = its code channels)")
        self.layer = layer
        self.num_codes, self.dim = int(layer.codebook_size), int(layer.dim)
        rows = None
        if self.num_codes <= TABLE_CODES:
            rows = layer.indices_to_codes(torch.arange(self.num_codes)).float()
        self.register_buffer("_rows", rows, persistent=False)

    @property
    def embedding(self) -> torch.Tensor | None:
        return self._rows

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The wrapped layer's own drop-in call, ``quantized, indices, loss = layer(x)``."""
        return self.layer(x)

    def quantize(self, z: torch.Tensor) -> QuantizeOutput:
        """z (B, D', H', W') -> the straight-through code (forward value: the code exactly),
        the code itself (no gradient: nothing is learned in it), ids (B, H', W'), the layer's
        loss (FSQ: none; LFQ: commitment and, in training, entropy)."""
        first = getattr(self.layer, "channel_first", False)
        quantized, indices, loss = self.layer(z if first else z.movedim(1, -1))
        quantized = quantized if first else quantized.movedim(-1, 1)
        zero = torch.zeros((), device=z.device)
        return QuantizeOutput(quantized=quantized, codes=quantized.detach(), indices=indices,
                              loss=loss, codebook_loss=zero, commit_loss=zero)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """ids (B, H', W') -> code vectors (B, D', H', W')."""
        out = self.layer.get_output_from_indices(indices)
        return out if getattr(self.layer, "channel_first", False) else out.movedim(-1, 1)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """(n,) ids -> (n, D') code vectors."""
        return self.layer.indices_to_codes(ids).to(ids.device)

    def extra_repr(self) -> str:
        return f"num_codes={self.num_codes}, dim={self.dim}"
