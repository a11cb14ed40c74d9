"""Labelled figures: every PNG mvq writes is a `Figure` (one look across commands).

A figure is rows of images with a title on top, optional column labels above, row labels on
the left, a caption under each image and a note (a legend) at the bottom. Small images are
upscaled nearest-neighbour to a readable size (`readable_scale`); the text is drawn with
Pillow's bundled font (nothing is downloaded). `change_heatmap` shows where two decodes
differ, in the one colour map that the analysis grids and the explorer share.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from mvq.errors import MvqError
from mvq.files.outputs import atomic_write

TEXT_PX = 13  # label text height
TITLE_PX = 16
MIN_CELL = 84  # pixels: small images are upscaled (nearest) until they are at least this wide
MIN_TEXT = 480  # pixels: titles and notes wrap at the grid's width, or at this if it is narrower
GAP = 6  # pixels between images
MARGIN = 8  # pixels around the figure and between its bands
INK, SOFT, FRAME = (20, 20, 20), (90, 90, 90), (200, 200, 200)
BACKGROUND = (255, 255, 255)
HEAT = (0.45, 0.0, 0.05)  # the colour of the largest change in a heatmap (white: none)
MAX_PNG_SIDE = 16384  # pixels; many viewers and browsers open nothing wider or taller
HEAT_LEGEND = "heatmaps: white = no change, dark red = the largest change in the figure"


@lru_cache(maxsize=None)
def font(px: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled font at ``px`` (Pillow >= 10.1 with FreeType), else its bitmap font."""
    try:
        return ImageFont.load_default(size=px)
    except (TypeError, OSError, ImportError):  # older Pillow or no FreeType: fixed 11 px
        return ImageFont.load_default()


def text_size(text: str, px: int = TEXT_PX) -> tuple[int, int]:
    """(width, height) in pixels of (possibly multi-line) ``text`` at ``px``."""
    if not text:
        return 0, 0
    box = ImageDraw.Draw(Image.new("RGB", (1, 1))).multiline_textbbox(
        (0, 0), text, font=font(px), spacing=2)
    return box[2], box[3]


def wrap(text: str, width: int, px: int = TEXT_PX) -> str:
    """``text`` with its words broken into lines no wider than ``width`` pixels at ``px`` (a
    longer single word keeps its own line)."""
    lines: list[str] = []
    for words in (para.split(" ") for para in text.split("\n")):
        line = words[0]
        for word in words[1:]:
            if text_size(f"{line} {word}", px)[0] <= width:
                line = f"{line} {word}"
            else:
                lines.append(line)
                line = word
        lines.append(line)
    return "\n".join(lines)


def check_grid_size(rows: int, cols: int, size: int, scale: int, fix: str) -> None:
    """MvqError before any work when rows x cols images of ``size`` px, upscaled by ``scale``,
    would make a figure wider or taller than `MAX_PNG_SIDE` (labels not counted);
    ``fix`` says what to lower."""
    height, width = (rows * (size * scale + GAP), cols * (size * scale + GAP))
    if max(height, width) > MAX_PNG_SIDE:
        raise MvqError(f"the PNG would be over {width} x {height} px ({rows} x {cols} images "
                       f"of {size} px, scale {scale}); expected at most {MAX_PNG_SIDE} px a "
                       f"side, which viewers open: {fix}")


def readable_scale(size: int, minimum: int = MIN_CELL) -> int:
    """The integer upscale that makes a ``size`` px image at least ``minimum`` px (1 or more)."""
    return max(1, math.ceil(minimum / max(size, 1)))


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [0, 1], C = 1 or 3 -> uint8 (N, H, W, 3)."""
    arr = images.detach().float().clamp(0, 1).cpu().numpy()
    if arr.shape[1] == 1:
        arr = np.repeat(arr, 3, axis=1)
    return (arr.transpose(0, 2, 3, 1) * 255 + 0.5).astype(np.uint8)


def change_size(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N,) mean |a - b| over (C, H, W) of two (N, C, H, W) batches in [0, 1]."""
    return (a.float() - b.float()).abs().flatten(1).mean(1)


def change_heatmap(a: torch.Tensor, b: torch.Tensor, top: float | None = None) -> torch.Tensor:
    """(N, 3, H, W) in [0, 1]: |a - b| averaged over channels, divided by ``top`` (default the
    largest value in the batch) and drawn from white (no change) to `HEAT` (``top``)."""
    diff = (a.float() - b.float()).abs().mean(1, keepdim=True)
    top = float(diff.max()) if top is None else top
    v = (diff / max(top, 1e-8)).clamp(0, 1)
    heat = torch.tensor(HEAT, dtype=v.dtype).view(1, 3, 1, 1)
    return 1 - v * (1 - heat)


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}  # what a figure is written as


def image_format(path: str | Path, option: str = "--out") -> str:
    """The format a figure at ``path`` is written in, from its suffix (none: PNG); MvqError
    for another suffix, before any work (the file would hold bytes its name does not say)."""
    suffix = Path(path).suffix.lower()
    if not suffix:
        return "PNG"
    if suffix not in IMAGE_FORMATS:
        raise MvqError(f"{option} {path}: mvq writes images as {', '.join(IMAGE_FORMATS)}; "
                       f"not {suffix}: give one of those suffixes")
    return IMAGE_FORMATS[suffix]


