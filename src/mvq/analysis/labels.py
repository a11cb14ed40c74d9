"""Labelled PNG grids: :func:`mvq.images.grid_array` with a title, row and column labels."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from mvq.images import PAD, check_grid_size, grid_array
from mvq.outputs import atomic_write

_FONT = ImageFont.load_default()
_LINE = 12  # pixels per text line of the default bitmap font


def _text_width(text: str) -> int:
    left, _, right, _ = _FONT.getbbox(text)
    return right - left


def labelled_grid(rows: list[torch.Tensor], row_labels: list[str], col_labels: list[str],
                  title: str, scale: int = 3) -> Image.Image:
    """rows: list of (N, C, H, W) in [0, 1] -> an RGB image: ``title`` on top, ``col_labels``
    (N, or fewer: the first columns) above the grid, ``row_labels`` left of it. The images are
    upscaled by ``scale`` (nearest), the text is not."""
    n, _, h, w = rows[0].shape
    check_grid_size(len(rows), n, max(h, w), scale, "lower --images or --scale")
    grid = Image.fromarray(grid_array(rows))
    grid = grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST)
    left = max([_text_width(t) for t in row_labels] + [0]) + 8
    cell = (w + PAD) * scale
    col_lines = [t.split("\n") for t in col_labels]
    head = _LINE * (1 + max([len(lines) for lines in col_lines] + [0])) + 6
    canvas = Image.new("RGB", (max(left + grid.width, _text_width(title) + 8), head + grid.height),
                       "white")
    canvas.paste(grid, (left, head))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 2), title, fill="black", font=_FONT)
    for i, lines in enumerate(col_lines):
        for k, line in enumerate(lines):
            x = left + PAD * scale + i * cell + max(0, (w * scale - _text_width(line)) // 2)
            draw.text((x, _LINE + 4 + k * _LINE), line, fill="black", font=_FONT)
    for r, label in enumerate(row_labels):
        y = head + PAD * scale + r * (h + PAD) * scale + (h * scale - _LINE) // 2
        draw.text((4, y), label, fill="black", font=_FONT)
    return canvas


def save_labelled_grid(rows: list[torch.Tensor], path: str | Path, row_labels: list[str],
                       col_labels: list[str], title: str, scale: int = 3) -> Path:
    """Write :func:`labelled_grid` as a PNG through the atomic writer."""
    img = labelled_grid(rows, row_labels, col_labels, title, scale)
    return atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))
