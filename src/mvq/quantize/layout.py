"""The drop-in layers' shared input checks and layouts: a float input of the layer's vector
size, integer ids, MVQ mask bits, and the moves between the caller's layout (tokens
``(B, ..., D)`` channels last, or channel-first maps ``(B, D, ...)``) and the layers'
``(B, D, N, 1)`` maps their ``quantize`` takes. Every layer of `mvq.quantize` (`vq`,
`multichannel`, `masked`, `fsq`, `lfq`, `residual`)
checks its inputs here, so they refuse the same things with the same words.
"""

from __future__ import annotations

import math

import torch

from mvq.errors import MvqError


def check_map(x: object, channels: int, subject: str) -> None:
    """MvqError ``"{subject} a float (B, channels, H, W) map, found ..."`` unless x is one
    (the layers' ``quantize`` and its maps; shape checks only, no host read)."""
    if not (isinstance(x, torch.Tensor) and x.is_floating_point() and x.dim() == 4
            and x.shape[1] == channels):
        found = (f"a {x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor)
                 else type(x).__name__)
        raise MvqError(f"{subject} a float (B, {channels}, H, W) map, found {found}")


def check_input(x: object, dim: int, channel_first: bool, layer: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        found = f"a {x.dtype} tensor" if isinstance(x, torch.Tensor) else type(x).__name__
        raise MvqError(f"{layer} takes a float tensor, found {found}")
    if x.is_meta:
        raise MvqError(f"{layer}: a meta tensor holds no values to quantize; give a tensor on "
                       "a real device (cpu, cuda, ...)")
    axis = 1 if channel_first else -1
    layout = f"(B, {dim}, H, W)" if channel_first else f"(B, N, {dim})"
    if x.dim() < 3 or x.shape[axis] != dim:
        hint = "" if channel_first else "; pass channel_first=True for (B, D, H, W) maps"
        raise MvqError(f"{layer} expects {layout}, found shape {tuple(x.shape)}{hint}")
    return x


def check_ids(ids: object, name: str, shape: tuple | None = None) -> torch.Tensor:
    if not isinstance(ids, torch.Tensor) or ids.is_floating_point() or ids.dtype == torch.bool \
            or ids.is_complex():
        found = f"a {ids.dtype} tensor" if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise MvqError(f"{name} must be an integer tensor of code ids, found {found}")
    if ids.is_meta:
        raise MvqError(f"{name}: a meta tensor holds no ids; give a tensor on a real device")
    if ids.dim() < 1:
        raise MvqError(f"{name} must have a batch axis, (B, *grid), found a 0-d tensor; "
                       "e.g. ids[None]")
    if shape is not None and tuple(ids.shape) != tuple(shape):
        raise MvqError(f"{name} has shape {tuple(ids.shape)}, expected {tuple(shape)}")
    return ids


def check_mask(mask: object, shape: tuple) -> torch.Tensor:
    """MVQ mask bits: a tensor of ``shape`` holding only 0 / 1 (bool, integer or float)."""
    if not isinstance(mask, torch.Tensor) or mask.is_complex():
        raise MvqError(f"mask must be a bool tensor, found {type(mask).__name__}")
    if mask.is_meta:
        raise MvqError("mask: a meta tensor holds no bits; give a tensor on a real device")
    if tuple(mask.shape) != tuple(shape):
        raise MvqError(f"mask has shape {tuple(mask.shape)}, expected {tuple(shape)} (the "
                       "secondary ids' shape, then D')")
    if mask.dtype != torch.bool and mask.numel() and not bool(((mask == 0) | (mask == 1)).all()):
        raise MvqError("mask must hold bits (0 / 1 or False / True), found other values; "
                       "e.g. mask > 0.5")
    return mask.bool()


def check_ids_per_position(indices: object, n: int, what: str) -> tuple[int, ...]:
    """Integer ids ``(B, *grid, n)`` (``n`` per position, one per ``what``); returns the grid."""
    check_ids(indices, "indices")
    if indices.dim() < 2 or indices.shape[-1] != n:
        raise MvqError(f"indices must be (B, *grid, {n}) (one id per {what}), found shape "
                       f"{tuple(indices.shape)}")
    return tuple(indices.shape[1:-1])


def to_columns(x: torch.Tensor, channel_first: bool) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Any ``(B, ..., D)`` (or channel-first ``(B, D, ...)``) as a ``(B, D, N, 1)`` map whose
    N positions are the input's, in order; also returns the grid ``...``."""
    if channel_first:
        grid = tuple(x.shape[2:])
        return x.reshape(*x.shape[:2], math.prod(grid), 1), grid
    grid = tuple(x.shape[1:-1])
    return x.reshape(x.shape[0], math.prod(grid), x.shape[-1]).transpose(1, 2).unsqueeze(-1), grid


def as_rows(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Channels-last ``(B, ..., D)`` as ``(M, dim, 1, 1)`` instances, its rows of ``dim`` in
    order (a view when x is contiguous): the layers' map layout without a transpose."""
    return x.reshape(-1, dim)[:, :, None, None]


def from_columns(z: torch.Tensor, grid: tuple[int, ...], channel_first: bool) -> torch.Tensor:
    """Inverse of `to_columns`: ``(B, D, N, 1)`` back to the input's layout."""
    b, d = z.shape[:2]
    z = z.squeeze(-1)
    return z.reshape(b, d, *grid) if channel_first else z.transpose(1, 2).reshape(b, *grid, d)
