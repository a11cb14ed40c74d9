"""The one place device names are read: ``check_device`` (is it there?) and ``pick_device``
(the torch.device to use; ``auto`` is CUDA when there is one, else the CPU)."""

from __future__ import annotations

import torch

from mvq.errors import MvqError


def check_device(name: str) -> None:
    """MvqError unless ``name`` (auto, cpu, cuda, cuda:N, mps) names a device this machine has."""
    if not isinstance(name, str):
        raise MvqError(f"unknown device {name!r}: expected auto, cpu, cuda or cuda:N")
    if name == "auto":
        return
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise MvqError(f"unknown device {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise MvqError(f"device {name!r} requested but this machine has no usable CUDA GPU; "
                           "use device auto or cpu")
        if dev.index is not None and dev.index >= count:
            raise MvqError(f"device {name!r} requested but this machine has {count} CUDA "
                           f"GPU(s) (cuda:0..cuda:{count - 1}); pick one of those")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise MvqError(f"device {name!r} requested but MPS is not available; use auto or cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise MvqError(f"unsupported device {name!r}: expected auto, cpu, cuda or cuda:N")


def pick_device(name: str) -> torch.device:
    """The torch.device ``name`` names (checked by :func:`check_device`); ``auto`` is the
    first CUDA GPU when there is one, else the CPU."""
    check_device(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
