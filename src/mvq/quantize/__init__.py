"""Quantizers, one class each with the drop-in contract (``quantized, indices, loss =
layer(x)``; ``quantize(...)`` gives the detailed output on feature maps): `VectorQuantize`,
`MaskedVectorQuantize` (MVQ + MH-Dropout), `MultiChannelVectorQuantize` (MoVQ), and the
field's `FSQ` (finite scalar quantization), `LFQ` (lookup-free quantization) and `ResidualVQ`
(residual VQ over `VectorQuantize` stages)."""

from mvq.quantize.fsq import FSQ
from mvq.quantize.lfq import LFQ
from mvq.quantize.masked import MaskedOutput, MaskedVectorQuantize
from mvq.quantize.multichannel import MultiChannelVectorQuantize
from mvq.quantize.residual import ResidualVQ
from mvq.quantize.vq import QuantizeOutput, VectorQuantize, code_stats

__all__ = ["FSQ", "LFQ", "MaskedOutput", "MaskedVectorQuantize", "MultiChannelVectorQuantize",
           "QuantizeOutput", "ResidualVQ", "VectorQuantize", "code_stats"]
