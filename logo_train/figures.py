"""Figures without a display: the one place matplotlib is switched to its file backend and a
figure becomes PNG bytes (written through ``storage`` by the caller, so a URI works too), and
the contact sheets (grids of images with captions) drawn with Pillow. matplotlib is imported
on first use: a command that draws nothing never loads it."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no display, safe in Ray workers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig: Any, dpi: int = 110) -> bytes:
    """The figure as PNG bytes; the figure is closed (its memory freed)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    pyplot().close(fig)
    return buf.getvalue()


@dataclass
class Tile:
    """One cell of a contact sheet: an RGB image (HWC uint8), caption lines above it, their
    colour, and an optional frame colour (e.g. a wrong label)."""

    image: np.ndarray | None
    caption: list[str] = field(default_factory=list)
    color: str = "black"
    frame: str | None = None


def tile_sheet(
    rows: Sequence[Sequence[Tile]],
    title: str,
    *,
    tile: int = 96,
    row_labels: Sequence[str] = (),
    caption_lines: int | None = None,
) -> bytes:
    """A contact sheet as PNG bytes: ``rows`` of tiles, each image fitted into ``tile`` x
    ``tile`` pixels (aspect kept) under its caption; ``row_labels`` to the left of each row.
    Drawn with Pillow: the audit's 64-image sheet takes ~0.1 s where matplotlib's subplots took
    2-3 s (once per audited model)."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=10)
    line_h = 12
    lines = caption_lines
    if lines is None:
        lines = max((len(t.caption) for r in rows for t in r), default=0)
    label_w = 8 + max((int(font.getlength(s)) for s in row_labels), default=0)
    cell_w, cell_h = tile + 12, tile + 10 + lines * line_h
    columns = max((len(r) for r in rows), default=1)
    top = 10 + 2 * line_h
    width = max(label_w + columns * cell_w, int(font.getlength(title)) + 20)
    sheet = Image.new("RGB", (width, top + max(1, len(rows)) * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((10, 8), title, fill="black", font=font)
    for r, row in enumerate(rows):
        y0 = top + r * cell_h
        if r < len(row_labels):
            draw.text((4, y0 + lines * line_h + tile // 2), row_labels[r], fill="black", font=font)
        for c, cell in enumerate(row):
            x0 = label_w + c * cell_w
            for i, text in enumerate(cell.caption):
                draw.text((x0 + 2, y0 + i * line_h), text, fill=cell.color, font=font)
            if cell.image is None:
                continue
            image = Image.fromarray(cell.image)
            image.thumbnail((tile, tile))
            ix = x0 + (tile - image.width) // 2 + 4
            iy = y0 + lines * line_h + (tile - image.height) // 2 + 4
            sheet.paste(image, (ix, iy))
            if cell.frame:
                box = (ix - 3, iy - 3, ix + image.width + 2, iy + image.height + 2)
                draw.rectangle(box, outline=cell.frame, width=3)
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return buf.getvalue()
