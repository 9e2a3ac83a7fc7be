"""Confidence intervals for the book's tables and figures.

Every mean the chapters report comes with a percentile-bootstrap 95% interval computed here.

NaN rule: NaN values are *dropped* before resampling. In this project a NaN marks a unit
where a metric is undefined (for example precision of an empty description), not a failed
measurement, so it carries no information about the mean. The number of values that remain
is the ``n`` that :func:`summarize` reports. No values left -> ``(nan, nan, nan)``; one value
``x`` -> ``(x, x, x)`` (a single observation has no spread to resample).
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import pandas as pd

__all__ = ["bootstrap_ci", "summarize"]

# resampled values held in memory at once (float64): ~32 MB
_BLOCK_ELEMENTS = 1 << 22


def _apply_stat(stat: Callable, samples: np.ndarray) -> np.ndarray:
    """Apply ``stat`` to each row of ``samples``; vectorised when ``stat`` takes ``axis``."""
    try:
        out = np.asarray(stat(samples, axis=1), dtype=float)
        if out.shape == (samples.shape[0],):
            return out
    except TypeError:
        pass
    return np.array([stat(row) for row in samples], dtype=float)


def bootstrap_ci(values: Sequence[float] | np.ndarray, stat: Callable = np.mean,
                 n_resamples: int = 2000, ci: float = 0.95,
                 seed: int | None = 0) -> tuple[float, float, float]:
    """Percentile-bootstrap confidence interval of ``stat(values)``.

    Args:
        values: 1-D numbers; NaNs are dropped first (see the module docstring).
        stat: statistic of a 1-D array; if it accepts ``axis=`` (numpy reductions do) the
            resamples are evaluated in one vectorised call.
        n_resamples: number of bootstrap resamples.
        ci: coverage of the interval, in (0, 1).
        seed: seed of the resampling generator (same seed, same interval).

    Returns:
        ``(estimate, low, high)`` where ``estimate = stat(values)`` on the data itself.
    """
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci!r}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples!r}")
    x = np.asarray(values, dtype=float).ravel()
    x = x[~np.isnan(x)]
    n = x.size
    if n == 0:
        return (float("nan"),) * 3
    estimate = float(stat(x))
    if n == 1:
        return estimate, estimate, estimate
    rng = np.random.default_rng(seed)
    per_block = max(1, _BLOCK_ELEMENTS // n)
    boot = np.empty(n_resamples)
    for start in range(0, n_resamples, per_block):
        stop = min(n_resamples, start + per_block)
        idx = rng.integers(0, n, size=(stop - start, n))
        boot[start:stop] = _apply_stat(stat, x[idx])
    alpha = (1.0 - ci) / 2.0
    low, high = np.quantile(boot, [alpha, 1.0 - alpha])
    return estimate, float(low), float(high)


def summarize(df: pd.DataFrame, by: str | Sequence[str], value: str = "value",
              ci: float = 0.95, n_resamples: int = 2000, seed: int | None = 0) -> pd.DataFrame:
    """Group ``df`` by ``by`` and give each group's mean with its bootstrap interval.

    Returns one row per group with the ``by`` columns and ``mean``, ``ci_low``, ``ci_high``
    and ``n`` (the number of non-NaN values used). Every group is resampled with the same
    ``seed``, so the table is reproducible.
    """
    by = [by] if isinstance(by, str) else list(by)
    missing = [c for c in [*by, value] if c not in df.columns]
    if missing:
        raise KeyError(f"summarize: column(s) {missing} not in the frame; it has {list(df.columns)}")
    rows = []
    groups = df.groupby(by, sort=True, dropna=False, observed=True)[value] if by else [((), df[value])]
    for key, series in groups:
        key = key if isinstance(key, tuple) else (key,)
        vals = pd.to_numeric(series, errors="coerce").to_numpy(dtype=float)
        est, low, high = bootstrap_ci(vals, n_resamples=n_resamples, ci=ci, seed=seed)
        rows.append({**dict(zip(by, key)), "mean": est, "ci_low": low, "ci_high": high,
                     "n": int(np.count_nonzero(~np.isnan(vals)))})
    return pd.DataFrame(rows, columns=[*by, "mean", "ci_low", "ci_high", "n"])
