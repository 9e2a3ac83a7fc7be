"""Chapter 4 helpers: token counts per k, the pruning claims' thresholds, the chapter 4-5 figures."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from vlmnb.views import plots  # noqa: E402
from vlmnb.experiments import reprompt  # noqa: E402
from vlmnb.experiments import sweep  # noqa: E402


@pytest.mark.parametrize("k, n, expected", [(0.05, 576, 29), (0.02, 576, 12), (0.05, 81, 4), (0.01, 81, 1)])
def test_topk_tokens_agrees_with_topk_dropped(k, n, expected):
    assert sweep.topk_tokens(k, n) == expected
    att = np.random.default_rng(0).random((2, n))
    dropped = sweep.topk_dropped(att, np.arange(n), k)
    assert all(n - len(d) == expected for d in dropped.values())


def _summary(means: dict) -> pd.DataFrame:
    return pd.DataFrame([{"k": k, "mean": m, "ci_low": m - 0.05, "ci_high": m + 0.05, "n": 10}
                         for k, m in means.items()])


def test_pruning_claims_thresholds():
    held = sweep.pruning_claims(_summary({0.01: 0.5, 0.05: 0.82, 0.2: 0.88, 0.5: 0.9}), 576).set_index("claim").held
    assert held.iloc[0] and held.iloc[1] and held.iloc[2]      # 0.82 >= 0.8; 0.82 >= 0.9 - 0.1; 0.9 >= 0.5
    held = sweep.pruning_claims(_summary({0.01: 0.6, 0.05: 0.7, 0.5: 0.55}), 81).set_index("claim").held
    assert not held.iloc[0] and held.iloc[1] and not held.iloc[2]
    assert "4 of 81" in held.index[0]


def test_f1_by_k_plots_the_means_at_k_percent():
    fig = plots.f1_by_k(_summary({0.05: 0.8, 0.01: 0.5}), 81)
    line = fig.axes[0].lines[0]
    assert list(line.get_xdata()) == [1.0, 5.0] and list(line.get_ydata()) == [0.5, 0.8]
    assert "4 tok" in fig.axes[0].get_xticklabels()[1].get_text()


def test_table1_bars_and_cost_figures():
    paper = reprompt.paper_table1()
    fig = plots.table1_bars(paper, paper=paper)
    heights = [p.get_height() for p in fig.axes[0].patches][:len(paper)]
    assert heights == pytest.approx(list(paper[("Average", "ACC")]))
    cost = pd.DataFrame({"fewer_kv_bytes_x": [1.0, 8.0], "faster_x": [1.0, 5.0]}, index=["Naive", "Query + K=5%"])
    fig = plots.reprompt_cost(cost)
    assert [p.get_height() for p in fig.axes[0].patches] == [1.0, 8.0, 1.0, 5.0]
