"""`Codes`: the one object that crosses the tokenizer / prior boundary."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from mvq.errors import MvqError
from mvq.files.jsonio import loads_object
from mvq.files.outputs import atomic_write, save_safetensors


@dataclass
class Codes:
    """Discrete codes of a batch of images.

    primary: (B, H, W) int64 primary code ids.
    secondary: (B, H', W') int64 secondary code ids, or None (one-level models).
    mask: (B, H', W', D') bool MVQ mask bits, or None (no masked quantization).
    meta: model type, config hash and codebook sizes of the tokenizer that made them.
    """

    primary: torch.Tensor
    secondary: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.primary.shape[0]

    def __getitem__(self, idx) -> Codes:
        def pick(t):
            return None if t is None else t[idx]

        return Codes(pick(self.primary), pick(self.secondary), pick(self.mask), dict(self.meta))

    def to(self, device) -> Codes:
        def move(t):
            return None if t is None else t.to(device)

        return Codes(move(self.primary), move(self.secondary), move(self.mask), dict(self.meta))

    @staticmethod
    def cat(items: list[Codes]) -> Codes:
        first = items[0]

        def join(name):
            return (None if getattr(first, name) is None
                    else torch.cat([getattr(c, name) for c in items]))

        return Codes(join("primary"), join("secondary"), join("mask"), dict(first.meta))

    def save(self, path: str | Path, extra: dict[str, torch.Tensor] | None = None,
             metadata: dict[str, str] | None = None) -> None:
        """Write a .safetensors file (tensors + JSON meta in the header).

        ``extra`` tensors and ``metadata`` header entries travel alongside (token files use them
        for labels and their own description).
        """
        tensors = {"primary": self.primary.contiguous().cpu(), **(extra or {})}
        if self.secondary is not None:
            tensors["secondary"] = self.secondary.contiguous().cpu()
        if self.mask is not None:
            tensors["mask"] = self.mask.to(torch.uint8).contiguous().cpu()
        meta = {"mvq_codes": json.dumps(self.meta), **(metadata or {})}
        atomic_write(path, lambda tmp: save_safetensors(
            {k: v.contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=meta))

    @classmethod
    def read(cls, path: str | Path, what: str = "codes") -> tuple[Codes, dict, dict]:
        """(codes, the other tensors of the file, its header metadata); MvqError on a bad file."""
        path = Path(path)
        if not path.is_file():
            raise MvqError(f"{what} file not found: {path} "
                           "(expected a .safetensors written by mvq)")
        try:
            with safe_open(str(path), framework="pt") as fh:
                header = fh.metadata() or {}
            tensors = load_file(str(path))
        except Exception as err:  # noqa: BLE001 - any parse failure is a bad file
            raise MvqError(f"{path} is not a safetensors {what} file ({err})") from None
        if "mvq_codes" not in header or "primary" not in tensors:
            raise MvqError(f"{path} holds no mvq codes (no 'mvq_codes' metadata / 'primary' ids)")
        meta = loads_object(header["mvq_codes"], f"{path}: its 'mvq_codes' header",
                            "the file is damaged or not written by mvq")
        _check_stored(tensors, meta, path)
        mask = tensors.pop("mask", None)
        codes = cls(tensors.pop("primary"), tensors.pop("secondary", None),
                    None if mask is None else mask.bool(), meta)
        return codes, tensors, header

    @classmethod
    def load(cls, path: str | Path) -> Codes:
        """The codes of a file `Codes.save` wrote (meta included); MvqError on a bad file."""
        return cls.read(path)[0]


MAX_CODEBOOK = 1 << 20  # entries per codebook: MoVQ's largest is 16384


def _check_stored(tensors: dict[str, torch.Tensor], meta: dict, path: Path) -> None:
    """MvqError naming ``path`` unless the stored codes are what `Codes.save` writes: integer
    ids of one batch size within the codebook sizes in ``meta``, 0/1 mask bits (uint8 or bool)
    shaped (N, H', W', D') over the secondary grid, one label per item."""
    def bad(problem: str) -> MvqError:
        return MvqError(f"{path}: {problem}; the file is damaged or not written by mvq")

    primary, secondary, mask = tensors["primary"], tensors.get("secondary"), tensors.get("mask")
    n = primary.shape[0] if primary.dim() else 0
    sizes = meta.get("codebook_sizes") or []
    levels = 1 if secondary is None else 2
    if sizes and (not isinstance(sizes, list) or len(sizes) != levels or not all(
            isinstance(k, int) and not isinstance(k, bool) and 2 <= k <= MAX_CODEBOOK
            for k in sizes)):
        raise bad(f"its metadata declares codebook_sizes {sizes!r}, expected {levels} "
                  f"integer(s) in [2, {MAX_CODEBOOK}] (one per id level)")
    for i, (name, ids) in enumerate((("primary", primary), ("secondary", secondary))):
        if ids is None:
            continue
        if ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.dtype.is_complex:
            raise bad(f"{name} ids are {ids.dtype}, expected integers")
        if ids.dim() not in (3, 4) or ids.shape[0] != n:
            raise bad(f"{name} ids have shape {tuple(ids.shape)}, expected (N={n}, H, W[, c])")
        if ids.numel() and i < len(sizes):
            lo, hi = int(ids.min()), int(ids.max())
            if lo < 0 or hi >= int(sizes[i]):
                raise bad(f"{name} ids span [{lo}, {hi}], outside the codebook [0, {sizes[i]})")
    if mask is not None:
        if mask.dtype not in (torch.uint8, torch.bool):
            raise bad(f"mask is {mask.dtype}, expected uint8 or bool bits")
        if mask.numel() and int(mask.max()) > 1:
            raise bad("mask holds values other than 0 and 1")
        grid = None if secondary is None else tuple(secondary.shape[:3])
        if secondary is None or mask.dim() != 4 or tuple(mask.shape[:3]) != grid:
            raise bad(f"mask has shape {tuple(mask.shape)}, expected (N, H', W', D') over the "
                      f"secondary grid {grid}")
    labels = tensors.get("labels")
    if labels is not None and (labels.dim() != 1 or labels.shape[0] != n
                               or labels.dtype.is_floating_point):
        raise bad(f"labels have shape {tuple(labels.shape)} and dtype {labels.dtype}, expected "
                  f"({n},) integers")
