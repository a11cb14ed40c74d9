"""mvq: compact discrete image tokenizers (Masked Vector Quantization, MoVQ)."""

from mvq import _compat  # noqa: F401  (must run before anything imports torchvision)

__version__ = "0.1.0"
