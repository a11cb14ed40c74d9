"""The index of each row's smallest value, as ``torch.argmin(x, -1)`` gives it, faster on the CPU
for long rows.

The nearest-code search and the mask table's search end in an argmin over K codes (or J
masks) per row. On the CPU torch's argmin over the last axis runs element by element, while its
min-without-index (``amin``) is vectorised and several times faster. For rows of 256 values and
more, `row_argmin` cuts each row into G groups: ``amin`` of every group (all values, vectorised),
argmin over the G group minima (the first group holding the row's minimum), then argmin inside
that one group. The result is the first index of the minimum, as torch's: the first group that
holds it, and its first place there, with NaN (a minimum for both) handled the same way. The
argmin work falls from K to G + K / G values per row (tests/test_argmin.py checks equality,
ties and NaN included; `mvq bench layers` measures the layers).
"""

from __future__ import annotations

import torch

MIN_LENGTH = 256  # shorter rows: torch's argmin is as fast


def _groups(k: int) -> int:
    """Groups per row of ``k`` values: 16 (8 below 512 values), a divisor of k leaving at least
    16 values a group; 1 (no split) where none divides."""
    for g in ((16, 8, 4) if k >= 512 else (8, 4)):
        if k % g == 0 and k // g >= 16:
            return g
    return 1


def row_argmin(x: torch.Tensor) -> torch.Tensor:
    """``torch.argmin(x, -1)``: the same indices (the first of ties), faster for long rows on the
    CPU; torch's own elsewhere."""
    k = x.shape[-1]
    if x.device.type != "cpu" or k < MIN_LENGTH or x.numel() == 0:
        return x.argmin(-1)
    g = _groups(k)
    if g == 1:
        return x.argmin(-1)
    rows = x.reshape(-1, g, k // g)
    group = rows.amin(2).argmin(1)  # the first group holding the row's minimum
    inner = rows[torch.arange(rows.shape[0]), group].argmin(1)  # its first place there
    return (group * (k // g) + inner).view(x.shape[:-1])
