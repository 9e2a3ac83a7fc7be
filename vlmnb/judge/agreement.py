"""How far a judge agrees with references: the hand-labelled pairs (``prompts/labelled_pairs.json``)
and, on the toy, the exact judge on descriptions with known edits; tables for the book."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from vlmnb.judge.exact import ExactJudge
from vlmnb.judge.extract import lemma_key
from vlmnb.judge.files import packaged_text
from vlmnb.judge.resolve import compare_many, get_judge
from vlmnb.judge.result import prf

__all__ = ["load_labelled", "agreement_table", "object_agreement", "TOY_EDITS", "toy_edit_pairs",
           "toy_agreement", "markdown_table"]


def load_labelled(path: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """The project's hand-labelled description pairs (``vlmnb/judge/prompts/labelled_pairs.json``)."""
    if path is None:
        return json.loads(packaged_text("labelled_pairs.json"))
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _gold_f1(item: dict[str, Any]) -> float:
    return prf(item["tp"], item["fp"], item["fn"])[2]


def agreement_table(judge: Any, labelled: list[dict[str, Any]] | None = None, per_pair: bool = False,
                    progress: bool = False):
    """How a judge's scores agree with the labelled set, as a pandas DataFrame.

    With ``per_pair=True``: one row per pair (gold and judged tp/fp/fn/F1, ``abs_f1_error``).
    Otherwise one row per category plus an ``all`` row: number of pairs, mean gold F1, mean
    judged F1, mean absolute F1 error, the share of pairs with exactly the gold counts, and
    the number of judge failures (failures are left out of the means).
    """
    import pandas as pd

    labelled = load_labelled() if labelled is None else labelled
    j = get_judge(judge)
    results = compare_many([(x["original"], x["modified"]) for x in labelled], j, progress=progress)
    rows = []
    for item, r in zip(labelled, results):
        rows.append({
            "id": item.get("id"), "category": item.get("category", ""),
            "gold_tp": item["tp"], "gold_fp": item["fp"], "gold_fn": item["fn"], "gold_f1": _gold_f1(item),
            "tp": r.tp, "fp": r.fp, "fn": r.fn, "f1": r.f1, "ok": r.ok,
            "abs_f1_error": abs(r.f1 - _gold_f1(item)) if r.ok else float("nan"),
            "counts_exact": r.ok and (r.tp, r.fp, r.fn) == (item["tp"], item["fp"], item["fn"]),
        })
    df = pd.DataFrame(rows)
    if per_pair:
        return df

    def summary(g):
        ok = g[g["ok"]]
        return pd.Series({
            "pairs": len(g), "gold_f1": g["gold_f1"].mean(), "judge_f1": ok["f1"].mean(),
            "mean_abs_f1_error": ok["abs_f1_error"].mean(),
            "counts_exact": ok["counts_exact"].mean(), "failures": int((~g["ok"]).sum()),
        })

    by_cat = [summary(g).rename(cat) for cat, g in df.groupby("category", sort=True)]
    table = pd.DataFrame(by_cat + [summary(df).rename("all")])
    table.index.name = "category"
    table["pairs"] = table["pairs"].astype(int)
    table["failures"] = table["failures"].astype(int)
    return table


def object_agreement(judge: Any, labelled: list[dict[str, Any]] | None = None):
    """Object-level agreement with the gold labels, in the form of the paper's user study.

    For every gold object of every pair the question is "is this object present in the
    *other* description?" (an original object: kept in the modified one; a modified object:
    present in the original). Gold answers come from the gold matches; the judge answers
    "yes" when it matched an object of the same name (compared by lemma). Returns a one-row
    DataFrame with the four cells (``gold_yes_judge_yes`` ...), TPR, TNR and accuracy.
    """
    import pandas as pd

    labelled = load_labelled() if labelled is None else labelled
    j = get_judge(judge)
    cells = {"yes/yes": 0, "yes/no": 0, "no/yes": 0, "no/no": 0}
    for item in labelled:
        r = j.compare(item["original"], item["modified"])
        if not r.ok:
            continue
        judged_o = {lemma_key(o) for o, _ in r.matched}
        judged_m = {lemma_key(m) for _, m in r.matched}
        gold_o = {lemma_key(o) for o, _ in item["matched"]}
        gold_m = {lemma_key(m) for _, m in item["matched"]}
        for objs, gold, judged in ((item["original_objects"], gold_o, judged_o),
                                   (item["modified_objects"], gold_m, judged_m)):
            for obj in objs:
                g = "yes" if lemma_key(obj) in gold else "no"
                p = "yes" if lemma_key(obj) in judged else "no"
                cells[f"{g}/{p}"] += 1
    yy, yn, ny, nn = cells["yes/yes"], cells["yes/no"], cells["no/yes"], cells["no/no"]
    total = yy + yn + ny + nn
    return pd.DataFrame([{
        "gold_yes_judge_yes": yy, "gold_yes_judge_no": yn, "gold_no_judge_yes": ny, "gold_no_judge_no": nn,
        "TPR": yy / (yy + yn) if yy + yn else math.nan,
        "TNR": nn / (nn + ny) if nn + ny else math.nan,
        "accuracy": (yy + nn) / total if total else math.nan,
    }])


