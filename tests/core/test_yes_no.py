import pandas as pd
import pytest

from vlmnb.core.yes_no import mme_scores, parse_yes_no, perception_score, score_answers


@pytest.mark.parametrize("text,expected", [
    ("Yes", "yes"), ("no.", "no"), ("  YES.  ", "yes"), ("Yes, there is a dog.", "yes"),
    ("No, it is not.", "no"), ("yes no", "yes"), ("There is no dog.", "other"), ("", "other"),
    ("not sure", "no"),  # lmms-eval's rule: "no" within the first four characters
])
def test_parse_yes_no(text, expected):
    assert parse_yes_no(text) == expected


def _frame():
    # category A: image 1 both right, image 2 one wrong -> ACC 3/4, ACC+ 1/2
    # category B: image 1 both wrong (one unparseable) -> ACC 0, ACC+ 0
    return pd.DataFrame({
        "question_id": range(6),
        "image_id": [1, 1, 2, 2, 1, 1],
        "category": ["A", "A", "A", "A", "B", "B"],
        "answer": ["Yes", "No", "Yes", "No", "yes", "no"],
        "prediction": ["yes.", "No", "Yes", "yes", "no", "maybe"],
    })


def test_mme_scores_by_image():
    table = mme_scores(_frame())
    assert table.loc["A", "acc"] == pytest.approx(0.75)
    assert table.loc["A", "acc_plus"] == pytest.approx(0.5)
    assert table.loc["A", "score"] == pytest.approx(125.0)
    assert table.loc["B", "acc"] == 0 and table.loc["B", "acc_plus"] == 0
    assert table.loc["A", "n_pairs"] == 2
    assert perception_score(_frame()) == pytest.approx(125.0)


def test_pair_id_overrides_image_grouping():
    df = _frame().assign(pair_id=["p1", "p2", "p1", "p2", "p3", "p3"])
    table = mme_scores(df)
    # pairs now cross images: p1 = (right, right), p2 = (right, wrong)
    assert table.loc["A", "acc_plus"] == pytest.approx(0.5)
    assert list(score_answers(df)["parsed"]) == ["yes", "no", "yes", "yes", "no", "other"]


def test_missing_columns_raise():
    with pytest.raises(ValueError, match="prediction"):
        mme_scores(pd.DataFrame({"category": ["A"], "answer": ["yes"], "image_id": [1]}))
