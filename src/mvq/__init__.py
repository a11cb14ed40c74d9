"""mvq: compact discrete image tokenizers (Masked Vector Quantization, MoVQ).

The library's front door:

- drop-in quantizer layers: `VectorQuantize`, `MaskedVectorQuantize` (MVQ with
  MH-Dropout), `MultiChannelVectorQuantize` (MoVQ), and the field's `FSQ`,
  `LFQ` and `ResidualVQ`, each ``quantized, indices, loss = layer(x)``;
- `load`: whatever a saved folder holds (a tokenizer or a prior), in eval mode;
  ``Tokenizer.from_pretrained`` / ``save_pretrained`` and the same on priors.
"""

from importlib import import_module

from mvq._version import __version__
from mvq.quantize.fsq import FSQ
from mvq.quantize.lfq import LFQ
from mvq.quantize.masked import MaskedVectorQuantize
from mvq.quantize.multichannel import MultiChannelVectorQuantize
from mvq.quantize.residual import ResidualVQ
from mvq.quantize.vq import VectorQuantize

__all__ = ["FSQ", "LFQ", "MaskedVectorQuantize", "MultiChannelVectorQuantize", "Prior",
           "ResidualVQ", "Tokenizer", "VectorQuantize", "__version__", "load"]

# The tokenizers, the priors and the loader are imported on first use: ``import mvq`` for the
# layers costs little beyond ``import torch`` and imports no optional package.
_LAZY = {"Tokenizer": "mvq.models", "Prior": "mvq.priors", "load": "mvq.saved.pretrained"}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'mvq' has no attribute {name!r}")
    if name == "load":  # mvq.load reads folders of both kinds: register both loaders
        import_module("mvq.models")
        import_module("mvq.priors")
    value = getattr(import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
