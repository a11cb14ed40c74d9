"""Quantizers: VectorQuantizer and MaskedQuantizer (MVQ + MH-Dropout)."""

from mvq.quantize.masked import MaskedOutput, MaskedQuantizer
from mvq.quantize.vq import QuantizeOutput, VectorQuantizer, code_stats

__all__ = ["MaskedOutput", "MaskedQuantizer", "QuantizeOutput", "VectorQuantizer", "code_stats"]
