"""One figure style for the whole book, and the figures the chapters share.

Every figure is readable at book width (about 7 inches), has labelled axes with units, and,
where the paper reports a value, draws it beside ours in a fixed colour with "paper" in the
legend. Chapters call these functions rather than styling plots themselves.
"""
from __future__ import annotations

from contextlib import contextmanager

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np

BOOK_WIDTH = 7.0  # inches; the book's content column
SPAN_COLORS = {
    "system": "#9e9e9e",
    "image": "#1f77b4",
    "query": "#ff7f0e",
    "generated": "#2ca02c",
}
PAPER_COLOR = "#7b3294"  # values quoted from the paper
OURS_COLOR = "#008837"
CONFIG_COLORS = {
    "baseline": "#4d4d4d",
    "img->gen": "#1f77b4",
    "img->query": "#ff7f0e",
    "img->query+gen": "#d62728",
}

RC = {
    "figure.dpi": 110,
    "savefig.dpi": 150,
    "figure.figsize": (BOOK_WIDTH, 3.6),
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "legend.frameon": False,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "image.cmap": "magma",
}


def use_style() -> None:
    """Apply the book's matplotlib style globally (chapters call this once)."""
    mpl.rcParams.update(RC)


@contextmanager
def style():
    """The book's style for the figures made inside the block only."""
    with mpl.rc_context(RC):
        yield


def figure(nrows: int = 1, ncols: int = 1, height: float = 3.6, **kw):
    """A book-width figure with ``nrows x ncols`` axes."""
    with style():
        return plt.subplots(nrows, ncols, figsize=(BOOK_WIDTH, height), **kw)


def paper_line(ax, y: float, label: str, orientation: str = "h", **kw):
    """Draw a value quoted from the paper as a dashed reference line."""
    kw = {"color": PAPER_COLOR, "ls": "--", "lw": 1.2, **kw}
    if orientation == "h":
        return ax.axhline(y, label=f"paper: {label}", **kw)
    return ax.axvline(y, label=f"paper: {label}", **kw)


def image_heatmap(ax, image, geometry, values, *, view: int | None = None, alpha: float = 0.55,
                  mark_peak: bool = True, mask=None, cmap: str = "magma", title: str | None = None):
    """Draw per-image-token ``values`` over the image through the token ``geometry``.

    Each token's value fills the pixel box it covers in the original image (tiles and
    thumbnails overlap; later views are drawn on top, so pass ``view`` to pick one). The
    peak token is marked with a cross; ``mask`` (bool H x W) is outlined in white.
    """
    img = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
    h, w = img.shape[:2]
    values = np.asarray(values, dtype=float)
    boxes = np.asarray(geometry.boxes, dtype=float)
    keep = np.isfinite(boxes).all(axis=1)
    if view is not None and getattr(geometry, "views", None):
        keep &= np.isin(np.arange(len(boxes)), geometry.views[view].get("tokens", np.arange(len(boxes))))
    heat = np.full((h, w), np.nan)
    for i in np.flatnonzero(keep):
        x0, y0, x1, y1 = boxes[i]
        heat[int(max(y0, 0)):int(np.ceil(min(y1, h))), int(max(x0, 0)):int(np.ceil(min(x1, w)))] = values[i]
    ax.imshow(img)
    ax.imshow(np.ma.masked_invalid(heat), cmap=cmap, alpha=alpha, extent=(0, w, h, 0))
    if mask is not None:
        ax.contour(np.asarray(mask, dtype=float), levels=[0.5], colors="white", linewidths=1.2)
    if mark_peak and keep.any():
        peak = np.flatnonzero(keep)[np.nanargmax(values[keep])]
        x0, y0, x1, y1 = boxes[peak]
        ax.plot([(x0 + x1) / 2], [(y0 + y1) / 2], marker="x", color="cyan", ms=9, mew=2.5)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    if title:
        ax.set_title(title)
    return ax