def save_png(img: Image.Image, path: str | Path) -> Path:
    """Write ``img`` through the atomic writer in the format its suffix names (PNG, or JPEG
    for .jpg / .jpeg, see `image_format`); returns the path."""
    fmt = image_format(path, "output")
    if fmt == "JPEG":
        img = img.convert("RGB")
        return atomic_write(path, lambda tmp: img.save(tmp, format="JPEG", quality=95))
    return atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))


@dataclass
class Figure:
    """Rows of (N, C, H, W) images in [0, 1] (rows may differ in N) with their labels.

    ``row_labels``: one per row (or none); ``col_labels``: for the first columns; ``captions``:
    per row, a caption under each image; ``note``: a legend line under the grid. Labels may hold
    newlines."""

    rows: list[torch.Tensor]
    title: str
    row_labels: list[str] = field(default_factory=list)
    col_labels: list[str] = field(default_factory=list)
    captions: list[list[str]] = field(default_factory=list)
    note: str = ""

    def render(self, scale: int | None = None, fix: str = "show fewer images or lower --scale"
               ) -> Image.Image:
        """The figure as an RGB image; ``scale``: the images' upscale (default readable)."""
        h, w = self.rows[0].shape[-2:]
        scale = readable_scale(max(h, w)) if scale is None else scale
        cols = max(len(r) for r in self.rows)
        check_grid_size(len(self.rows), cols, max(h, w), scale, fix)
        cw, ch = w * scale, h * scale
        col_w = max([cw] + [text_size(t)[0] + 4 for t in self.col_labels]
                    + [text_size(t)[0] + 4 for row in self.captions for t in row])
        heights = [max(ch + self._caption_height(r),
                       text_size(self.row_labels[r])[1] if r < len(self.row_labels) else 0)
                   for r in range(len(self.rows))]
        left = MARGIN + max([text_size(t)[0] for t in self.row_labels] + [0])
        left += MARGIN if self.row_labels else 0
        grid_w = cols * col_w + (cols - 1) * GAP
        title = wrap(self.title, max(left + grid_w - MARGIN, MIN_TEXT), TITLE_PX)
        note = wrap(self.note, max(left + grid_w - MARGIN, MIN_TEXT))
        title_h = text_size(title, TITLE_PX)[1] + MARGIN
        head = MARGIN + title_h + max([text_size(t)[1] for t in self.col_labels] + [0]) + 4
        note_w, note_h = text_size(note)
        width = max(left + grid_w, MARGIN + text_size(title, TITLE_PX)[0],
                    MARGIN + note_w) + MARGIN
        height = (head + sum(heights) + GAP * len(self.rows) + (note_h + MARGIN if note_h else 0)
                  + MARGIN)
        canvas = Image.new("RGB", (width, height), BACKGROUND)
        draw = ImageDraw.Draw(canvas)
        draw.multiline_text((MARGIN, MARGIN), title, fill=INK, font=font(TITLE_PX), spacing=2)
        for j, label in enumerate(self.col_labels):
            x = left + j * (col_w + GAP) + (col_w - text_size(label)[0]) // 2
            draw.multiline_text((x, MARGIN + title_h), label, fill=INK, font=font(TEXT_PX),
                                spacing=2, align="center")
        y = head
        for r, row in enumerate(self.rows):
            if r < len(self.row_labels):
                ty = y + (ch - text_size(self.row_labels[r])[1]) // 2
                draw.multiline_text((MARGIN, max(ty, y)), self.row_labels[r], fill=INK,
                                    font=font(TEXT_PX), spacing=2)
            for j, pixels in enumerate(to_uint8(row)):
                x = left + j * (col_w + GAP) + (col_w - cw) // 2
                tile = Image.fromarray(pixels).resize((cw, ch), Image.NEAREST)
                canvas.paste(tile, (x, y))
                draw.rectangle((x - 1, y - 1, x + cw, y + ch), outline=FRAME)
                caption = self.captions[r][j] if r < len(self.captions) and \
                    j < len(self.captions[r]) else ""
                if caption:
                    draw.multiline_text((x + (cw - text_size(caption)[0]) // 2, y + ch + 3),
                                        caption, fill=SOFT, font=font(TEXT_PX), spacing=2,
                                        align="center")
            y += heights[r] + GAP
        if note_h:
            draw.multiline_text((MARGIN, height - MARGIN - note_h), note, fill=SOFT,
                                font=font(TEXT_PX), spacing=2)
        return canvas

    def _caption_height(self, r: int) -> int:
        """Pixels under row r's images for its captions (0 without captions)."""
        h = max([text_size(t)[1] for t in self.captions[r]] + [0]) if r < len(self.captions) else 0
        return h + 3 if h else 0

    def save(self, path: str | Path, scale: int | None = None,
             fix: str = "show fewer images or lower --scale") -> Path:
        """Write [`render`][mvq.files.figures.Figure.render] as a PNG (JPEG for .jpg /
        .jpeg) through the atomic writer; returns the path."""
        return save_png(self.render(scale, fix), path)
