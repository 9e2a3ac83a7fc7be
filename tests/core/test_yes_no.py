"""MME scoring against lmms-eval's rules.

Source read: EvolvingLMMs-Lab/lmms-eval, lmms_eval/tasks/mme/utils.py at commit
a455120a8ebb7ba325b5b81de28bdf1da9356597.

The expected labels below were written by hand from reading lmms-eval's ``parse_pred_ans``:
lower + strip + delete "."; exact "yes"/"no"; one character: "y"/"n" else other; otherwise
"yes", then "no", searched in the first four characters only.
"""
import math

import pandas as pd
import pytest

from vlmnb.core.yes_no import (COGNITION, PERCEPTION, mme_scores, mme_totals, parse_truth, parse_yes_no,
                               perception_score, score_answers)

ANSWERS = [
    # exact words, case, whitespace, periods
    ("yes", "yes"), ("no", "no"), ("Yes", "yes"), ("NO", "no"), ("  YES.  ", "yes"), ("no.", "no"),
    ("No...", "no"), ("...yes", "yes"), ("y.e.s", "yes"), ("\tno\n", "no"),
    # single letters (after deleting periods)
    ("y", "yes"), ("Y", "yes"), ("n", "no"), ("N.", "no"), (" y. ", "yes"), ("n.", "no"),
    ("x", "other"), ("1", "other"), ("?", "other"), ("A", "other"),
    # two characters: no single-letter rule, no yes/no inside -> other
    ("y,", "other"), ("n!", "other"), ("ye", "other"), ("Y!", "other"), ("y .", "other"),
    (". n", "other"),
    # other punctuation is kept, so only the prefix rule can help
    ("yes!", "yes"), ("No,", "no"), ("yes, there is", "yes"), ("No, it is not.", "no"),
    ("'yes'", "yes"), ('"no"', "no"), ("(yes)", "yes"), ("no!!!", "no"), ("-no", "no"),
    ("**Yes**", "other"), ("**No**", "no"),  # "**ye" has no "yes"; "**no" has "no"
    # empty and blank
    ("", "other"), ("   ", "other"), (".", "other"), ("...", "other"), (None, "other"),
    (float("nan"), "other"),
    # words starting with or containing yes/no within the first four characters
    ("yes no", "yes"), ("no yes", "no"), ("nope", "no"), ("not sure", "no"), ("none", "no"),
    ("know", "no"), ("snow", "no"), ("nothing", "no"), ("eyes", "yes"), ("yesterday", "yes"),
    ("Noo", "no"), ("yeah", "other"), ("yep", "other"), ("nah", "other"), ("Sure", "other"),
    ("a no", "no"), ("a yes", "other"),  # "a ye" lacks "yes"; "a no" has "no"
    (" . yes", "yes"),  # strip, then "." removed -> " yes": prefix " yes" has "yes"
    # yes/no beyond the first four characters is not seen
    ("There is no dog.", "other"), ("I think yes", "other"), ("The answer is no", "other"),
    ("Answer: yes", "other"), ("Yes/No: no", "yes"), ("maybe", "other"), ("correct", "other"),
    ("true", "other"), ("False", "other"), ("0", "other"),
]


@pytest.mark.parametrize("text,expected", ANSWERS)
def test_parse_yes_no_matches_lmms_eval_rules(text, expected):
    assert parse_yes_no(text) == expected


def test_answer_table_is_broad():
    labels = [e for _, e in ANSWERS]
    assert len(ANSWERS) >= 60 and {"yes", "no", "other"} <= set(labels)


@pytest.mark.parametrize("truth,expected", [("Yes", "yes"), ("no.", "no"), (" NO ", "no"), ("yes.", "yes")])
def test_parse_truth(truth, expected):
    assert parse_truth(truth) == expected


@pytest.mark.parametrize("truth", ["y", "maybe", "", "Yes, it is", None])
def test_parse_truth_rejects_non_yes_no(truth):
    with pytest.raises(ValueError, match="ground truth"):
        parse_truth(truth)


