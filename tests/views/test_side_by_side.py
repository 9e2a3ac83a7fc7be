"""The side-by-side views of one chapter run on several models (vlmnb.views.side_by_side)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from vlmnb.views import figure_data, side_by_side


def _claims(values, held):
    return pd.DataFrame({"claim": ["first", "second"], "paper": ["> 0.6", "< 0.05"], "ours": values, "held": held})


def test_claims_keeps_each_models_value_and_verdict():
    table = side_by_side.claims({"toy": _claims(["0.04", "0.05"], [False, True]),
                                         "toy-smollm": _claims(["0.22", "0.08"], [True, np.nan])})
    assert list(table.columns) == ["claim", "paper", "toy", "toy: held", "toy-smollm", "toy-smollm: held"]
    assert table["paper"].tolist() == ["> 0.6", "< 0.05"]
    assert table["toy"].tolist() == ["0.04", "0.05"] and table["toy-smollm"].tolist() == ["0.22", "0.08"]
    assert table["toy: held"].tolist() == ["not held", "held"]
    assert table["toy-smollm: held"].tolist() == ["held", "n/a"]
    # a reason in place of a verdict is kept, not read as "held"
    assert side_by_side.verdict("n/a (different model and data)") == "n/a (different model and data)"
    assert [side_by_side.verdict(v) for v in (np.bool_(True), False, "False", None)] == ["held", "not held", "not held",
                                                                                         "n/a"]


def test_a_claim_only_one_model_has_is_kept_and_marked():
    extra = pd.concat([_claims(["1", "2"], [True, True]),
                       pd.DataFrame([{"claim": "third", "paper": "p", "ours": "3", "held": False}])])
    table = side_by_side.claims({"a": _claims(["1", "2"], [True, False]), "b": extra})
    assert table["claim"].tolist() == ["first", "second", "third"]
    assert table.loc[2, "a"] == "" and table.loc[2, "a: held"] == "n/a" and table.loc[2, "b: held"] == "not held"
    with pytest.raises(ValueError, match="missing"):
        side_by_side.claims({"a": pd.DataFrame({"claim": ["x"]})})


def test_by_depth_draws_every_model_against_relative_depth():
    figure_data.clear()
    toy = pd.DataFrame({"layer": np.repeat(np.arange(8), 2), "span": ["image", "query"] * 8,
                        "fraction": np.linspace(0, 1, 16)})
    smol = pd.DataFrame({"layer": np.repeat(np.arange(30), 2), "span": ["image", "query"] * 30,
                         "fraction": np.linspace(1, 0, 60)})
    fig = side_by_side.by_depth({"toy": (toy, 8), "toy-smollm": (smol, 30)}, y="fraction", panel="span",
                           ylabel="share of attention (0-1)", paper_bands={"early": (0, 5)},
                           paper_values={"query": (0.6, "query > 0.60")})
    assert len(fig.axes) == 2 and [ax.get_title() for ax in fig.axes] == ["image", "query"]
    (stem, drawn), = figure_data.drawn()
    assert stem == "by_depth"
    assert set(drawn.model) == {"toy", "toy-smollm"}
    last = drawn[(drawn.model == "toy-smollm") & (drawn.panel == "query")].relative_depth
    assert last.min() == 0.0 and last.max() == 1.0 and len(last) == 30
    assert drawn[(drawn.model == "toy") & (drawn.layer == 7)].relative_depth.eq(1.0).all()
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels[:2] == ["toy (8 layers)", "toy-smollm (30 layers)"] and "paper: query > 0.60" in labels
    # the paper's band 0-5 of 80 layers is shaded at relative depth 0 .. 5/79
    (band,) = fig.axes[0].patches
    assert np.isclose(band.get_x(), 0.0) and np.isclose(band.get_x() + band.get_width(), 5 / 79)


def test_f1_bars_draws_each_model_and_scope():
    figure_data.clear()

    def summary(all_, outside):
        rows = [{"kind": k, "scope": s, "mean": m} for k, a, o in zip(("img->gen", "img->query"), all_, outside)
                for s, m in (("all", a), ("outside", o))]
        return pd.DataFrame(rows).assign(ci_low=lambda d: d["mean"] - 0.05, ci_high=lambda d: d["mean"] + 0.05)

    fig = side_by_side.f1_bars({"toy": summary([0.9, 0.8], [1.0, 0.95]), "toy-smollm": summary([0.3, 0.0], [0.7, 0.6])},
                               paper={"img->gen": 0.4})
    (stem, drawn), = figure_data.drawn()
    assert stem == "f1_bars_by_model"
    got = drawn.set_index(["model", "kind", "scope"])["mean"]
    assert got[("toy-smollm", "img->query", "all")] == 0.0 and got[("toy", "img->gen", "outside")] == 1.0
    assert len(fig.axes[0].patches) == 8                    # 2 kinds x 2 models x 2 scopes
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "toy-smollm: outside the middle window" in labels and "paper, all layers (InternVL2-76B)" in labels


def test_table1_sets_each_models_averages_beside_the_papers():
    from vlmnb.experiments import reprompt

    paper = reprompt.paper_table1()
    mine = paper.iloc[:2].copy()
    mine[("Average", "ACC")] = [50.0, 40.0]
    table = side_by_side.table1({"toy": mine, "paper": paper})
    assert table.index.tolist() == paper.index.tolist()
    assert table[("toy", "ACC")].iloc[:2].tolist() == [50.0, 40.0]
    assert table[("toy", "ACC")].iloc[2:].isna().all()          # methods the model did not run: empty
    assert table[("paper", "ACC")].tolist() == paper[("Average", "ACC")].tolist()
