"""MME-style yes/no answer parsing and scoring (ACC, ACC+, perception score).

MME asks two yes/no questions per image and category with opposite answers. A model's free-text
answer is reduced to "yes", "no" or "other" the way lmms-eval's MME task does it: lower-case,
strip, drop periods; an answer that is exactly "yes"/"no" is that answer, otherwise "yes" or "no"
found within the first four characters decides ("yes" first), else "other" (always wrong).

- ACC: share of questions answered right.
- ACC+: share of pairs (both questions about one image in one category) with both answers right.
- Category score: ACC + ACC+, both in percent (so at most 200).
- Perception score: the sum of the category scores.
"""
from __future__ import annotations

import pandas as pd

YES, NO, OTHER = "yes", "no", "other"


def parse_yes_no(text: str) -> str:
    """``"yes"``, ``"no"`` or ``"other"`` from a free-text answer (lmms-eval MME rule)."""
    ans = str(text).lower().strip().replace(".", "")
    if ans in (YES, NO):
        return ans
    head = ans[:4]
    if YES in head:
        return YES
    if NO in head:
        return NO
    return OTHER


def _pair_key(df: pd.DataFrame) -> pd.Series:
    if "pair_id" in df.columns:
        return df["pair_id"].astype(str)
    if "image_id" not in df.columns:
        raise ValueError("MME scoring needs a 'pair_id' or an 'image_id' column to form ACC+ pairs")
    return df["category"].astype(str) + "/" + df["image_id"].astype(str)


def score_answers(df: pd.DataFrame) -> pd.DataFrame:
    """Add ``parsed`` (yes/no/other) and ``correct`` (bool) columns to a copy of ``df``.

    ``df`` needs columns ``answer`` (the ground truth, "yes"/"no", any case or punctuation) and
    ``prediction`` (the model's free text).
    """
    missing = {"answer", "prediction"} - set(df.columns)
    if missing:
        raise ValueError(f"MME scoring needs columns {sorted(missing)} in the DataFrame")
    out = df.copy()
    out["parsed"] = out["prediction"].map(parse_yes_no)
    out["correct"] = out["parsed"] == out["answer"].map(parse_yes_no)
    return out


def mme_scores(df: pd.DataFrame) -> pd.DataFrame:
    """Per-category table: n_questions, n_pairs, acc, acc_plus (fractions 0..1), score (ACC+ACC+ in %).

    ``df`` needs ``category``, ``answer``, ``prediction`` and either ``pair_id`` or ``image_id``
    (ACC+ groups by pair_id when present, else by category + image_id, as MME does).
    """
    if "category" not in df.columns:
        raise ValueError("MME scoring needs a 'category' column")
    scored = score_answers(df)
    scored["_pair"] = _pair_key(scored)
    rows = []
    for category, g in scored.groupby("category", sort=True):
        pairs = g.groupby("_pair")["correct"].all()
        acc = float(g["correct"].mean())
        acc_plus = float(pairs.mean())
        rows.append({"category": category, "n_questions": len(g), "n_pairs": len(pairs),
                     "acc": acc, "acc_plus": acc_plus, "score": 100 * (acc + acc_plus)})
    return pd.DataFrame(rows).set_index("category")


def perception_score(df: pd.DataFrame) -> float:
    """MME perception score: the sum over categories of (ACC + ACC+) in percent."""
    return float(mme_scores(df)["score"].sum())
