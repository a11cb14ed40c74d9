"""The quantizer families ``model.quantizer`` chooses from: every ``FAMILY`` of the modules of
`mvq.quantize.families`, by name, the default first. Nothing outside this package names a
family; the config, the tokenizers and the CLI ask this registry."""

from __future__ import annotations

import importlib
import pkgutil

from mvq.errors import MvqError
from mvq.quantize import families
from mvq.quantize.family import Family

DEFAULT = "vq"  # model.quantizer of every config written before families could be chosen


def _discover() -> dict[str, Family]:
    found: dict[str, Family] = {}
    for info in sorted(pkgutil.iter_modules(families.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{families.__name__}.{info.name}")
        family = getattr(module, "FAMILY", None)
        if not isinstance(family, Family):
            raise MvqError(f"{module.__name__} describes no quantizer family: define "
                           "FAMILY = Family(...) in it (mvq.quantize.family)")
        if family.name in found:
            raise MvqError(f"quantizer family {family.name!r} is described twice, in "
                           f"{module.__name__} and another module of mvq.quantize.families")
        found[family.name] = family
    if DEFAULT not in found:
        raise MvqError(f"the default quantizer family {DEFAULT!r} is missing")
    return {DEFAULT: found.pop(DEFAULT), **found}


FAMILIES: dict[str, Family] = _discover()

# every family's own model keys: a model of another family leaves them at their defaults
FAMILY_FIELDS: frozenset[str] = frozenset().union(*(f.fields for f in FAMILIES.values()))


# the families ``model.secondary`` takes: MVQ's masked secondary code (the default: its own VQ
# codebook; else a family whose code vector is its channels)
SECONDARIES: tuple[str, ...] = tuple(name for name, f in FAMILIES.items()
                                     if name == DEFAULT or f.secondary is not None)


def secondary_family(name: str) -> Family:
    """The family ``model.secondary`` names; MvqError listing the ones it takes otherwise."""
    if name not in SECONDARIES:
        raise MvqError(f"model.secondary must be one of {', '.join(SECONDARIES)} (MVQ's "
                       f"secondary code: masks over its channels), got {name!r:.80}")
    return FAMILIES[name]


def secondary_sizes(cfg) -> tuple[int, int]:
    """(D', K') of the secondary code of a masked model config: ``dim2`` and K/2 for the
    default VQ codebook, else the family's code channels and implicit codes."""
    chosen = secondary_family(getattr(cfg, "secondary", DEFAULT))
    if chosen.secondary is None:
        return cfg.dim2, cfg.codebook_size // 2
    return chosen.secondary(cfg).dim, chosen.codebook_size(cfg)


def family(name: str) -> Family:
    """The family called ``name``; MvqError listing the names otherwise."""
    if name not in FAMILIES:
        raise MvqError(f"model.quantizer must be one of {', '.join(FAMILIES)}, got {name!r:.80}")
    return FAMILIES[name]