TOY_EDITS = ("unchanged", "size/position moved", "object dropped", "object added", "colour changed", "shape changed")


def toy_edit_pairs(n_scenes: int = 40, seed: int = 0) -> list[dict[str, Any]]:
    """(original, modified) toy descriptions with known edits, for comparing judges on the toy.

    For each of ``n_scenes`` test scenes, one modified description per edit in
    :data:`TOY_EDITS`: unchanged; every object's size and cell changed (attributes only);
    one object dropped; one object added; one object's colour changed; one object's shape
    changed. Deterministic in ``seed``.
    """
    import dataclasses

    import numpy as np

    from vlmnb.toy import scenes as S

    rng = np.random.default_rng(seed)
    pairs = []
    for scene in S.make_scenes(n_scenes, split="test", seed=seed):
        objs = list(scene.objects)
        k = int(rng.integers(len(objs)))
        free_cells = [c for c in S.CELLS if c not in {o.cell for o in objs}]
        other = lambda values, current: [v for v in values if v != current][int(rng.integers(len(values) - 1))]  # noqa: E731
        edits = {
            "unchanged": objs,
            "size/position moved": [dataclasses.replace(o, size=other(S.SIZES, o.size),
                                                        cell=S.CELLS[(S.CELLS.index(o.cell) + 1) % len(S.CELLS)])
                                    for o in objs],
            "object dropped": objs[:k] + objs[k + 1:],
            "object added": objs + [S.ToyObject(shape=S.SHAPES[int(rng.integers(len(S.SHAPES)))],
                                                color=list(S.COLORS)[int(rng.integers(len(S.COLORS)))],
                                                size="small", cell=free_cells[0] if free_cells else "center")],
            "colour changed": objs[:k] + [dataclasses.replace(objs[k], color=other(list(S.COLORS), objs[k].color))] + objs[k + 1:],
            "shape changed": objs[:k] + [dataclasses.replace(objs[k], shape=other(S.SHAPES, objs[k].shape))] + objs[k + 1:],
        }
        for edit in TOY_EDITS:
            modified = S.describe(edits[edit]) if edits[edit] else "there is nothing in the image."
            pairs.append({"scene": scene.index, "edit": edit, "original": scene.description, "modified": modified})
    return pairs


def toy_agreement(judge: Any = "offline", n_scenes: int = 40, seed: int = 0, per_pair: bool = False,
                  progress: bool = False):
    """A judge against the exact toy judge on :func:`toy_edit_pairs`, as a DataFrame.

    Per edit: mean F1 of the exact judge, mean F1 of ``judge``, their mean absolute
    difference and the share of pairs with identical F1. An open-vocabulary judge that
    ignores attributes (as the paper's protocol asks) cannot see a colour change, which on
    the toy changes the object's identity: that row shows by how much.
    """
    import pandas as pd

    pairs = toy_edit_pairs(n_scenes, seed)
    pp = [(p["original"], p["modified"]) for p in pairs]
    exact = compare_many(pp, ExactJudge(), progress=False)
    other = compare_many(pp, judge, progress=progress)
    df = pd.DataFrame([{**p, "exact_f1": e.f1, "judge_f1": o.f1, "ok": o.ok} for p, e, o in zip(pairs, exact, other)])
    df["abs_diff"] = (df["exact_f1"] - df["judge_f1"]).abs()
    if per_pair:
        return df
    table = df.groupby("edit", sort=False).agg(pairs=("edit", "size"), exact_f1=("exact_f1", "mean"),
                                                judge_f1=("judge_f1", "mean"), mean_abs_diff=("abs_diff", "mean"),
                                                same_f1=("abs_diff", lambda x: float((x < 1e-9).mean())))
    overall = pd.DataFrame([{"pairs": len(df), "exact_f1": df["exact_f1"].mean(), "judge_f1": df["judge_f1"].mean(),
                             "mean_abs_diff": df["abs_diff"].mean(),
                             "same_f1": float((df["abs_diff"] < 1e-9).mean())}], index=["all"])
    out = pd.concat([table, overall])
    out.index.name = "edit"
    return out


def markdown_table(df, digits: int = 3) -> str:
    """A DataFrame as a Markdown pipe table (floats to ``digits`` decimals), for the book."""
    import numbers

    def cell(v):
        if isinstance(v, bool):
            return str(v)
        if isinstance(v, numbers.Integral):
            return str(int(v))
        if isinstance(v, numbers.Real):
            return "NaN" if math.isnan(v) else f"{v:.{digits}f}"
        return str(v)

    show_index = df.index.name is not None
    header = ([df.index.name] if show_index else []) + [str(c) for c in df.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for idx, row in zip(df.index, df.itertuples(index=False)):  # itertuples keeps int columns int
        values = ([str(idx)] if show_index else []) + [cell(v) for v in row]
        lines.append("| " + " | ".join(values) + " |")
    return "\n".join(lines)
