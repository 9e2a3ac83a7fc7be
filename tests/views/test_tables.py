"""Tables as the book shows them: sensible decimals, a scroll box, a hint on wide tables."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from vlmnb.experiments import reprompt
from vlmnb.views import tables

SIX_DECIMALS = re.compile(r"\d\.\d{4,}")


@pytest.mark.parametrize("values, decimals", [
    ([0.034, 0.5, 0.97], 3),         # shares: three decimals
    ([84.81, 70.6, 55.25], 1),       # percentages: three significant digits
    ([3.0, 81.0, 5.0, 22.4], 1),     # a mean count
    ([1695.0, 201.0], 0),            # whole numbers
    ([0.00012, 0.0004], 3),          # at most three decimals
    ([np.nan, 0.25, np.inf], 3),     # missing and infinite values do not set the precision
    ([np.nan], 0),
])
def test_column_decimals(values, decimals):
    assert tables.column_decimals(values) == decimals


def test_format_number():
    assert tables.format_number(0.0341, 3) == "0.034"
    assert tables.format_number(0.00012, 3) == "1.2e-04"  # not a misleading 0.000
    assert tables.format_number(0.0, 3) == "0.000"
    assert tables.format_number(12345.6, 0) == "12,346"
    assert tables.format_number(np.nan, 2) == tables.MISSING and tables.format_number(None, 2) == tables.MISSING
    assert tables.format_number(True, 2) == "True" and tables.format_number("held", 2) == "held"


def test_show_formats_numbers_and_hides_a_plain_index():
    frame = pd.DataFrame({"band": ["early", "middle"], "image": [0.034, 0.51234], "tokens": [81.0, 81.0],
                          "acc": [84.81, np.nan], "met": [True, False]})
    table = tables.show(frame)
    html = table._repr_html_()
    assert not SIX_DECIMALS.search(html), html
    assert ">0.034<" in html and ">0.512<" in html and ">81<" in html and ">84.8<" in html and ">–<" in html
    assert ">True<" in html and "row_heading" not in html  # the 0..n-1 index is hidden
    assert f'class="{tables.SCROLL_CLASS}"' in html
    assert re.search(f'class="{tables.HINT_CLASS}"[^>]* hidden>', html)  # narrow: the hint is hidden
    assert "0.034" in repr(table) and "0.034000" not in repr(table)
    # the same table gives the same HTML (executed chapters do not change between runs)
    assert tables.show(frame)._repr_html_() == html


def test_floats_among_text_are_formatted_too():
    frame = pd.DataFrame({"metric": ["F1", "ACC (swapped)"], "value": [0.99612345, "0.949 (0.498)"]})
    html = tables.show(frame)._repr_html_()
    assert ">0.996<" in html and ">0.949 (0.498)<" in html and not SIX_DECIMALS.search(html), html


def test_explicit_decimals_and_a_named_index():
    frame = pd.DataFrame({"acc": [84.8123, 70.0]}, index=pd.Index(["Naive", "Query + K=5%"], name="method"))
    html = tables.show(frame, decimals={"acc": 2})._repr_html_()
    assert ">84.81<" in html and ">70.00<" in html and "Naive" in html


def test_table1_is_wide_and_gets_the_hint():
    table = tables.show(reprompt.paper_table1(), decimals=1)
    assert table.wide
    html = table._repr_html_()
    assert tables.HINT_CLASS in html and "scroll" in html and " hidden>" not in html
    assert html.index(tables.HINT_CLASS) < html.index(tables.SCROLL_CLASS) < html.index("<table")
    assert not SIX_DECIMALS.search(html)


def test_long_text_wraps_and_is_not_counted_as_width():
    frame = pd.DataFrame({"image_id": ["toy-0"], "text": ["a large purple circle at the center, " * 6]})
    assert not tables.show(frame).wide


def test_show_takes_a_series_and_refuses_other_things():
    assert "0.5" in tables.show(pd.Series([0.5, 0.25], name="share"))._repr_html_()
    with pytest.raises(TypeError, match="DataFrame or Series"):
        tables.show([1, 2])
