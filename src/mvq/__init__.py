"""mvq: compact discrete image tokenizers (Masked Vector Quantization, MoVQ).

The library's front door:

- drop-in quantizer layers: :class:`VectorQuantize`, :class:`MaskedVectorQuantize` (MVQ with
  MH-Dropout), :class:`MultiChannelVectorQuantize` (MoVQ), each ``quantized, indices, loss =
  layer(x)``;
- :func:`load`: whatever a saved folder holds (a tokenizer or a prior), in eval mode;
  ``Tokenizer.from_pretrained`` / ``save_pretrained`` and the same on priors.
"""

from mvq import _compat  # noqa: F401  (must run before anything imports torchvision)

__version__ = "0.2.0"

from mvq.quantize.layers import (  # noqa: E402
    MaskedVectorQuantize,
    MultiChannelVectorQuantize,
    VectorQuantize,
)
from mvq.pretrained import load  # noqa: E402
from mvq.models import Tokenizer  # noqa: E402,I001  (registers the tokenizer loader)
from mvq.priors import Prior  # noqa: E402  (registers the prior loader)

__all__ = ["MaskedVectorQuantize", "MultiChannelVectorQuantize", "Prior", "Tokenizer",
           "VectorQuantize", "__version__", "load"]
