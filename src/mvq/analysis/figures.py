"""The four mask analyses of the MVQ paper as labelled figures (`mvq analyze`).

Each function takes an MVQ model and the Codes of some test images and returns a
`mvq.files.figures.Figure`:

- `dims` (Fig. 2): each single mask dimension switched on and off in one image's code,
  with a heatmap of where the two decodes differ;
- `transfer` (Fig. 6a / 9): masked configurations of one primary code on other primaries;
- `compose` (Fig. 6b): 3x3, e alone in the centre, one configuration on each side, the
  corners the sum of their two neighbours' configurations (see ``codes.decode_sum``);
- `diversity` (Fig. 8): random masks of the same (e, e').
"""

from __future__ import annotations

import torch

from mvq.analysis import codes as C
from mvq.files.figures import HEAT_LEGEND, Figure, change_heatmap, change_size
from mvq.models.tokenizers import MVQVAE
from mvq.values.codes import Codes


def _name(codes: Codes, i: int, index: int) -> str:
    """'img 3 (e=5)' for one-token codes, 'img 3' otherwise."""
    p = codes.primary[i]
    return f"img {index} (e={int(p.flatten()[0])})" if p.numel() == 1 else f"img {index}"


def dims(model: MVQVAE, codes: Codes, indices: list[int]) -> Figure:
    """Per image three rows: its encoded mask m* with dimension d forced on (at every secondary
    token), forced off, and a heatmap of |on - off| captioned with its mean; column 0 is m*
    itself, then one column per dimension."""
    d2 = codes.mask.shape[-1]
    decoded = []
    for i in range(len(indices)):
        pair = []
        for on in (True, False):
            masks = codes.mask[i].unsqueeze(0).repeat(d2 + 1, 1, 1, 1)
            for d in range(d2):
                masks[d + 1, ..., d] = on
            pair.append(C.decode(model, C.with_masks(codes[i : i + 1], masks)))
        decoded.append(pair)
    top = max(float((on - off).abs().mean(1).max()) for on, off in decoded)
    rows, labels, captions = [], [], []
    for i, (index, (on, off)) in enumerate(zip(indices, decoded)):
        rows += [on, off, change_heatmap(on, off, top)]
        labels += [f"{_name(codes, i, index)}\ndimension on", "dimension off", "change"]
        captions += [[], [], [""] + [f"{v:.3f}" for v in change_size(on, off)[1:].tolist()]]
    cols = ["encoded\nmask"] + [f"dim {d}" for d in range(d2)]
    return Figure(rows, "dims: the encoded mask with one mask dimension switched on / off "
                  "(Fig. 2)", labels, cols, captions,
                  f"{HEAT_LEGEND}; numbers: mean |on - off| per pixel")


def transfer(model: MVQVAE, codes: Codes, indices: list[int], masks: torch.Tensor) -> Figure:
    """Row 0: the first image's primary code e_1 with its own secondary code e'_1 under its
    encoded mask, no mask, and each of ``masks``; the other rows put the same masked
    configurations (e'_1, m) on the other images' primary codes."""
    none = torch.zeros_like(masks[:1])
    configs = C.with_masks(codes[:1], torch.cat([codes.mask[:1], none, masks.bool()]))
    rows = [C.decode(model, C.transfer(configs, C.repeat(codes, i, len(configs))))
            for i in range(len(codes))]
    labels = [("own codes: " if i == 0 else "on the primary of\n") + _name(codes, i, index)
              for i, index in enumerate(indices)]
    cols = ["encoded\nmask", "no mask"] + [f"mask {j + 1}" for j in range(len(masks))]
    return Figure(rows, f"transfer: {_name(codes, 0, indices[0])}'s secondary code under each "
                  "mask (columns), decoded on other images' primary codes (rows) (Fig. 6a, 9)",
                  labels, cols)


def compose(model: MVQVAE, codes: Codes, indices: list[int], masks: torch.Tensor,
            mode: str = "codes") -> Figure:
    """Per image a 3x3 block: centre e alone (mask 0); top, left, right, bottom the
    configurations (e', m_A..m_D) of ``masks[:4]``; each corner the sum of its two neighbours
    (``mode``: masked secondary codes summed before f, or f's outputs; ``C.decode_sum``)."""
    top, left, right, bottom = range(4)
    layout = [[(top, left), (top,), (top, right)],
              [(left,), (), (right,)],
              [(bottom, left), (bottom,), (bottom, right)]]
    names = [["A and B", "mask A", "A and C"], ["mask B", "no mask", "mask C"],
             ["D and B", "mask D", "D and C"]]
    rows, labels, captions = [], [], []
    for i, index in enumerate(indices):
        one = codes[i : i + 1]
        for cells in layout:
            images = [C.decode_sum(model, one.primary,
                                   [C.with_masks(one, masks[k : k + 1]) for k in cell], mode)
                      for cell in cells]
            rows.append(torch.cat(images))
        labels += [_name(codes, i, index), "", ""]
        captions += names
    summed = ("the masked secondary codes added before f" if mode == "codes"
              else "what each configuration adds through f, added")
    return Figure(rows, "compose: four masks A-D of one secondary code, alone (sides) and "
                  "two at a time (corners) (Fig. 6b)", labels, [], captions,
                  f"centre: the primary code alone (mask all zero); corners: {summed}")


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
    cols = ["input", "encoded\nmask"] + [f"mask {j + 1}" for j in range(len(masks))]
    return Figure(rows, "diversity: the same primary and secondary code under random masks "
                  "(Fig. 8)", labels, cols)
