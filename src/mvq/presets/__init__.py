"""The presets shipped with mvq: YAML configs named without a path (``fmnist_f28_k16_quick``).

They are package data, so they travel with an installed mvq: ``mvq train --config NAME`` and
``load_config("NAME")`` work from any folder. ``mvq presets`` lists them.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

SUFFIX = ".yaml"


def names() -> list[str]:
    """The shipped presets' names, sorted."""
    folder = resources.files(__package__)
    return sorted(p.name[: -len(SUFFIX)] for p in folder.iterdir() if p.name.endswith(SUFFIX))


def is_preset(name: str) -> bool:
    """True when ``name`` (with or without ``.yaml``) names a shipped preset."""
    return _bare(name) in names()


def _bare(name: str) -> str:
    return name[: -len(SUFFIX)] if name.endswith(SUFFIX) else name


def text(name: str) -> str:
    """The YAML text of preset ``name`` (``.yaml`` optional). KeyError when there is none."""
    bare = _bare(name)
    if bare not in names():
        raise KeyError(bare)
    return resources.files(__package__).joinpath(bare + SUFFIX).read_text(encoding="utf-8")


def path(name: str) -> Path:
    """The file of preset ``name`` inside the installed package."""
    text(name)  # KeyError for an unknown name
    return Path(str(resources.files(__package__).joinpath(_bare(name) + SUFFIX)))


def describe(name: str) -> str:
    """The preset's one-line description: its first comment line."""
    for line in text(name).splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""
