"""Figures without a display: the one place matplotlib is switched to its file backend and a
figure becomes PNG bytes (written through ``storage`` by the caller, so a URI works too).
matplotlib is imported on first use: a command that draws nothing never loads it."""

from __future__ import annotations

import io
from typing import Any


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
