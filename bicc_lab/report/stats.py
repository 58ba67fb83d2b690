"""Statistics of the ablation report: t-intervals over seeds, a bootstrap over problems (and
seeds) for cells with fewer than three seeds, the paired bootstrap over problems.

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
    "MIN_SEEDS_FOR_T",
    "BootstrapResult",
    "MeanCI",
    "bootstrap_mean_ci",
    "clip_ci",
    "mean_ci",
    "paired_bootstrap",
    "paired_bootstrap_many",
]

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 20260313  # fixed: the same report twice gives the same p-values
#: Below this many seeds a t-interval is useless (two seeds: t_{0.975,1} = 12.7, a ±118-point
#: interval on the quickstart), so the interval comes from a bootstrap over problems.
MIN_SEEDS_FOR_T = 3


@dataclass(frozen=True)
class MeanCI:
    """Mean over seeds with a two-sided interval (``low``/``high`` NaN when there is none).

    ``method``: ``"t"`` (Student-t over seeds), ``"bootstrap"`` (percentile bootstrap over
    problems, and over seeds when there are several) or ``""`` (no interval).
    """

    mean: float
    low: float
    high: float
    n: int
    std: float  # sample standard deviation over seeds (ddof=1); NaN when n < 2
    method: str = "t"

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2 if self.has_ci else math.nan

    @property
    def has_ci(self) -> bool:
        return not (math.isnan(self.low) or math.isnan(self.high))

    @property
    def symmetric(self) -> bool:
        """The interval is mean ± one half-width (an unclipped t-interval)."""
        return self.has_ci and math.isclose(self.mean - self.low, self.high - self.mean, rel_tol=1e-9, abs_tol=1e-12)


def clip_ci(stat: MeanCI, low: float | None, high: float | None) -> MeanCI:
    """``stat`` with its interval clipped to the metric's range ``[low, high]`` (None: open)."""
    if not stat.has_ci:
        return stat
    lo, hi = stat.low, stat.high
    if low is not None:
        lo, hi = max(lo, low), max(hi, low)
    if high is not None:
        lo, hi = min(lo, high), min(hi, high)
    return MeanCI(stat.mean, lo, hi, stat.n, stat.std, stat.method)


def mean_ci(values: Sequence[float] | np.ndarray, confidence: float = CONFIDENCE) -> MeanCI:
    """Mean ± the Student-t interval ``t_{(1+c)/2, n-1} · s / sqrt(n)`` of ``values``.

    NaNs are dropped. One value: the mean, no interval. No value: all NaN, n = 0.
    """
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    n = int(x.size)
    if n == 0:
        return MeanCI(math.nan, math.nan, math.nan, 0, math.nan, "")
    mean = float(x.mean())
    if n == 1:
        return MeanCI(mean, math.nan, math.nan, 1, math.nan, "")
    from scipy import stats

    std = float(x.std(ddof=1))
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * std / math.sqrt(n)
    return MeanCI(mean, mean - half, mean + half, n, std)


def bootstrap_mean_ci(
    strata: Sequence[np.ndarray],
    *,
    mean: float | None = None,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = BOOTSTRAP_SEED,
) -> MeanCI:
    """Percentile bootstrap interval of a score averaged over problems, seeds and strata.

    Each stratum (a benchmark) is an ``(n_problems, n_seeds)`` array of per-problem scores
    with the same seeds in the same column order. One resample draws the problems of every
    stratum with replacement and, when there are several seeds, the seeds with replacement
    (the same seed draw for every stratum); its value is the mean over strata of the mean
    over the drawn problems and seeds. With one stratum and one seed this is the textbook
    percentile bootstrap of a mean (``scipy.stats.bootstrap(..., method="percentile")``).
    ``mean`` is the point estimate shown (default: the mean of the data).
    """
    arrays = [np.asarray(a, dtype=float) for a in strata]
    if not arrays or any(a.ndim != 2 or a.shape[0] == 0 for a in arrays):
        raise ValueError("bootstrap_mean_ci: need non-empty (n_problems, n_seeds) arrays")
    n_seeds = arrays[0].shape[1]
    if n_seeds == 0 or any(a.shape[1] != n_seeds for a in arrays):
        raise ValueError("bootstrap_mean_ci: every stratum needs the same seeds (columns)")
    observed = float(np.mean([a.mean() for a in arrays]))
    values = np.zeros(n_resamples, dtype=float)
    seed_rng = np.random.default_rng([seed, 1])
    if n_seeds > 1:
        idx = seed_rng.integers(0, n_seeds, size=(n_resamples, n_seeds))
        flat = (np.arange(n_resamples)[:, None] * n_seeds + idx).ravel()
        seed_counts = np.bincount(flat, minlength=n_resamples * n_seeds).reshape(n_resamples, n_seeds).astype(float)
    else:
        seed_counts = np.ones((n_resamples, 1))
    for k, a in enumerate(arrays):
        n = a.shape[0]
        chunk_rows = max(1, min(n_resamples, 2_000_000 // n))
        for rows, counts in _resample_counts(n, n_resamples, seed + k, chunk_rows):
            per_seed = counts @ a / n  # (chunk, n_seeds): each seed's mean over the drawn problems
            values[rows] += (per_seed * seed_counts[rows]).sum(axis=1) / n_seeds
    values /= len(arrays)
    alpha = 1 - confidence
    low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    std = float(np.mean([a.mean(axis=0) for a in arrays], axis=0).std(ddof=1)) if n_seeds > 1 else math.nan
    return MeanCI(observed if mean is None else float(mean), float(low), float(high), n_seeds, std, "bootstrap")


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
