"""The four mask analyses of the MVQ paper as labelled grids (`mvq analyze`).

Each function takes an MVQ model and the Codes of some test images and returns
``(rows, row_labels, col_labels, title)`` for :func:`mvq.analysis.labels.save_labelled_grid`:

- :func:`dims` (Fig. 2): each single mask dimension switched on and off in one image's code;
- :func:`transfer` (Fig. 6a / 9): masked configurations of one primary code on other primaries;
- :func:`compose` (Fig. 6b): 3x3, e alone in the centre, one configuration on each side, the
  corners the sum of their two neighbours' configurations (see ``codes.decode_sum``);
- :func:`diversity` (Fig. 8): random masks of the same (e, e').
"""

from __future__ import annotations

import torch

from mvq.analysis import codes as C
from mvq.codes import Codes
from mvq.models.tokenizers import MVQVAE

Figure = tuple[list[torch.Tensor], list[str], list[str], str]


def _name(codes: Codes, i: int, index: int) -> str:
    """'img 3 (e=5)' for one-token codes, 'img 3' otherwise."""
    p = codes.primary[i]
    return f"img {index} (e={int(p.flatten()[0])})" if p.numel() == 1 else f"img {index}"


def dims(model: MVQVAE, codes: Codes, indices: list[int]) -> Figure:
    """Per image two rows: its encoded mask m* with dimension d forced on, and forced off (at
    every secondary token); column 0 is m* itself, then one column per dimension."""
    d2 = codes.mask.shape[-1]
    rows, labels = [], []
    for i, index in enumerate(indices):
        for on in (True, False):
            masks = codes.mask[i].unsqueeze(0).repeat(d2 + 1, 1, 1, 1)
            for d in range(d2):
                masks[d + 1, ..., d] = on
            rows.append(C.decode(model, C.with_masks(codes[i : i + 1], masks)))
            labels.append(f"{_name(codes, i, index)}: dim on" if on else "dim off")
    cols = ["m*"] + [f"d{d}" for d in range(d2)]
    return rows, labels, cols, "dims: encoded mask m* with one mask dimension set on / off"


def transfer(model: MVQVAE, codes: Codes, indices: list[int], masks: torch.Tensor) -> Figure:
    """Row 0: the first image's primary code e_1 with its own secondary code e'_1 under its
    encoded mask, no mask, and each of ``masks``; the other rows put the same masked
    configurations (e'_1, m) on the other images' primary codes."""
    none = torch.zeros_like(masks[:1])
    configs = C.with_masks(codes[:1], torch.cat([codes.mask[:1], none, masks.bool()]))
    rows = [C.decode(model, C.transfer(configs, C.repeat(codes, i, len(configs))))
            for i in range(len(codes))]
    labels = [("e_1 " if i == 0 else "on ") + _name(codes, i, index)
              for i, index in enumerate(indices)]
    cols = ["m*", "none"] + [f"m{j}" for j in range(len(masks))]
    return rows, labels, cols, "transfer: (e'_1, m) of row 1 on other primary codes"


def compose(model: MVQVAE, codes: Codes, indices: list[int], masks: torch.Tensor,
            mode: str = "codes") -> Figure:
    """Per image a 3x3 block: centre e alone (mask 0); top, left, right, bottom the
    configurations (e', m_A..m_D) of ``masks[:4]``; each corner the sum of its two neighbours
    (``mode``: masked secondary codes summed before f, or f's outputs; ``C.decode_sum``)."""
    top, left, right, bottom = range(4)
    layout = [[(top, left), (top,), (top, right)],
              [(left,), (), (right,)],
              [(bottom, left), (bottom,), (bottom, right)]]
    rows, labels = [], []
    for i, index in enumerate(indices):
        one = codes[i : i + 1]
        for cells in layout:
            images = [C.decode_sum(model, one.primary,
                                   [C.with_masks(one, masks[k : k + 1]) for k in cell], mode)
                      for cell in cells]
            rows.append(torch.cat(images))
        labels += [f"{_name(codes, i, index)}: A+B | A | A+C", "B | e alone | C", "D+B | D | D+C"]
    summed = "e'*m summed before f" if mode == "codes" else "f(e'*m) - f(0) summed"
    return rows, labels, [], f"compose: masks A top, B left, C right, D bottom; corners: {summed}"


def diversity(model: MVQVAE, images: torch.Tensor, codes: Codes, indices: list[int],
              masks: torch.Tensor) -> Figure:
    """Per image a row: the input, its reconstruction (m*), then the same (e, e') under each
    of ``masks``."""
    rows = []
    for i in range(len(codes)):
        dec = C.decode(model, C.with_masks(codes[i : i + 1], masks))
        rec = C.decode(model, codes[i : i + 1])
        rows.append(torch.cat([images[i : i + 1].to(dec), rec, dec]))
    labels = [_name(codes, i, index) for i, index in enumerate(indices)]
    cols = ["input", "m*"] + [f"m{j}" for j in range(len(masks))]
    return rows, labels, cols, "diversity: random masks of the same (e, e')"
