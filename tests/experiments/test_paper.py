"""The paper's numbers are transcribed consistently (a typo here would mislead every table)."""
import numpy as np

from vlmnb.experiments import paper


def test_table1_rows_average_to_the_papers_average_column():
    # The paper's own averages differ from the mean of its subsets by up to 0.44 points
    # (Query + K=2%), so a transcription error larger than that is caught.
    for method, entry in paper.MME_TABLE1.items():
        assert len(entry["acc"]) == len(entry["acc_plus"]) == len(paper.MME_SUBSETS)
        assert abs(np.mean(entry["acc"]) - entry["average"][0]) < 0.5, method
        assert abs(np.mean(entry["acc_plus"]) - entry["average"][1]) < 0.5, method


def test_user_study_rates_follow_from_the_counts():
    s = paper.USER_STUDY
    assert s["llm_yes_human_yes"] + s["llm_yes_human_no"] + s["llm_no_human_yes"] + s["llm_no_human_no"] == 1358
    tpr = s["llm_yes_human_yes"] / (s["llm_yes_human_yes"] + s["llm_no_human_yes"])
    tnr = s["llm_no_human_no"] / (s["llm_no_human_no"] + s["llm_yes_human_no"])
    assert abs(tpr - s["tpr"]) < 1e-3 and abs(tnr - s["tnr"]) < 1e-3


def test_table1_frame_is_tidy():
    df = paper.mme_table1_frame()
    assert len(df) == len(paper.MME_TABLE1) * 10
    assert set(df["subset"]) == set(paper.MME_SUBSETS)
