"""Figures and tables for the toy-model chapter: scenes with their masks, answers, the quality table."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from vlmnb.toy.curves import CURVE_COLUMNS, training_curves  # noqa: F401  (re-exported for the chapter)
from vlmnb.toy.scenes import Scene
from vlmnb.views import plots
from vlmnb.views.figure_data import record


def show_scenes(scenes: list[Scene], masks: bool = True, ncols: int = 4, titles: list[str] | None = None):
    """A matplotlib figure (closed, so a notebook shows it once as the cell's value): each scene's
    image and, below it, its object masks in false colour."""
    import matplotlib.pyplot as plt

    record("scenes", pd.DataFrame([{"scene": scene.index, "object": k, "color": o.color, "shape": o.shape,
                                    "size": o.size, "cell": o.cell}
                                   for scene in scenes for k, o in enumerate(scene.objects)],
                                  columns=["scene", "object", "color", "shape", "size", "cell"]))
    rows = 2 if masks else 1
    ncols = min(ncols, len(scenes))
    nblocks = -(-len(scenes) // ncols)
    fig, axes = plt.subplots(rows * nblocks, ncols, figsize=(2.6 * ncols, 2.6 * rows * nblocks), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, scene in enumerate(scenes):
        block, col = divmod(i, ncols)
        ax = axes[block * rows, col]
        ax.imshow(scene.image)
        ax.set_title(titles[i] if titles else f"scene {scene.index}", fontsize=8)
        if masks:
            labels = np.zeros(scene.masks.shape[1:], dtype=float)
            for k, m in enumerate(scene.masks, start=1):
                labels[m] = k
            axes[block * rows + 1, col].imshow(np.ma.masked_equal(labels, 0), cmap="tab10", vmin=1, vmax=10,
                                               interpolation="nearest")
            axes[block * rows + 1, col].set_title(", ".join(o.name for o in scene.objects), fontsize=7)
    fig.tight_layout()
    plt.close(fig)  # shown once, by the notebook's display of the returned figure
    return fig


def quality_table(eval_json: str | Path) -> pd.DataFrame:
    """The held-out quality table of a checkpoint's ``eval.json`` as a DataFrame indexed by (task,
    metric), with the value and, for yes/no aspects, the value with the image swapped."""
    path = Path(eval_json)
    if path.is_dir():
        path = path / "eval.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; run `python -m vlmnb.toy.evaluate` first")
    r = json.loads(path.read_text())
    d, lk = r["description"], r["position_lookup"]
    rows = [("description", "exact match", d["exact"], None),
            ("description", "object precision (all attributes)", d["object_precision"], None),
            ("description", "object recall (all attributes)", d["object_recall"], None),
            ("description", "object F1 (all attributes)", d["object_f1"], None),
            ("description", "object-name F1 (colour + shape)", d["name_f1"], None),
            *[("description", f"F1 on {label.replace('_', ' + ')} only", d[f"{label}_f1"], None)
              for label in ("color_cell", "shape_cell", "size_cell", "cell") if f"{label}_f1" in d],
            ("position look-up", "ACC", lk["acc"], None),
            ("position look-up", "ACC+", lk["acc_plus"], None),
            *[("position look-up", f"ACC, {label}", lk[f"acc_{key}"], None)
              for key, label in (("empty_cell", "empty cell"), ("alone_in_row", "object alone in its row"),
                                 ("shares_row", "object sharing its row"))
              if lk.get(f"acc_{key}") is not None]]
    for aspect, v in r["yes_no"].items():
        rows.append((f"yes/no: {aspect}", "ACC", v["acc"], v["swap_acc"]))
        rows.append((f"yes/no: {aspect}", "ACC+", v["acc_plus"], v["swap_acc_plus"]))
    table = pd.DataFrame(rows, columns=["task", "metric", "value", "image swapped"])
    table["value"] = table["value"].round(3)
    # only yes/no rows have a swap control: the others show nothing there, not NaN
    table["image swapped"] = [f"{v:.3f}" if pd.notna(v) else "" for v in table["image swapped"]]
    return table.set_index(["task", "metric"])


def plot_training_curves(curves: pd.DataFrame | str | Path, title: str = ""):
    """Two panels: answer-token loss of descriptions and look-ups; first-token loss of the
    yes/no aspects against chance (ln 2). ``curves``: a :func:`training_curves` frame or its CSV
    (``training_curves.csv`` next to a checkpoint)."""
    import matplotlib.pyplot as plt

    if not isinstance(curves, pd.DataFrame):
        curves = pd.read_csv(curves)
    drawn = [c for c in ("loss_description", "loss_position_lookup", "first_existence", "first_color",
                         "first_position", "first_count") if c in curves]
    stage = curves["stage"] if "stage" in curves else pd.Series(np.nan, index=curves.index)
    record("training_curves", pd.concat([pd.DataFrame({"step": curves["step"], "stage": stage, "curve": c,
                                                       "loss": curves[c]}) for c in drawn])
           if drawn else pd.DataFrame(columns=["step", "stage", "curve", "loss"]))
    fig, (left, right) = plots.figure(1, 2, height=4.0, layout="constrained")
    for column in ("loss_description", "loss_position_lookup"):
        if column in curves:
            left.plot(curves["step"], curves[column], label=CURVE_COLUMNS[column], color=f"C{drawn.index(column)}")
    left.set_yscale("log")
    left.set_xlabel("training step")
    left.set_ylabel("loss per answer token (nats, log scale)")
    for column in ("first_existence", "first_color", "first_position", "first_count"):
        if column in curves:
            # one colour per curve across both panels: they share one legend
            right.plot(curves["step"], curves[column], label=CURVE_COLUMNS[column], color=f"C{drawn.index(column)}")
    right.axhline(np.log(2), color="black", ls=":", lw=1, label="chance (ln 2)")
    if "stage" in curves:  # several training commands, one after the other
        for stage, first in curves.groupby("stage")["step"].min().items():
            if first > curves["step"].min():
                for ax in (left, right):
                    ax.axvline(first, color="grey", lw=0.8, ls="--")
                # vertical labels: fine-tunes can start a few hundred steps apart
                left.annotate(f"stage {stage}", (first, 0.99), xycoords=("data", "axes fraction"),
                              fontsize=7, ha="right", va="top", rotation=90, color="grey")
    right.set_ylim(0, max(1.0, float(np.log(2)) * 1.2))
    right.set_xlabel("training step")
    right.set_ylabel("loss of the yes/no token (nats)")
    plots.legend_below(fig)
    if title:
        fig.suptitle(title)
    plt.close(fig)
    return fig


# the targets the toy was trained towards (issue "the embedded default"), fixed before training
TARGETS = {"object_f1": 0.95, "exact": 0.80, "lookup_acc": 0.95, "yes_no_acc": 0.90, "swap_chance_acc": 0.60}
# toy-smollm's (issue "a second embedded model"), fixed before its training
SMOLLM_TARGETS = {"object_f1": 0.95, "exact": 0.80, "lookup_acc": 0.90, "yes_no_acc": 0.85, "swap_chance_acc": 0.60}


def quality_side_by_side(evals: Mapping[str, str | Path]) -> pd.DataFrame:
    """The :func:`quality_table` of several checkpoints (name -> folder or ``eval.json``) in one
    table: per model its value and, for yes/no aspects, its value with the image swapped."""
    parts = []
    for name, path in evals.items():
        q = quality_table(path)
        parts.append(q.rename(columns={"value": name, "image swapped": f"{name}: image swapped"}))
    table = pd.concat(parts, axis=1, join="outer", sort=False)
    return table.astype(object).where(table.notna(), "")


def ability_table(eval_json: str | Path, targets: Mapping[str, float] = TARGETS) -> pd.DataFrame:
    """What the checkpoint can and cannot do, against fixed targets, from its ``eval.json``.

    One row per ability: the measured value, the target and whether it is met. A yes/no aspect
    counts as *reading the image* only if its ACC meets the target and, with the image swapped
    for another scene's, its ACC falls to at most ``swap_chance_acc`` (near chance). ``targets``:
    :data:`TARGETS` (the toy's) or :data:`SMOLLM_TARGETS`."""
    path = Path(eval_json)
    if path.is_dir():
        path = path / "eval.json"
    r = json.loads(path.read_text())
    d, lk = r["description"], r["position_lookup"]
    rows = [("describe the scene", "object F1 (all attributes)", d["object_f1"], targets["object_f1"]),
            ("describe the scene", "exact match", d["exact"], targets["exact"]),
            ("look up a grid cell", "ACC", lk["acc"], targets["lookup_acc"])]
    out = [{"ability": a, "metric": m, "value": round(v, 3), "target": f">= {t:.2f}", "met": v >= t}
           for a, m, v, t in rows]
    for aspect, v in r["yes_no"].items():
        met = v["acc"] >= targets["yes_no_acc"] and v["swap_acc"] <= targets["swap_chance_acc"]
        out.append({"ability": f"yes/no: {aspect}", "metric": "ACC (image swapped)",
                    "value": f"{v['acc']:.3f} ({v['swap_acc']:.3f})",
                    "target": f">= {targets['yes_no_acc']:.2f} (<= {targets['swap_chance_acc']:.2f})", "met": met})
    return pd.DataFrame(out)
