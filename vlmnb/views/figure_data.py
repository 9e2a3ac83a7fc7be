"""The numbers behind each figure, kept so a chapter can offer them for download.

Every figure function of :mod:`vlmnb.views.plots` (and of :mod:`vlmnb.views.toy`) records the
values it drew, as a tidy table, under its own name here. A notebook kernel runs one chapter, so
:func:`drawn` is that chapter's figures in the order they were drawn;
:func:`vlmnb.views.downloads.publish` writes each one as a CSV next to the chapter.
"""
from __future__ import annotations

import pandas as pd

__all__ = ["COLUMNS", "record", "drawn", "clear"]

#: figure name -> the columns its table has (the download's documented layout)
COLUMNS: dict[str, tuple[str, ...]] = {
    "fractions_by_layer": ("layer", "span", "mean", "p10", "p90"),
    "token_vs_attention": ("span", "token_share", "attention_share"),
    "layer_maps": ("layer", "token", "attention"),
    "attention_histograms": ("layer", "bin_low", "bin_high", "count"),
    "f1_bars": ("kind", "scope", "mean", "ci_low", "ci_high", "paper"),
    "f1_by_start_layer": ("kind", "start", "mean", "ci_low", "ci_high"),
    "localization_by_layer": ("series", "first", "last", "mean", "ci_low", "ci_high"),
    "detail_gallery": ("image_id", "phrase", "token", "attention"),
    "f1_by_k": ("model", "k", "tokens_kept", "mean", "ci_low", "ci_high"),
    "table1_bars": ("method", "metric", "ours", "paper"),
    "reprompt_cost": ("method", "fewer_kv_bytes_x", "faster_x"),
    "scenes": ("scene", "object", "color", "shape", "size", "cell"),
    "training_curves": ("step", "stage", "curve", "loss"),
    "invariant_matrix": ("family", "invariant", "status"),
    "by_depth": ("model", "panel", "layer", "relative_depth", "value"),
    "f1_bars_by_model": ("model", "kind", "scope", "mean", "ci_low", "ci_high"),
}

_drawn: list[tuple[str, pd.DataFrame]] = []


def record(name: str, table: pd.DataFrame) -> None:
    """Keep the numbers of one drawn figure; ``table`` must have exactly ``COLUMNS[name]``."""
    if name not in COLUMNS:
        raise KeyError(f"no figure named {name!r} in vlmnb.views.figure_data.COLUMNS")
    if tuple(table.columns) != COLUMNS[name]:
        raise ValueError(f"figure {name!r} records columns {list(table.columns)}, expected {list(COLUMNS[name])}")
    _drawn.append((name, table.reset_index(drop=True).copy()))


def drawn() -> list[tuple[str, pd.DataFrame]]:
    """(file stem, table) of each figure drawn in this process: the figure's name, and for the
    second and later figure of the same name ``name-2``, ``name-3``, ..."""
    seen: dict[str, int] = {}
    out = []
    for name, table in _drawn:
        seen[name] = seen.get(name, 0) + 1
        out.append((name if seen[name] == 1 else f"{name}-{seen[name]}", table))
    return out


def clear() -> None:
    """Forget the figures drawn so far."""
    _drawn.clear()
