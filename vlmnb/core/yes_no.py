"""MME-style yes/no answer parsing and scoring (ACC, ACC+, category and total scores).

The rules follow lmms-eval's MME task, ``lmms_eval/tasks/mme/utils.py`` in
EvolvingLMMs-Lab/lmms-eval at commit ``a455120a8ebb7ba325b5b81de28bdf1da9356597``
(``parse_pred_ans``, ``mme_process_results``, ``mme_aggregate_results``). This module is a
re-implementation from reading that file, not a copy; ``tests/core/test_yes_no.py`` holds a table of
answer forms with the label lmms-eval gives each.

Parsing a model's answer (``parse_yes_no``):

1. lower-case, strip surrounding whitespace, then delete every ``"."`` (whitespace is *not*
   stripped again afterwards: ``"y ."`` becomes ``"y "``, two characters);
2. exactly ``"yes"`` or ``"no"`` -> that answer;
3. exactly one character: ``"y"`` -> yes, ``"n"`` -> no, any other -> other;
4. otherwise look at the first four characters only: containing ``"yes"`` -> yes, else containing
   ``"no"`` -> no, else other. So ``"nope"``, ``"not sure"``, ``"know"`` and ``"none"`` are no,
   ``"eyes"`` is yes, and ``"There is no dog"`` or ``"I think yes"`` are other.

"other" is always wrong. lmms-eval calls ``str.lower`` on the prediction, so a missing answer
(``None``/NaN) would raise there; here it is treated as the empty answer (other).

The ground truth is normalised the same way (lower, strip, no periods) and must then be exactly
"yes" or "no" (lmms-eval asserts this; here a ``ValueError`` names the bad value).

Aggregation (``mme_scores``): within a category, questions are grouped into pairs (lmms-eval keys
on MME's ``question_id``, the image file: the two questions about one image). Each pair scores
``acc`` (its share right, in %) + ``acc_plus`` (100 if both right); the category score is the mean
of that over pairs, at most 200. lmms-eval asserts that every pair has exactly two questions;
``mme_scores`` raises a ``ValueError`` too (``pairwise=False`` lifts that for data that are not
MME-shaped; then the same per-pair mean is used). With two questions per pair the score equals
``100 * (ACC + ACC+)`` with ACC over questions and ACC+ over pairs, the two columns reported.

Totals (``mme_totals``): lmms-eval sums the category scores into a perception score (the ten
MME perception categories, ``PERCEPTION``) and a cognition score (every other category).
"""
from __future__ import annotations

import math

import pandas as pd

YES, NO, OTHER = "yes", "no", "other"

#: MME's perception categories; lmms-eval counts every other category towards cognition.
PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene",
              "landmark", "artwork", "OCR")
#: MME's cognition categories (for reference; routing uses "not in PERCEPTION", as lmms-eval does).
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


def _normalise(text) -> str:
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return ""
    return str(text).lower().strip().replace(".", "")


def parse_yes_no(text) -> str:
    """``"yes"``, ``"no"`` or ``"other"`` from a free-text answer (lmms-eval MME rule, see module doc)."""
    ans = _normalise(text)
    if ans in (YES, NO):
        return ans
    if len(ans) == 1:
        return {"y": YES, "n": NO}.get(ans, OTHER)
    head = ans[:4]
    if YES in head:
        return YES
    if NO in head:
        return NO
    return OTHER


def parse_truth(text) -> str:
    """The ground-truth label: normalised like an answer, then exactly "yes" or "no" (else ValueError)."""
    ans = _normalise(text)
    if ans not in (YES, NO):
        raise ValueError(f"MME ground truth must be 'yes' or 'no' (any case, periods ignored), got {text!r}")
    return ans


def _pair_key(df: pd.DataFrame) -> pd.Series:
    if "pair_id" in df.columns:
        return df["pair_id"].astype(str)
    if "image_id" not in df.columns:
        raise ValueError("MME scoring needs a 'pair_id' or an 'image_id' column to form ACC+ pairs")
    return df["image_id"].astype(str)


def score_answers(df: pd.DataFrame) -> pd.DataFrame:
    """Add ``parsed`` (yes/no/other) and ``correct`` (bool) columns to a copy of ``df``.

    ``df`` needs columns ``answer`` (the ground truth, "yes"/"no", any case or periods) and
    ``prediction`` (the model's free text).
    """
    missing = {"answer", "prediction"} - set(df.columns)
    if missing:
        raise ValueError(f"MME scoring needs columns {sorted(missing)} in the DataFrame")
    out = df.copy()
    out["parsed"] = out["prediction"].map(parse_yes_no)
    out["correct"] = out["parsed"] == out["answer"].map(parse_truth)
    return out


def mme_scores(df: pd.DataFrame, pairwise: bool = True) -> pd.DataFrame:
    """Per-category table: n_questions, n_pairs, acc, acc_plus (fractions 0..1), score (0..200).

    ``df`` needs ``category``, ``answer``, ``prediction`` and either ``pair_id`` or ``image_id``
    (pairs are formed within a category by pair_id when present, else by image_id, as MME's
    question_id does). ``score`` is lmms-eval's: the mean over pairs of (pair ACC + pair ACC+) in %.
    With ``pairwise`` (default) every pair must hold exactly two questions, as lmms-eval asserts.
    """
    if "category" not in df.columns:
        raise ValueError("MME scoring needs a 'category' column")
    scored = score_answers(df)
    scored["_pair"] = _pair_key(scored)
    rows = []
    for category, g in scored.groupby("category", sort=True):
        by_pair = g.groupby("_pair")["correct"]
        sizes = by_pair.size()
        if pairwise and (sizes != 2).any():
            bad = sizes[sizes != 2]
            raise ValueError(f"MME scoring is pairwise: category {category!r} has pair {bad.index[0]!r} "
                             f"with {int(bad.iloc[0])} question(s) (pass pairwise=False to allow this)")
        pair_acc = by_pair.mean()
        pair_plus = by_pair.all().astype(float)
        rows.append({"category": category, "n_questions": len(g), "n_pairs": len(sizes),
                     "acc": float(g["correct"].mean()), "acc_plus": float(pair_plus.mean()),
                     "score": float((100 * pair_acc + 100 * pair_plus).mean())})
    return pd.DataFrame(rows).set_index("category")


def mme_totals(df: pd.DataFrame, pairwise: bool = True) -> dict[str, float]:
    """lmms-eval's two totals: ``perception`` (sum of the scores of categories in ``PERCEPTION``)
    and ``cognition`` (sum over all other categories)."""
    table = mme_scores(df, pairwise=pairwise)
    is_perception = table.index.isin(PERCEPTION)
    return {"perception": float(table["score"][is_perception].sum()),
            "cognition": float(table["score"][~is_perception].sum())}


def perception_score(df: pd.DataFrame, pairwise: bool = True) -> float:
    """MME perception score: the sum over MME's perception categories of the category score."""
    return mme_totals(df, pairwise=pairwise)["perception"]
