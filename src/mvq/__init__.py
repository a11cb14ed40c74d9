"""mvq: compact discrete image tokenizers (Masked Vector Quantization, MoVQ).

The library's front door:

- drop-in quantizer layers: :class:`VectorQuantize`, :class:`MaskedVectorQuantize` (MVQ with
  MH-Dropout), :class:`MultiChannelVectorQuantize` (MoVQ), and the field's :class:`FSQ`,
  :class:`LFQ` and :class:`ResidualVQ`, each ``quantized, indices, loss = layer(x)``;
- :func:`load`: whatever a saved folder holds (a tokenizer or a prior), in eval mode;
  ``Tokenizer.from_pretrained`` / ``save_pretrained`` and the same on priors.
"""

from mvq import _compat  # noqa: F401  (must run before anything imports torchvision)
from mvq._version import __version__
from mvq.models import Tokenizer  # registers the tokenizer loader
from mvq.pretrained import load
from mvq.priors import Prior  # registers the prior loader
from mvq.quantize.fsq import FSQ
from mvq.quantize.layers import (
    MaskedVectorQuantize,
    MultiChannelVectorQuantize,
    VectorQuantize,
)
from mvq.quantize.lfq import LFQ
from mvq.quantize.residual import ResidualVQ

__all__ = ["FSQ", "LFQ", "MaskedVectorQuantize", "MultiChannelVectorQuantize", "Prior",
           "ResidualVQ", "Tokenizer", "VectorQuantize", "__version__", "load"]
