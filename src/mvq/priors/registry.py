"""Prior names -> classes. Adding a prior: one file with a `Prior` subclass, one line here."""

from __future__ import annotations

from mvq.errors import MvqError
from mvq.priors.base import Prior, layout_of
from mvq.priors.maskgit import MaskGITPrior
from mvq.priors.pixelcnn import PixelCNNPrior
from mvq.priors.two_stage import MVQPrior
from mvq.values.codes import Codes

PRIORS: dict[str, type[Prior]] = {
    "gpt": MVQPrior,
    "maskgit": MaskGITPrior,
    "pixelcnn": PixelCNNPrior,
}

# the prior a token file gets without --type: MaskGIT for MoVQ's multichannel codes (MoVQ
# paper 3.2), the two-stage GPT for everything else (MVQ paper 4.1)
DEFAULTS: dict[str, str] = {"multichannel": "maskgit"}


def prior_class(kind: str) -> type[Prior]:
    if kind not in PRIORS:
        raise MvqError(f"unknown prior type {kind!r}: expected one of {', '.join(PRIORS)}")
    return PRIORS[kind]


def default_kind(codes: Codes) -> str:
    """The registry name of the default prior for the layout of ``codes``."""
    return DEFAULTS.get(layout_of(codes), "gpt")


def build_prior(kind: str, config: dict) -> Prior:
    """The prior ``kind`` rebuilt from its ``config()`` (one an earlier mvq saved included)."""
    cls = prior_class(kind)
    return cls(**cls.upgrade_config(config))
