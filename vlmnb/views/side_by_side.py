"""One chapter, several models, the paper beside them: side-by-side claims tables and figures.

Every chapter checks the paper's claims on its model with its experiment module's ``claims``
(columns ``claim``, ``paper``, ``ours``, ``held``). :func:`claims` puts the tables of
several models (the book's two embedded models, ``toy`` and ``toy-smollm``, or yours) in one table:
one row per claim, the paper's value, then each model's value and verdict. Models differ in depth
(the toy has 8 decoder layers, SmolLM2 30, InternVL2-76B 80), so the per-layer figures here draw
every model against its *relative depth*, layer / (layers - 1), with the paper's layer bands
rescaled the same way.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd

from vlmnb.experiments.paper import DEPTH
from vlmnb.views.figure_data import record
from vlmnb.views.plots import MODEL_COLORS, PAPER_COLOR, figure, finish_f1_axes, legend_below, paper_line

__all__ = ["claims", "verdict", "relative_depth", "by_depth", "f1_bars", "table1"]



def verdict(held) -> str:
    """How a table cell reads a claim's outcome: "held", "not held", "n/a" when it could not be
    checked, or the claims table's own words when it gives a reason instead of a verdict (e.g.
    "n/a (different model and data)")."""
    if held is None or (isinstance(held, float) and np.isnan(held)):
        return "n/a"
    if isinstance(held, str):
        return {"true": "held", "false": "not held"}.get(held.strip().lower(), held)
    return "held" if bool(held) else "not held"


def claims(by_model: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """The claims tables of several models (name -> ``claims`` frame) as one table.

    One row per claim, in the first model's order (claims only some models have come last):
    ``claim``, ``paper``, then per model ``"<name>"`` (its value) and ``"<name>: held"``.
    """
    if not by_model:
        raise ValueError("claims needs the claims of at least one model")
    order: list[str] = []
    paper: dict[str, str] = {}
    for frame in by_model.values():
        missing = {"claim", "paper", "ours", "held"} - set(frame.columns)
        if missing:
            raise ValueError(f"a claims table needs the columns claim, paper, ours, held; missing {sorted(missing)}")
        for row in frame.itertuples():
            if row.claim not in paper:
                order.append(row.claim)
                paper[row.claim] = row.paper
    out = pd.DataFrame({"claim": order, "paper": [paper[c] for c in order]})
    for name, frame in by_model.items():
        by_claim = frame.drop_duplicates("claim").set_index("claim")
        out[name] = [str(by_claim.loc[c, "ours"]) if c in by_claim.index else "" for c in order]
        out[f"{name}: held"] = [verdict(by_claim.loc[c, "held"]) if c in by_claim.index else "n/a" for c in order]
    return out


def relative_depth(layer, n_layers: int):
    """``layer / (n_layers - 1)``: 0 at the first decoder layer, 1 at the last."""
    return np.asarray(layer, dtype=float) / max(1, n_layers - 1)


def paper_bands_relative(bands: Mapping[str, tuple[int, int]], depth: int = DEPTH) -> dict[str, tuple[float, float]]:
    """The paper's layer bands (layers of InternVL2-76B's ``depth``) as relative depths."""
    return {name: (lo / (depth - 1), hi / (depth - 1)) for name, (lo, hi) in bands.items()}


def by_depth(curves: Mapping[str, tuple[pd.DataFrame, int]], *, y: str, ylabel: str, title: str = "",
             panel: str | None = None, paper_bands: Mapping[str, tuple[int, int]] | None = None,
             paper_values: Mapping | None = None, ylim: tuple[float, float] | None = None):
    """Per model, a value per decoder layer against relative depth, one line per model.

    ``curves``: model name -> (frame with a ``layer`` column and the column ``y``; the model's
    number of decoder layers). ``panel``: a column whose values get one panel each (e.g. the
    span of an attention share, or a knockout configuration). ``paper_bands``: the paper's layer
    bands in its own layers (shaded); ``paper_values``: panel (``None`` without panels) -> (y,
    label) of a value the paper reports (dashed; the legend reads "paper: <label>"). The numbers drawn are recorded (figure ``by_depth``).
    """
    panels = [None] if panel is None else list(dict.fromkeys(
        v for frame, _ in curves.values() for v in frame[panel].tolist()))
    fig, axes = figure(1, len(panels), height=3.6, layout="constrained", sharey=True, squeeze=False)
    numbers = []
    for ax, value in zip(axes[0], panels):
        for color, (model, (frame, n_layers)) in zip(MODEL_COLORS, curves.items()):
            sub = frame if value is None else frame[frame[panel] == value]
            if sub.empty:
                continue
            mean = sub.groupby("layer")[y].mean()
            x = relative_depth(mean.index, n_layers)
            ax.plot(x, mean.to_numpy(), color=color, lw=2, marker="o" if n_layers <= 12 else None, ms=3,
                    label=f"{model} ({n_layers} layers)")
            numbers.append(pd.DataFrame({"model": model, "panel": value, "layer": mean.index,
                                         "relative_depth": x, "value": mean.to_numpy()}))
        for band, (lo, hi) in paper_bands_relative(paper_bands or {}).items():
            ax.axvspan(lo, hi, color=PAPER_COLOR, alpha=0.08)
            ax.text((lo + hi) / 2, 1.01, f"paper: {band}", ha="center", va="bottom", fontsize=8,
                    color=PAPER_COLOR, transform=ax.get_xaxis_transform())
        if value in (paper_values or {}):
            paper_line(ax, *paper_values[value])
        ax.set_xlim(-0.03, 1.03)
        if value is not None:
            ax.set_title(str(value), fontsize=10, pad=14 if paper_bands else 4)
        if ylim is not None:
            ax.set_ylim(*ylim)
    axes[0][0].set_ylabel(ylabel)
    for ax in axes[0]:
        ax.set_xlabel("relative depth (0 = first layer, 1 = last)" if len(panels) == 1 else "relative depth\n(layer / last layer)")
    record("by_depth", pd.concat(numbers, ignore_index=True) if numbers else
           pd.DataFrame(columns=["model", "panel", "layer", "relative_depth", "value"]))
    legend_below(fig)  # one legend for all panels: the same models everywhere
    if title:
        fig.suptitle(title)
    return fig


def f1_bars(summaries: Mapping[str, pd.DataFrame], paper: Mapping[str, float] | None = None, title: str = ""):
    """Fig. 2e for several models: mean F1 (95% interval) per knockout kind, one colour per model,
    plain bars for "all layers" and hatched ones for "outside the middle window" (each model's own
    window). ``summaries``: model name -> rows with kind, scope, mean, ci_low, ci_high; ``paper``:
    kind -> the F1 the paper reports for all layers (purple ticks)."""
    kinds = [k for k in ("img->gen", "img->query", "img->query+gen")
             if any(k in set(s.kind) for s in summaries.values())]
    bars = [(name, scope) for name in summaries for scope in ("all", "outside")]
    width = 0.8 / max(1, len(bars))
    fig, ax = figure(height=3.8, layout="constrained")
    x = np.arange(len(kinds))
    numbers = []
    for j, ((name, scope), color) in enumerate(zip(bars, np.repeat(MODEL_COLORS[:len(summaries)], 2))):
        sub = summaries[name]
        sub = sub[sub.scope == scope].set_index("kind").reindex(kinds)
        if sub["mean"].isna().all():
            continue
        err = np.vstack([sub["mean"] - sub["ci_low"], sub["ci_high"] - sub["mean"]])
        ax.bar(x - 0.4 + width * (j + 0.5), sub["mean"], width, yerr=err, capsize=2, color=color, edgecolor="white",
               hatch=None if scope == "all" else "//",
               label=f"{name}: " + ("all layers" if scope == "all" else "outside the middle window"))
        numbers.append(pd.DataFrame({"model": name, "kind": kinds, "scope": scope, "mean": sub["mean"].to_numpy(),
                                     "ci_low": sub["ci_low"].to_numpy(), "ci_high": sub["ci_high"].to_numpy()}))
    for i, kind in enumerate(kinds):
        if paper and kind in paper:
            paper_tick = ax.plot([i - 0.4, i + 0.4], [paper[kind]] * 2, color=PAPER_COLOR, lw=2.5, ls="--")[0]
            if i == 0:
                paper_tick.set_label("paper, all layers (InternVL2-76B)")
    record("f1_bars_by_model", pd.concat(numbers, ignore_index=True) if numbers else
           pd.DataFrame(columns=["model", "kind", "scope", "mean", "ci_low", "ci_high"]))
    ax.set_xticks(x, kinds)
    return finish_f1_axes(fig, ax, "image tokens hidden from", title)


def table1(tables: Mapping[str, pd.DataFrame], columns=(("Average", "ACC"), ("Average", "ACC+"),
                                                         ("Reprompt", "#Tokens"))) -> pd.DataFrame:
    """Table 1 for several models (and the paper): name -> a table in
    :func:`vlmnb.experiments.reprompt.table1`'s layout. One row per method (in order of first
    appearance; a method a model did not run is left empty), and per model its ``columns``."""
    rows: list[str] = []
    for table in tables.values():
        rows += [m for m in table.index if m not in rows]
    parts = {}
    for name, table in tables.items():
        for col in columns:
            if col in table.columns:
                parts[(name, " ".join(col) if col[0] != "Average" else col[1])] = table[col].reindex(rows)
    out = pd.DataFrame(parts, index=rows)
    out.columns = pd.MultiIndex.from_tuples(out.columns)
    return out
