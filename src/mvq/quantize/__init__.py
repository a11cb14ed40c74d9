"""Quantizers. The drop-in layers (``quantized, indices, loss = vq(x)``) are
`VectorQuantize`, `MaskedVectorQuantize` (MVQ + MH-Dropout) and
`MultiChannelVectorQuantize` (MoVQ); the engines under them are `VectorQuantizer`,
`MaskedQuantizer` and `MultiChannelQuantizer`. The field's quantizers have the
same contract: `FSQ` (finite scalar quantization), `LFQ` (lookup-free
quantization) and `ResidualVQ` (residual VQ over `VectorQuantize` stages)."""

from mvq.quantize.fsq import FSQ
from mvq.quantize.layers import MaskedVectorQuantize, MultiChannelVectorQuantize, VectorQuantize
from mvq.quantize.lfq import LFQ
from mvq.quantize.masked import MaskedOutput, MaskedQuantizer
from mvq.quantize.multichannel import MultiChannelQuantizer
from mvq.quantize.residual import ResidualVQ
from mvq.quantize.vq import QuantizeOutput, VectorQuantizer, code_stats

__all__ = ["FSQ", "LFQ", "MaskedOutput", "MaskedQuantizer", "MaskedVectorQuantize",
           "MultiChannelQuantizer", "MultiChannelVectorQuantize", "QuantizeOutput",
           "ResidualVQ", "VectorQuantize", "VectorQuantizer", "code_stats"]
