import numpy as np
import pandas as pd
import pytest

from vlmnb.experiments.stats import bootstrap_ci, summarize


def test_interval_contains_estimate_and_estimate_is_the_mean():
    x = np.random.default_rng(1).normal(3.0, 1.0, size=50)
    est, low, high = bootstrap_ci(x)
    assert est == pytest.approx(x.mean())
    assert low < est < high


def test_width_shrinks_with_n():
    rng = np.random.default_rng(2)
    widths = []
    for n in (10, 100, 1000):
        _, low, high = bootstrap_ci(rng.normal(size=n), n_resamples=1000)
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2]
    # the standard error shrinks like 1/sqrt(n): 10x more data, ~3.2x narrower
    assert 2.0 < widths[1] / widths[2] < 5.0


def test_same_seed_same_interval_other_seed_differs():
    x = np.random.default_rng(3).exponential(size=40)
    assert bootstrap_ci(x, seed=7) == bootstrap_ci(x, seed=7)
    assert bootstrap_ci(x, seed=7)[1:] != bootstrap_ci(x, seed=8)[1:]


def test_nan_dropped_and_degenerate_sizes():
    x = np.array([1.0, np.nan, 3.0, 2.0, np.nan])
    assert bootstrap_ci(x, seed=0) == bootstrap_ci([1.0, 3.0, 2.0], seed=0)
    assert bootstrap_ci([4.5]) == (4.5, 4.5, 4.5)
    assert bootstrap_ci([np.nan, 4.5]) == (4.5, 4.5, 4.5)
    assert all(np.isnan(v) for v in bootstrap_ci([]))
    assert all(np.isnan(v) for v in bootstrap_ci([np.nan, np.nan]))


def test_stat_without_axis_argument_matches_vectorised():
    x = np.random.default_rng(4).normal(size=25)
    vectorised = bootstrap_ci(x, stat=np.median, n_resamples=300, seed=5)
    looped = bootstrap_ci(x, stat=lambda v: float(np.median(v)), n_resamples=300, seed=5)
    assert vectorised == pytest.approx(looped)


def test_coverage_roughly_nominal():
    rng = np.random.default_rng(6)
    true_mean, trials, hits = 0.3, 300, 0
    for t in range(trials):
        x = rng.normal(true_mean, 1.0, size=40)
        _, low, high = bootstrap_ci(x, n_resamples=400, seed=t)
        hits += low <= true_mean <= high
    # percentile bootstrap under-covers a little at n=40; 300 trials give +-2.5% noise
    assert 0.87 <= hits / trials <= 0.99


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="ci"):
        bootstrap_ci([1, 2, 3], ci=95)
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap_ci([1, 2, 3], n_resamples=0)


def test_summarize_groups():
    df = pd.DataFrame({
        "config": ["a"] * 4 + ["b"] * 3,
        "layer": [0, 0, 1, 1, 0, 0, 0],
        "value": [1.0, 3.0, 5.0, np.nan, 2.0, 2.0, 8.0],
    })
    out = summarize(df, by=["config", "layer"], n_resamples=200)
    assert list(out.columns) == ["config", "layer", "mean", "ci_low", "ci_high", "n"]
    assert out[["config", "layer"]].values.tolist() == [["a", 0], ["a", 1], ["b", 0]]
    assert out["mean"].tolist() == pytest.approx([2.0, 5.0, 4.0])
    assert out["n"].tolist() == [2, 1, 3]
    a1 = out.iloc[1]
    assert a1.ci_low == a1.ci_high == 5.0
    assert (out["ci_low"] <= out["mean"]).all() and (out["mean"] <= out["ci_high"]).all()
    assert summarize(df, by="config")["n"].tolist() == [3, 3]
    with pytest.raises(KeyError, match="nope"):
        summarize(df, by="nope")
