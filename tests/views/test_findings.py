"""The first page's table of findings, read back from the claims the chapters publish."""
from __future__ import annotations

import pandas as pd
import pytest

from vlmnb.views import downloads, findings, side_by_side


def _claims(held_toy, held_smol):
    return side_by_side.claims({
        "toy": pd.DataFrame({"claim": ["a", "b"], "paper": ["> 0.6", "~0"], "ours": ["0.04", "1.00"], "held": held_toy}),
        "toy-smollm": pd.DataFrame({"claim": ["a", "b"], "paper": ["> 0.6", "~0"], "ours": ["0.19", "0.85"],
                                    "held": held_smol})})


def test_published_claims_come_back_in_chapter_order(tmp_path):
    got = downloads.publish("02_knockout", claims=_claims([False, True], [True, False]), folder=tmp_path, url="x")
    assert "claims.csv" in [f.name for f in got.files]
    downloads.publish("01_attention_fractions", claims=_claims([True, True], [False, False]), folder=tmp_path, url="x")
    downloads.publish("06_supported_models", folder=tmp_path, url="x")   # no claims: not in the table
    table = findings.collect(tmp_path)
    assert table.chapter.tolist() == ["01_attention_fractions"] * 2 + ["02_knockout"] * 2
    assert findings.models_in(table) == ["toy", "toy-smollm"]
    assert table["toy-smollm: held"].tolist() == ["not held", "not held", "held", "not held"]
    page = findings.summary_html(table)
    assert page.count("<tr>") == 5 and "vlmnb-not-held" in page and "<small>0.85</small>" in page
    assert page.index("01_attention_fractions") < page.index("02_knockout")
    linked = findings.summary_html(table, link="chapters/")
    assert '<a href="chapters/02_knockout.html">02_knockout</a>' in linked


def test_no_chapter_run_yet_and_a_broken_file(tmp_path):
    assert "make book" in findings.summary_html(findings.collect(tmp_path))
    (tmp_path / "03_localization").mkdir()
    (tmp_path / "03_localization" / "claims.csv").write_text("x,y\n1,2\n")
    with pytest.raises(ValueError, match="not a claims table"):
        findings.collect(tmp_path)
