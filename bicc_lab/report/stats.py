"""Statistics of the ablation report: t-intervals over seeds, paired bootstrap over problems.

Pure numpy / scipy, no MLflow: every function here is checked against hand-computed
values in ``tests/test_report_stats.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "BOOTSTRAP_RESAMPLES",
    "BOOTSTRAP_SEED",
    "CONFIDENCE",
    "BootstrapResult",
    "MeanCI",
    "mean_ci",
    "paired_bootstrap",
    "paired_bootstrap_many",
]

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 20260313  # fixed: the same report twice gives the same p-values


@dataclass(frozen=True)
class MeanCI:
    """Mean over seeds with a two-sided t-interval (``low``/``high`` NaN when n < 2)."""

    mean: float
    low: float
    high: float
    n: int
    std: float  # sample standard deviation (ddof=1); NaN when n < 2

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2 if self.n >= 2 else math.nan

    @property
    def has_ci(self) -> bool:
        return self.n >= 2 and not math.isnan(self.low)


def mean_ci(values: Sequence[float] | np.ndarray, confidence: float = CONFIDENCE) -> MeanCI:
    """Mean ± the Student-t interval ``t_{(1+c)/2, n-1} · s / sqrt(n)`` of ``values``.

    NaNs are dropped. One value: the mean, no interval. No value: all NaN, n = 0.
    """
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    n = int(x.size)
    if n == 0:
        return MeanCI(math.nan, math.nan, math.nan, 0, math.nan)
    mean = float(x.mean())
    if n == 1:
        return MeanCI(mean, math.nan, math.nan, 1, math.nan)
    from scipy import stats

    std = float(x.std(ddof=1))
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * std / math.sqrt(n)
    return MeanCI(mean, mean - half, mean + half, n, std)


@dataclass(frozen=True)
class BootstrapResult:
    """Paired bootstrap of ``mean(a) - mean(b)`` over problems."""

    diff: float  # observed difference of the means
    low: float  # percentile CI of the difference
    high: float
    p_value: float  # two-sided, H0: no difference
    n_problems: int
    n_resamples: int


def _resample_counts(n: int, n_resamples: int, seed: int, chunk_rows: int):
    """Yield ``(rows, counts)``: how often each of n problems is drawn in each resample.

    Resample r draws n indices ``rng.integers(0, n, n)``; chunks keep memory bounded.
    """
    rng = np.random.default_rng(seed)
    done = 0
    while done < n_resamples:
        size = min(chunk_rows, n_resamples - done)
        idx = rng.integers(0, n, size=(size, n))
        flat = (np.arange(size)[:, None] * n + idx).ravel()
        counts = np.bincount(flat, minlength=size * n).reshape(size, n)
        yield slice(done, done + size), counts
        done += size


def _summarise(means: np.ndarray, observed: float, confidence: float) -> tuple[float, float, float]:
    alpha = 1 - confidence
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    # Tolerance: resampled means of identical values differ from `observed` by rounding only.
    tol = 1e-9 * max(1.0, abs(observed))
    extreme = int(np.count_nonzero(np.abs(means - observed) >= abs(observed) - tol))
    p = (1 + extreme) / (1 + means.size)
    return float(low), float(high), min(1.0, p)


def paired_bootstrap(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = BOOTSTRAP_SEED,
) -> BootstrapResult:
    """Paired bootstrap over problems of the difference of mean scores ``a - b``.

    ``a[i]`` and ``b[i]`` are the scores of the same problem under two arms (e.g. the
    per-problem accuracy averaged over seeds). Problems are resampled with replacement
    ``n_resamples`` times (a fixed RNG seed); the CI is the percentile interval of the
    resampled mean differences; the two-sided p-value tests H0 "no difference" by
    centring the bootstrap distribution on 0 (Efron & Tibshirani 1993, §16.4):
    ``p = (1 + #{|d* - d| >= |d|}) / (1 + B)``, so identical arms give p = 1 and an arm
    that wins on every problem by the same margin gives p = 1 / (1 + B).
    """
    x = np.asarray(a, dtype=float)
    y = np.asarray(b, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"paired_bootstrap: need two 1-d arrays of equal length, got {x.shape} and {y.shape}")
    return paired_bootstrap_many((x - y)[:, None], n_resamples=n_resamples, confidence=confidence, seed=seed)[0]


def paired_bootstrap_many(
    diffs: np.ndarray,
    *,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = BOOTSTRAP_SEED,
) -> list[BootstrapResult]:
    """:func:`paired_bootstrap` of every column of ``diffs`` (n problems x m comparisons).

    All columns share the resamples (the same seed gives the same indices), so each
    result equals ``paired_bootstrap`` of that column alone; the m comparisons cost one
    matrix product per chunk of resamples instead of m gathers.
    """
    d = np.asarray(diffs, dtype=float)
    if d.ndim != 2:
        raise ValueError(f"paired_bootstrap_many: need an (n, m) array, got shape {d.shape}")
    n, m = d.shape
    if n == 0:
        return [BootstrapResult(math.nan, math.nan, math.nan, math.nan, 0, n_resamples) for _ in range(m)]
    observed = d.mean(axis=0)
    means = np.empty((n_resamples, m), dtype=float)
    chunk_rows = max(1, min(n_resamples, 2_000_000 // n))
    for rows, counts in _resample_counts(n, n_resamples, seed, chunk_rows):
        means[rows] = (counts @ d) / n
    out = []
    for j in range(m):
        low, high, p = _summarise(means[:, j], float(observed[j]), confidence)
        out.append(BootstrapResult(float(observed[j]), low, high, p, n, n_resamples))
    return out
