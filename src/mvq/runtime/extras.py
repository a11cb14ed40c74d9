"""Import-order shim for torchvision on a CPU-only torch.

torchvision 0.28.0 is the only release pinned to torch 2.13.0, and its compiled ops are a CUDA
build: on a CPU torch, ``import torchvision`` fails with
``RuntimeError: operator torchvision::nms does not exist``. We register the two missing op
schemas and import again. On a machine whose torchvision imports cleanly this does nothing.

Nothing happens at import: ``import mvq`` (the layers) neither imports torchvision nor touches
``torch.library``. Call ``ensure_torchvision()`` right before importing a package that imports
torchvision (lpips, pytorch-fid, torchvision itself); only then, and only when the import fails
for the missing op schemas, are they registered.
"""

from __future__ import annotations

import sys

import torch

from mvq.errors import MvqError

_LIBRARY = None  # keep the Library object alive, or the schemas are unregistered


def _drop_half_imported() -> None:
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]


def ensure_torchvision() -> bool:
    """Make ``import torchvision`` work; return True when torchvision is importable."""
    global _LIBRARY
    try:
        import torchvision  # noqa: F401

        return True
    except RuntimeError as err:
        if "torchvision::nms" not in str(err) and "does not exist" not in str(err):
            raise
    except ImportError:
        return False
    _drop_half_imported()
    if _LIBRARY is None:
        lib = torch.library.Library("torchvision", "DEF")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _LIBRARY = lib
    import torchvision  # noqa: F401,F811

    return True


def missing(package: str, extra: str = "metrics") -> MvqError:
    """The error for an optional dependency that is not installed: it names the extra of mvq
    that installs it. Use as ``except ImportError: raise missing("lpips") from None``."""
    return MvqError(f"{package} is not installed: this needs mvq's `{extra}` extra, "
                    f"`pip install 'mvq[{extra}]'` (or `pip install 'mvq[all]'`)")
