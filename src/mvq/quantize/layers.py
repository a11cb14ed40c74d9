"""The drop-in quantizer layers by their former module path (``mvq.quantize.layers``), kept so
that imports of the three layers (and their detailed outputs) written against mvq 0.2 still
work; each layer now lives in its own module.

Every layer is one ``nn.Module`` that takes tokens ``(B, N, D)`` (any ``(B, ..., D)``,
channels last) or, with ``channel_first=True``, feature maps ``(B, D, H, W)`` (any
``(B, D, ...)``); returns the straight-through quantized tensor in the input's layout, the ids
and the layer's whole loss (its codebook / commitment / MH-Dropout terms already summed: add it
to yours); and maps ids back to vectors with ``get_output_from_indices``. The tokenizers are
built on these same layers; ``quantize(...)`` gives the detailed output they use (every loss
term, the raw codes) on channel-first maps.

One layout for everything that is not a feature map: ids are ``(B, *grid)``, multichannel ids
``(B, *grid, c)`` and MVQ masks ``(B, *grid, D')``, the per-position axis last, as in
`mvq.values.codes.Codes`.
"""

from __future__ import annotations

from mvq.quantize.masked import MaskedOutput, MaskedVectorQuantize
from mvq.quantize.multichannel import MultiChannelVectorQuantize
from mvq.quantize.vq import QuantizeOutput, VectorQuantize

__all__ = ["MaskedOutput", "MaskedVectorQuantize", "MultiChannelVectorQuantize",
           "QuantizeOutput", "VectorQuantize"]
