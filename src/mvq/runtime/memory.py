"""Memory estimates before allocations that a config value can make arbitrarily large
(``model.num_masks=100000000``): refused with one line instead of an allocator traceback."""

from __future__ import annotations

import os

import torch

from mvq.errors import MvqError

SMALL = 64 << 20  # bytes: allocations below this are never checked


def available_bytes(device: torch.device | str = "cpu") -> int | None:
    """Free memory on ``device`` in bytes (CUDA: the driver's free count; CPU: the kernel's
    MemAvailable, else free physical pages); None when it cannot be told."""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError):
            return None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def human(nbytes: float) -> str:
    """1.5 GiB, 12.0 MiB, ..."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if nbytes < 1024 or unit == "TiB":
            return f"{nbytes:.1f} {unit}" if unit != "B" else f"{int(nbytes)} B"
        nbytes /= 1024
    return f"{nbytes:.1f} TiB"  # pragma: no cover - the loop returns


def check_fits(nbytes: int, what: str, fix: str, device: torch.device | str = "cpu") -> None:
    """MvqError when ``nbytes`` (the estimate of ``what``) exceeds the free memory of
    ``device``; ``fix`` says which setting to lower. Silent when free memory is unknown."""
    if nbytes < SMALL:
        return  # not worth asking the kernel or the driver
    free = available_bytes(device)
    if free is not None and nbytes > free:
        raise MvqError(f"{what} needs about {human(nbytes)}, but {torch.device(device).type} "
                       f"has {human(free)} free; {fix}")
