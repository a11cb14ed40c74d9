"""The one place device names are read: ``check_device`` (is it there?) and ``pick_device``
(the torch.device to use; ``auto`` is CUDA when there is one, else the CPU); and whether a
tensor's values may be read on the host mid-step (``host_reads_free``, ``sync_free``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

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
    """The torch.device ``name`` names (checked by `check_device`); ``auto`` is the
    first CUDA GPU when there is one, else the CPU."""
    check_device(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


_SYNC_FREE: ContextVar[bool] = ContextVar("mvq_sync_free", default=False)


def host_reads_free(t: torch.Tensor) -> bool:
    """Whether reading ``t``'s values on the host costs nothing: on the CPU there is no device
    queue to wait for. Code inside a training step that would read data on the host (a count,
    a maximum) takes a read-free path where this is False, so a GPU step never stalls its
    queue; `sync_free` makes it False on the CPU too."""
    return t.device.type == "cpu" and not _SYNC_FREE.get()


@contextmanager
def sync_free() -> Iterator[None]:
    """Run the accelerators' read-free paths on any device (the tests count the host reads of
    a training step under it; the results are the same up to the random draws)."""
    token = _SYNC_FREE.set(True)
    try:
        yield
    finally:
        _SYNC_FREE.reset(token)
