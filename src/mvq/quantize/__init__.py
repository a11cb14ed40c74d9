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

# the engine classes of mvq 0.2, merged into the layers (one class per quantizer): what to write
_MERGED = {
    "VectorQuantizer": "VectorQuantize(dim, codebook_size, channel_first=True, ...).quantize(z)",
    "MultiChannelQuantizer": "MultiChannelVectorQuantize(dim, codebook_size, channels=c, "
                             "channel_first=True, ...).quantize(z)",
    "MaskedQuantizer": "MaskedVectorQuantize(dim, codebook_size, ..., channel_first=True)"
                       ".quantize(y, masks, y2)",
}


def __getattr__(name: str):
    if name in _MERGED:
        from mvq.errors import MvqError

        raise MvqError(f"mvq.quantize.{name} was merged into its layer (one class per "
                       f"quantizer; note the argument order, dim first): use {_MERGED[name]}")
    raise AttributeError(f"module 'mvq.quantize' has no attribute {name!r}")


__all__ = ["FSQ", "LFQ", "MaskedOutput", "MaskedVectorQuantize", "MultiChannelVectorQuantize",
           "QuantizeOutput", "ResidualVQ", "VectorQuantize", "code_stats"]