def _frame():
    # category existence: image 1 both right, image 2 one wrong -> ACC 3/4, ACC+ 1/2 -> 125
    # category count: image 1 both wrong (one unparseable) -> ACC 0, ACC+ 0
    # category code_reasoning (cognition): single letters count -> 200
    return pd.DataFrame({
        "question_id": range(8),
        "image_id": [1, 1, 2, 2, 1, 1, 3, 3],
        "category": ["existence"] * 4 + ["count"] * 2 + ["code_reasoning"] * 2,
        "answer": ["Yes", "No", "Yes", "No", "yes", "no", "yes", "no."],
        "prediction": ["yes.", "No", "Yes", "yes", "no", "maybe", "Y", "N."],
    })


def _lmms_eval_total(df: pd.DataFrame) -> dict:
    """lmms-eval's aggregation restated plainly (per pair acc% + acc+%, mean over pairs, sum over
    categories split perception / other) over our parse, to compare with mme_scores/mme_totals."""
    scored = score_answers(df)
    totals = {"perception": 0.0, "cognition": 0.0}
    for category, g in scored.groupby("category"):
        per_pair = []
        for _, p in g.groupby("image_id"):
            s = p["correct"].astype(float).tolist()
            assert len(s) == 2
            per_pair.append(sum(s) / 2 * 100 + (sum(s) == 2) * 100)
        totals["perception" if category in PERCEPTION else "cognition"] += sum(per_pair) / len(per_pair)
    return totals


def test_mme_scores_by_image():
    table = mme_scores(_frame())
    assert table.loc["existence", "acc"] == pytest.approx(0.75)
    assert table.loc["existence", "acc_plus"] == pytest.approx(0.5)
    assert table.loc["existence", "score"] == pytest.approx(125.0)
    assert table.loc["count", "acc"] == 0 and table.loc["count", "acc_plus"] == 0
    assert table.loc["code_reasoning", "score"] == pytest.approx(200.0)
    assert table.loc["existence", "n_pairs"] == 2
    assert perception_score(_frame()) == pytest.approx(125.0)
    assert mme_totals(_frame()) == pytest.approx({"perception": 125.0, "cognition": 200.0})
    assert mme_totals(_frame()) == pytest.approx(_lmms_eval_total(_frame()))


def test_score_is_mean_over_pairs_of_acc_plus_acc_plus():
    # three pairs in one category: (right, right), (right, wrong), (wrong, wrong)
    df = pd.DataFrame({"image_id": [1, 1, 2, 2, 3, 3], "category": ["color"] * 6,
                       "answer": ["yes", "no"] * 3,
                       "prediction": ["yes", "no", "yes", "yes", "no", "yes"]})
    t = mme_scores(df)
    assert t.loc["color", "score"] == pytest.approx(((100 + 100) + (50 + 0) + (0 + 0)) / 3)
    assert t.loc["color", "score"] == pytest.approx(100 * (t.loc["color", "acc"] + t.loc["color", "acc_plus"]))


def test_pair_id_overrides_image_grouping():
    df = _frame().assign(pair_id=["p1", "p2", "p1", "p2", "p3", "p3", "p4", "p4"])
    table = mme_scores(df)
    # pairs now cross images: p1 = (right, right), p2 = (right, wrong)
    assert table.loc["existence", "acc_plus"] == pytest.approx(0.5)
    assert list(score_answers(df)["parsed"]) == ["yes", "no", "yes", "yes", "no", "other", "yes", "no"]


def test_pairs_must_have_two_questions():
    df = _frame().iloc[:5]
    with pytest.raises(ValueError, match="pairwise"):
        mme_scores(df)
    t = mme_scores(df, pairwise=False)
    assert t.loc["count", "score"] == 0 and t.loc["count", "n_pairs"] == 1


def test_bad_truth_raises():
    with pytest.raises(ValueError, match="ground truth"):
        mme_scores(_frame().assign(answer=["y"] * 8))


def test_categories_are_mme_s():
    assert len(PERCEPTION) == 10 and len(COGNITION) == 4 and not set(PERCEPTION) & set(COGNITION)
    assert math.isclose(perception_score(_frame().assign(category="OCR", image_id=[1, 1, 2, 2, 3, 3, 4, 4])),
                        (200 + 50 + 0 + 200) / 4)


def test_missing_columns_raise():
    with pytest.raises(ValueError, match="prediction"):
        mme_scores(pd.DataFrame({"category": ["A"], "answer": ["yes"], "image_id": [1]}))
