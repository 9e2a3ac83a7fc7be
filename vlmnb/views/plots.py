"""One figure style for the whole book, and the figures the chapters share.

Every figure is readable at book width (about 7 inches), has labelled axes with units, and,
where the paper reports a value, draws it beside ours in a fixed colour with "paper" in the
legend. Legends sit under the axes (:func:`legend_below`), never over the data. Each figure
records the numbers it drew (:mod:`vlmnb.views.figure_data`) so that its chapter can offer
them for download. Chapters call these functions rather than styling plots themselves.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Mapping

import matplotlib as mpl
import matplotlib.pyplot as plt
from matplotlib.patches import Patch
import numpy as np
import pandas as pd

from vlmnb.views.figure_data import record
from vlmnb.views.panels import HIGHLIGHT, detail_text_html, highlight_html, knockout_panel_html  # noqa: F401

BOOK_WIDTH = 7.0  # inches; the book's content column
SPAN_COLORS = {
    "system": "#9e9e9e",
    "image": "#1f77b4",
    "query": "#ff7f0e",
    "generated": "#2ca02c",
}
PAPER_COLOR = "#7b3294"  # values quoted from the paper
OURS_COLOR = "#008837"
#: line colours of several models in one figure, in the order given (chapters set the embedded
#: models side by side)
MODEL_COLORS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a")
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
    """A book-width figure with ``nrows x ncols`` axes, in the book's style; ``layout="constrained"``
    for a figure with :func:`legend_below`."""
    use_style()
    return plt.subplots(nrows, ncols, figsize=(BOOK_WIDTH, height), **kw)


#: characters of legend text that fit one row under a book-width figure (at font size 8)
LEGEND_ROW_CHARS = 120


def legend_below(fig, axes=None, fontsize: float = 8, extra=(), **kw):
    """One legend for ``fig`` under its axes, outside the data (the figure's constrained layout
    makes room for it), with the entries of ``axes`` (default: all) and the ``extra`` (handle,
    label) pairs, in as few rows as fit."""
    handles, labels = [], []
    for ax in fig.axes if axes is None else axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    for handle, label in extra:
        handles.append(handle)
        labels.append(label)
    if not labels:
        return None
    widest = max(len(label) for label in labels) + 6  # the handle and the gap to the next entry
    ncol = max(1, min(len(labels), LEGEND_ROW_CHARS // widest))
    return fig.legend(handles, labels, loc="outside lower center", ncol=ncol, fontsize=fontsize, **kw)


def paper_line(ax, y: float, label: str, orientation: str = "h", **kw):
    """Draw a value quoted from the paper as a dashed reference line."""
    kw = {"color": PAPER_COLOR, "ls": "--", "lw": 1.2, **kw}
    if orientation == "h":
        return ax.axhline(y, label=f"paper: {label}", **kw)
    return ax.axvline(y, label=f"paper: {label}", **kw)


def finish_f1_axes(fig, ax, xlabel: str, title: str = "", ylabel: str = "F1 vs. baseline description"):
    """The end of every F1 figure: axis labels, F1 from 0 to 1 (with room for a full score), the
    legend under the axes, the title."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.05)
    legend_below(fig)
    if title:
        ax.set_title(title)
    return fig


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
        keep &= np.isin(np.arange(len(boxes)), np.asarray(geometry.views[view].tokens).ravel())
    drawn = values.copy()
    for v in getattr(geometry, "views", None) or []:  # tokens that pool a whole view share its box: show their mean
        if getattr(v, "whole_view", False) and len(v.token_indices):
            drawn[v.token_indices] = np.mean(values[v.token_indices])
    heat = np.full((h, w), np.nan)
    for i in np.flatnonzero(keep):
        x0, y0, x1, y1 = boxes[i]
        heat[int(max(y0, 0)):int(np.ceil(min(y1, h))), int(max(x0, 0)):int(np.ceil(min(x1, w)))] = drawn[i]
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

    ``fractions``: tidy frame with image_id, layer, span, fraction (see vlmnb.experiments.fractions).
    Lines are the mean over images, bands the 10-90% range. ``paper_bands`` (name ->
    (first, last) layer in *this* model's depth) shades the paper's layer bands for reference.
    """
    fig, ax = figure(height=4.0, layout="constrained")
    numbers = []
    for span, color in SPAN_COLORS.items():
        sub = fractions[fractions.span == span]
        if sub.empty:
            continue
        g = sub.groupby("layer").fraction
        layers = np.asarray(g.mean().index)
        mean, p10, p90 = g.mean().to_numpy(), g.quantile(0.1).to_numpy(), g.quantile(0.9).to_numpy()
        ax.plot(layers, mean, color=color, lw=2, label=span)
        ax.fill_between(layers, p10, p90, color=color, alpha=0.2)
        numbers.append(pd.DataFrame({"layer": layers, "span": span, "mean": mean, "p10": p10, "p90": p90}))
    record("fractions_by_layer", pd.concat(numbers) if numbers else
           pd.DataFrame(columns=["layer", "span", "mean", "p10", "p90"]))
    for name, (lo, hi) in (paper_bands or {}).items():
        ax.axvspan(lo - 0.5, hi + 0.5, color=PAPER_COLOR, alpha=0.07)
        ax.text((lo + hi) / 2, 1.01, f"paper: {name}", ha="center", va="bottom", fontsize=8,
                color=PAPER_COLOR, transform=ax.get_xaxis_transform())
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("share of attention (0-1)")
    ax.set_ylim(0, 1)
    legend_below(fig)
    if title:
        ax.set_title(title, pad=14)
    return fig


def token_vs_attention(shares, paper_query_tokens: float = 0.05, paper_query_attention: float = 0.60):
    """Each span's share of the tokens beside its share of the attention, paper thresholds dashed."""
    fig, ax = figure(height=3.6, layout="constrained")
    spans = [s for s in shares.index if np.isfinite(shares.loc[s, "attention share"])]
    record("token_vs_attention", pd.DataFrame({"span": spans, "token_share": shares.loc[spans, "token share"].to_numpy(),
                                               "attention_share": shares.loc[spans, "attention share"].to_numpy()}))
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
    legend_below(fig)
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
    record("layer_maps", pd.DataFrame([{"layer": layer, "token": t, "attention": float(v)}
                                       for layer in layers for t, v in enumerate(np.asarray(maps[layer]).ravel())],
                                      columns=["layer", "token", "attention"]))
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
    numbers = []
    for ax, layer in zip(axes, layers):
        v = np.asarray(values_by_layer[layer])
        counts, edges, _ = ax.hist(v, bins=bins, color=SPAN_COLORS["image"])
        numbers.append(pd.DataFrame({"layer": layer, "bin_low": edges[:-1], "bin_high": edges[1:],
                                     "count": counts.astype(int)}))
        ax.set_yscale("log")
        ax.set_title(f"layer {layer}", fontsize=9)
        ax.tick_params(labelsize=7)
    record("attention_histograms", pd.concat(numbers) if numbers else
           pd.DataFrame(columns=["layer", "bin_low", "bin_high", "count"]))
    for ax in axes[len(layers):]:
        ax.axis("off")
    fig.supxlabel("attention to one image token (head- and step-averaged)")
    fig.supylabel("image tokens (count, log)")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- chapter 2
def f1_bars(summary, paper: dict | None = None, title: str = ""):
    """Fig. 2e style: mean F1 per knockout kind, for "all layers" and "outside the window".

    ``summary``: rows with kind, scope ("all"/"outside"), mean, ci_low, ci_high.
    ``paper``: kind -> F1 the paper reports for all layers (drawn as purple ticks).
    """
    fig, ax = figure(height=3.8, layout="constrained")
    kinds = [k for k in CONFIG_COLORS if k != "baseline" and k in set(summary.kind)]
    x = np.arange(len(kinds))
    numbers, scopes = [], []
    for offset, scope, hatch in [(-0.2, "all", None), (0.2, "outside", "//")]:
        sub = summary[summary.scope == scope].set_index("kind").reindex(kinds)
        if sub["mean"].isna().all():
            continue
        numbers.append(pd.DataFrame({"kind": kinds, "scope": scope, "mean": sub["mean"].to_numpy(),
                                     "ci_low": sub["ci_low"].to_numpy(), "ci_high": sub["ci_high"].to_numpy(),
                                     "paper": [(paper or {}).get(k, np.nan) if scope == "all" else np.nan
                                               for k in kinds]}))
        err = np.vstack([sub["mean"] - sub["ci_low"], sub["ci_high"] - sub["mean"]])
        ax.bar(x + offset, sub["mean"], 0.38, yerr=err, capsize=3, hatch=hatch, edgecolor="white",
               color=[CONFIG_COLORS[k] for k in kinds])
        # the bars' colours name the knockout (on the axis); the legend shows the hatching only
        scopes.append((Patch(facecolor="#9e9e9e", edgecolor="white", hatch=hatch),
                       "KO in all layers" if scope == "all" else "KO outside the middle window"))
    for i, kind in enumerate(kinds):
        if paper and kind in paper:
            ax.plot([i - 0.4, i], [paper[kind]] * 2, color=PAPER_COLOR, lw=2.5,
                    label="paper, all layers (InternVL2-76B)" if i == 0 else None)
    record("f1_bars", pd.concat(numbers) if numbers else
           pd.DataFrame(columns=["kind", "scope", "mean", "ci_low", "ci_high", "paper"]))
    ax.set_xticks(x, kinds)
    ax.set_ylabel("F1 vs. baseline description")
    ax.set_ylim(0, 1.05)
    legend_below(fig, extra=scopes)
    if title:
        ax.set_title(title)
    return fig


def f1_by_start_layer(summary, n_layers: int, paper_rise: tuple[int, int] | None = None, title: str = ""):
    """Fig. 2f style: F1 when the knockout acts from layer l on, per kind, with 95% CIs.

    ``paper_rise``: the layers (rescaled to this model) where the paper sees F1 rise sharply.
    """
    fig, ax = figure(height=4.0, layout="constrained")
    record("f1_by_start_layer", summary[["kind", "start", "mean", "ci_low", "ci_high"]].sort_values(["kind", "start"]))
    for kind, sub in summary.groupby("kind"):
        sub = sub.sort_values("start")
        ax.plot(sub["start"], sub["mean"], marker="o", color=CONFIG_COLORS.get(kind), label=kind)
        ax.fill_between(sub["start"].astype(float), sub["ci_low"], sub["ci_high"], color=CONFIG_COLORS.get(kind), alpha=0.15)
    if paper_rise:
        ax.axvspan(paper_rise[0], paper_rise[1], color=PAPER_COLOR, alpha=0.08,
                   label="paper: sharp rise (layers 20-40 of 80, rescaled)")
    ax.xaxis.set_major_locator(mpl.ticker.MaxNLocator(integer=True))
    ax.set_xlim(-0.5, n_layers - 0.5)
    return finish_f1_axes(fig, ax, "knockout from layer l on (0-based)", title)


# --- chapter 3: localisation of fine details (owned by the localisation chapter)
def localization_by_layer(by_layer, by_window, chance: dict, n_layers: int, paper: dict | None = None,
                          title: str = ""):
    """Fig. 7 / A6 style: localisation accuracy per layer (thin line, 95% band), averaged over
    windows of consecutive layers (bars with 95% intervals), the chance level (dashed grey,
    band = its interval) and, from ``paper`` (an entry of ``vlmnb.experiments.paper.LOCALIZATION`` plus
    ``layers``, the paper model's depth), the paper's peak accuracy and its middle layers
    rescaled to this model's depth."""
    fig, ax = figure(height=4.0, layout="constrained")
    numbers = [pd.DataFrame({"series": "window", "first": by_window["first"], "last": by_window["last"],
                             "mean": by_window["mean"], "ci_low": by_window["ci_low"], "ci_high": by_window["ci_high"]}),
               pd.DataFrame({"series": "layer", "first": by_layer["layer"], "last": by_layer["layer"],
                             "mean": by_layer["mean"], "ci_low": by_layer["ci_low"], "ci_high": by_layer["ci_high"]})]
    if chance:
        numbers.append(pd.DataFrame([{"series": "chance", "first": 0, "last": n_layers - 1, "mean": chance.get("mean"),
                                      "ci_low": chance.get("ci_low"), "ci_high": chance.get("ci_high")}]))
    record("localization_by_layer", pd.concat([n for n in numbers if len(n)] or numbers[:1]))
    if len(by_window):
        centres = (by_window["first"] + by_window["last"]) / 2
        widths = by_window["last"] - by_window["first"] + 0.9
        err = np.vstack([by_window["mean"] - by_window["ci_low"], by_window["ci_high"] - by_window["mean"]])
        ax.bar(centres, by_window["mean"], widths, yerr=err, capsize=3, color=OURS_COLOR, alpha=0.3,
               edgecolor=OURS_COLOR, error_kw={"ecolor": OURS_COLOR, "alpha": 0.8},
               label="ours, mean over each layer window")
    if len(by_layer):
        ax.plot(by_layer["layer"], by_layer["mean"], marker="o", ms=3, color=OURS_COLOR, lw=1.5, label="ours, per layer")
        ax.fill_between(by_layer["layer"].astype(float), by_layer["ci_low"], by_layer["ci_high"],
                        color=OURS_COLOR, alpha=0.12)
    if chance and np.isfinite(chance.get("mean", np.nan)):
        ax.axhline(chance["mean"], color="#636363", ls="--", lw=1.2, label=f"chance ({chance['mean']:.2f})")
        ax.axhspan(chance["ci_low"], chance["ci_high"], color="#636363", alpha=0.08)
    if paper:
        depth = paper.get("layers", 80)
        if "peak_accuracy" in paper:
            paper_line(ax, paper["peak_accuracy"], f"peak ~{paper['peak_accuracy']:.0%}")
        lo, hi = paper.get("mid_layers", (None, None))
        if lo is not None:
            ax.axvspan(lo / depth * n_layers - 0.5, hi / depth * n_layers - 0.5, color=PAPER_COLOR, alpha=0.07,
                       label=f"paper: middle layers {lo}-{hi} of {depth}, rescaled")
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("localisation accuracy\n(share of details)")
    ax.set_xlim(-0.7, n_layers - 0.3)
    ax.set_ylim(0, 1.02)
    legend_below(fig)
    if title:
        ax.set_title(title)
    return fig


def _map_on_image(ax, image, geometry, values, mask=None):
    """Paint per-token ``values`` of the view holding the peak token over the image, mark the
    peak's box centre with a cross and outline ``mask`` in white."""
    values = np.asarray(values, dtype=float)
    boxes = np.asarray(geometry.boxes, dtype=float)
    has_box = np.isfinite(boxes).all(axis=1)
    masked = np.where(has_box, values, -np.inf)
    peak = int(np.argmax(masked))
    view = next((v.name for v in geometry.views if peak in set(v.token_indices.tolist())), None)
    heat = geometry.paint(values, view=view)
    w, h = geometry.image_size
    ax.imshow(image)
    ax.imshow(np.ma.masked_invalid(heat), cmap="magma", alpha=0.6, extent=(0, w, h, 0))
    if mask is not None:
        ax.contour(np.asarray(mask, dtype=float), levels=[0.5], colors="white", linewidths=1.2)
    x0, y0, x1, y1 = boxes[peak]
    ax.plot([(x0 + x1) / 2], [(y0 + y1) / 2], marker="x", color="cyan", ms=9, mew=2.5)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    return view


def detail_gallery(items: list, ncols: int = 2, title: str = ""):
    """Fig. 6 style: per detail, the image with the mask outlined, and the middle-layer
    attention of the detail's tokens over the image (peak: cyan cross, mask: white outline).

    ``items``: dicts with image, geometry, mask, map, phrase, image_id (see
    ``vlmnb.experiments.localize.gallery_items``). For tiled models the view holding the peak is drawn.
    """
    record("detail_gallery", pd.DataFrame([{"image_id": str(it["image_id"]), "phrase": it["phrase"], "token": t,
                                            "attention": float(v)}
                                           for it in items for t, v in enumerate(np.asarray(it["map"]).ravel())],
                                          columns=["image_id", "phrase", "token", "attention"]))
    n = len(items)
    if n == 0:
        fig, ax = figure(height=1.0)
        ax.axis("off")
        ax.text(0.5, 0.5, "no fine details to show", ha="center", va="center")
        return fig
    ncols = max(1, min(ncols, n))
    nrows = int(np.ceil(n / ncols))
    fig, axes = figure(nrows, 2 * ncols, height=2.3 * nrows + 0.4)
    axes = np.atleast_2d(axes)
    for k in range(nrows * ncols):
        a_img, a_map = axes[k // ncols, 2 * (k % ncols)], axes[k // ncols, 2 * (k % ncols) + 1]
        if k >= n:
            a_img.axis("off")
            a_map.axis("off")
            continue
        it = items[k]
        a_img.imshow(it["image"])
        if it.get("mask") is not None:
            a_img.contour(np.asarray(it["mask"], dtype=float), levels=[0.5], colors="white", linewidths=1.2)
        a_img.set_xticks([])
        a_img.set_yticks([])
        a_img.grid(False)
        a_img.set_title(f"{it['image_id']}", fontsize=8)
        view = _map_on_image(a_map, it["image"], it["geometry"], it["map"], it.get("mask"))
        a_map.set_title(f"\u201c{it['phrase']}\u201d" + (f" ({view})" if view and view != "image" else ""), fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


# --- chapters 4-5: image-token redundancy (top-k) and image re-prompting
def f1_by_k(summary, n_image: int, paper_plateau_k: float | None = 0.05, paper_f1: float | None = 0.8,
            title: str = ""):
    """Fig. 9 / A7 style: mean F1 (95% band) when generated tokens see only each layer's top-k
    image tokens, against k (log axis, with the number of kept tokens under each tick).

    ``summary``: one model's summary by ``k``, or model name -> summary (one line per model, e.g.
    the book's two embedded models; ``n_image`` is then the first model's count of image tokens)."""
    fig, ax = figure(height=4.0, layout="constrained")
    by_model = dict(summary) if isinstance(summary, Mapping) else {"ours": summary}
    numbers, all_ks = [], set()
    for color, (name, frame) in zip((OURS_COLOR,) + MODEL_COLORS[1:] if len(by_model) == 1 else MODEL_COLORS,
                                    by_model.items()):
        sub = frame.sort_values("k")
        ks = sub["k"].astype(float).to_numpy()
        all_ks.update(ks.tolist())
        numbers.append(pd.DataFrame({"model": name, "k": ks,
                                     "tokens_kept": [max(1, int(round(k * n_image))) for k in ks],
                                     "mean": sub["mean"].to_numpy(), "ci_low": sub["ci_low"].to_numpy(),
                                     "ci_high": sub["ci_high"].to_numpy()}))
        ax.plot(ks * 100, sub["mean"], marker="o", color=color, label=name)
        ax.fill_between(ks * 100, sub["ci_low"], sub["ci_high"], color=color, alpha=0.15)
    record("f1_by_k", pd.concat(numbers, ignore_index=True))
    if paper_plateau_k:
        ax.axvline(paper_plateau_k * 100, color=PAPER_COLOR, ls="--", lw=1.5,
                   label=f"paper: plateau from ~{paper_plateau_k * 100:g}% (InternVL2-76B)")
    if paper_f1:
        ax.axhline(paper_f1, color=PAPER_COLOR, ls=":", lw=1.5, label=f"paper: F1 > {paper_f1:g} (LLaVA-1.5, Fig. A7)")
    ax.set_xscale("log")
    ks = np.array(sorted(all_ks))
    ax.set_xticks(ks * 100, [f"{k * 100:g}%\n{max(1, int(round(k * n_image)))} tok" for k in ks])
    ax.xaxis.set_minor_locator(mpl.ticker.NullLocator())
    return finish_f1_axes(fig, ax, f"image tokens kept per layer (of {n_image})", title,
                          ylabel="F1 vs. full-image description")


def table1_bars(ours, paper=None, title: str = ""):
    """Table 1 at a glance: average ACC and ACC+ per method (ours as bars, the paper's as
    purple ticks). ``ours`` / ``paper``: tables from :func:`vlmnb.experiments.reprompt.table1` /
    :func:`vlmnb.experiments.reprompt.paper_table1`; rows are matched by the method name before any " [".
    """
    fig, ax = figure(height=3.8, layout="constrained")
    labels = [str(i) for i in ours.index]
    names = [s.split(" [")[0] for s in labels]
    x = np.arange(len(labels))
    numbers = []
    for offset, metric, alpha in [(-0.2, "ACC", 0.9), (0.2, "ACC+", 0.5)]:
        ax.bar(x + offset, ours[("Average", metric)], 0.38, color=OURS_COLOR, alpha=alpha, label=f"ours, {metric}")
        values = [paper.loc[n, ("Average", metric)] if paper is not None and n in paper.index else np.nan
                  for n in names]
        numbers.append(pd.DataFrame({"method": labels, "metric": metric,
                                     "ours": ours[("Average", metric)].to_numpy(), "paper": values}))
        if paper is not None:
            ax.plot(np.repeat(x + offset, 2).reshape(-1, 2).T + np.array([[-0.17], [0.17]]), [values, values],
                    color=PAPER_COLOR, lw=2.5)
    if paper is not None:
        ax.plot([], [], color=PAPER_COLOR, lw=2.5, label="paper (InternVL2-76B, MME)")
    ax.set_xticks(x, [n.replace(" + ", "+\n") for n in names], fontsize=8)
    record("table1_bars", pd.concat(numbers))
    ax.set_ylabel("average over categories (%)")
    ax.set_ylim(0, 105)
    legend_below(fig)
    if title:
        ax.set_title(title)
    return fig


def reprompt_cost(cost, title: str = ""):
    """How many times fewer KV-cache bytes and how many times faster per extra question than
    Naive, per method (log axis; 1 = as Naive)."""
    fig, ax = figure(height=3.6, layout="constrained")
    cost = cost.drop(index=[i for i in cost.index if str(i).startswith("Describe")], errors="ignore")
    record("reprompt_cost", pd.DataFrame({"method": [str(i) for i in cost.index],
                                          "fewer_kv_bytes_x": cost["fewer_kv_bytes_x"].to_numpy(),
                                          "faster_x": cost["faster_x"].to_numpy()}))
    x = np.arange(len(cost))
    ax.bar(x - 0.2, cost["fewer_kv_bytes_x"], 0.38, color=OURS_COLOR, label="x fewer KV-cache bytes")
    ax.bar(x + 0.2, cost["faster_x"], 0.38, color=OURS_COLOR, alpha=0.45,
           label="x faster per extra question")
    ax.axhline(1, color="#4d4d4d", lw=1)
    ax.set_yscale("log")
    ax.set_xticks(x, [str(n).replace(" + ", "+\n") for n in cost.index], fontsize=8)
    ax.set_ylabel("ratio to Naive")
    legend_below(fig)
    if title:
        ax.set_title(title)
    return fig
