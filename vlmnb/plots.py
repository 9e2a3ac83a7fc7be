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
    """A book-width figure with ``nrows x ncols`` axes, in the book's style."""
    use_style()
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


# ----------------------------------------------------------------------------- chapter 1
def fractions_by_layer(fractions, title: str = "", paper_bands: dict | None = None):
    """Fig. 1 style: per layer, the distribution over images of each span's attention share.

    ``fractions``: tidy frame with image_id, layer, span, fraction (see vlmnb.fractions).
    Lines are the mean over images, bands the 10-90% range. ``paper_bands`` (name ->
    (first, last) layer in *this* model's depth) shades the paper's layer bands for reference.
    """
    fig, ax = figure(height=3.8)
    for span, color in SPAN_COLORS.items():
        sub = fractions[fractions.span == span]
        if sub.empty:
            continue
        g = sub.groupby("layer").fraction
        layers = np.asarray(g.mean().index)
        ax.plot(layers, g.mean().to_numpy(), color=color, lw=2, label=span)
        ax.fill_between(layers, g.quantile(0.1).to_numpy(), g.quantile(0.9).to_numpy(), color=color, alpha=0.2)
    for name, (lo, hi) in (paper_bands or {}).items():
        ax.axvspan(lo - 0.5, hi + 0.5, color=PAPER_COLOR, alpha=0.07)
        ax.text((lo + hi) / 2, 1.01, f"paper: {name}", ha="center", va="bottom", fontsize=8,
                color=PAPER_COLOR, transform=ax.get_xaxis_transform())
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("share of attention (0-1)")
    ax.set_ylim(0, 1)
    ax.legend(ncol=4, loc="upper right")
    if title:
        ax.set_title(title, pad=14)
    return fig


def token_vs_attention(shares, paper_query_tokens: float = 0.05, paper_query_attention: float = 0.60):
    """Each span's share of the tokens beside its share of the attention, paper thresholds dashed."""
    fig, ax = figure(height=3.2)
    spans = [s for s in shares.index if np.isfinite(shares.loc[s, "attention share"])]
    x = np.arange(len(spans))
    ax.bar(x - 0.2, shares.loc[spans, "token share"], 0.4, color="#bdbdbd", label="share of tokens")
    ax.bar(x + 0.2, shares.loc[spans, "attention share"], 0.4,
           color=[SPAN_COLORS[s] for s in spans], label="share of attention")
    qx = spans.index("query") if "query" in spans else None
    if qx is not None:
        ax.plot([qx - 0.4, qx], [paper_query_tokens] * 2, color=PAPER_COLOR, ls="--", lw=1.5,
                label=f"paper (query): < {paper_query_tokens:.0%} of tokens")
        ax.plot([qx, qx + 0.4], [paper_query_attention] * 2, color=PAPER_COLOR, ls=":", lw=1.5,
                label=f"paper (query): > {paper_query_attention:.0%} of attention")
    ax.set_xticks(x, spans)
    ax.set_ylabel("share (0-1)")
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize=8)
    return fig


def layer_maps(image, geometry, maps, layers, ncols: int = 4, title: str = ""):
    """Fig. 4 style: one attention map over the image per layer (each on its own colour scale)."""
    layers = list(layers)
    nrows = int(np.ceil((len(layers) + 1) / ncols))
    fig, axes = figure(nrows, ncols, height=1.9 * nrows)
    axes = np.atleast_1d(axes).ravel()
    axes[0].imshow(image)
    axes[0].set_title("image")
    axes[0].axis("off")
    for ax, layer in zip(axes[1:], layers):
        image_heatmap(ax, image, geometry, maps[layer], title=f"layer {layer}", alpha=0.75)
    for ax in axes[len(layers) + 1:]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def attention_histograms(values_by_layer: dict, ncols: int = 4, bins: int = 40):
    """Fig. 8 style: per layer, histogram of attention values to image tokens (log counts)."""
    layers = list(values_by_layer)
    nrows = int(np.ceil(len(layers) / ncols))
    fig, axes = figure(nrows, ncols, height=1.8 * nrows, sharey=True)
    axes = np.atleast_1d(axes).ravel()
    for ax, layer in zip(axes, layers):
        v = np.asarray(values_by_layer[layer])
        ax.hist(v, bins=bins, color=SPAN_COLORS["image"])
        ax.set_yscale("log")
        ax.set_title(f"layer {layer}", fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in axes[len(layers):]:
        ax.axis("off")
    fig.supxlabel("attention to one image token (head- and step-averaged)")
    fig.supylabel("image tokens (count, log)")
    fig.tight_layout()
    return fig
