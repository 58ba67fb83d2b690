"""Statistics of the report against hand-computed values."""

import math

import numpy as np
import pytest
from scipy import stats

from bicc_lab.report.data import metric_selector
from bicc_lab.report.stats import (
    MeanCI,
    bootstrap_mean_ci,
    clip_ci,
    mean_ci,
    paired_bootstrap,
    paired_bootstrap_many,
)

# t_{0.975, 2} in closed form (df = 2: t_p = (2p - 1) / sqrt(2 p (1 - p))); t_{0.975, 4} from tables
T_975_DF2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)
T_975_DF4 = 2.776445105


def test_t_quantiles_used_by_hand_are_right():
    assert stats.t.ppf(0.975, 2) == pytest.approx(T_975_DF2, rel=1e-12)
    assert stats.t.ppf(0.975, 4) == pytest.approx(T_975_DF4, rel=1e-9)


def test_mean_ci_is_the_student_t_interval():
    r = mean_ci([0.5, 0.6, 0.7])
    half = T_975_DF2 * 0.1 / math.sqrt(3)  # s = 0.1
    assert r.mean == pytest.approx(0.6)
    assert r.std == pytest.approx(0.1)
    assert (r.low, r.high) == pytest.approx((0.6 - half, 0.6 + half))
    assert r.half_width == pytest.approx(half) and r.n == 3

    r = mean_ci([1, 2, 3, 4, 10])  # mean 4, s^2 = (9+4+1+0+36)/4 = 12.5
    half = T_975_DF4 * math.sqrt(12.5) / math.sqrt(5)
    assert (r.mean, r.low, r.high) == pytest.approx((4.0, 4 - half, 4 + half), rel=1e-8)


def test_mean_ci_single_value_and_nans():
    r = mean_ci([0.42])
    assert r.mean == 0.42 and r.n == 1 and not r.has_ci and math.isnan(r.low)
    r = mean_ci([0.2, float("nan"), 0.4])
    assert r.n == 2 and r.mean == pytest.approx(0.3)
    assert mean_ci([]).n == 0


def test_bootstrap_identical_arms_give_p_one_and_zero_in_ci():
    a = [1.0, 0.0, 0.5, 0.25, 1.0, 0.75]
    r = paired_bootstrap(a, list(a))
    assert r.diff == 0.0 and r.p_value == 1.0
    assert r.low <= 0.0 <= r.high


def test_bootstrap_one_arm_right_where_the_other_misses():
    r = paired_bootstrap([1.0] * 30, [0.0] * 30, n_resamples=10_000)
    assert r.diff == 1.0 and (r.low, r.high) == (1.0, 1.0)
    assert r.p_value == pytest.approx(1 / 10_001)


def test_bootstrap_p_matches_the_normal_approximation_on_a_large_sample():
    rng = np.random.default_rng(1)
    d = rng.normal(0.05, 0.5, size=2000)  # a "per-problem difference" with z ~ 4.5
    b = np.zeros_like(d)
    r = paired_bootstrap(d, b)
    se = d.std(ddof=1) / math.sqrt(d.size)
    assert r.diff == pytest.approx(d.mean())
    assert (r.high - r.low) / 2 == pytest.approx(1.96 * se, rel=0.05)
    # Each tail on its own: the 2.5% and 97.5% quantiles (a 1.67% lower quantile would put
    # the low end 2.13 se away while the width above still passed).
    assert r.diff - r.low == pytest.approx(1.96 * se, rel=0.04)
    assert r.high - r.diff == pytest.approx(1.96 * se, rel=0.04)
    d2 = d - d.mean() + 1.5 * se  # z = 1.5 -> two-sided p = 0.1336
    r2 = paired_bootstrap(d2, b)
    assert r2.p_value == pytest.approx(2 * stats.norm.sf(1.5), abs=0.015)


def test_bootstrap_is_deterministic_and_batched_equals_single():
    rng = np.random.default_rng(0)
    a, b, c = rng.random(50), rng.random(50), rng.random(50)
    one = paired_bootstrap(a, b)
    assert paired_bootstrap(a, b) == one
    many = paired_bootstrap_many(np.column_stack([a - b, c - b]))
    assert many[0].p_value == one.p_value and many[0].low == pytest.approx(one.low)
    assert many[1].diff == pytest.approx(float((c - b).mean()))


def test_metric_selector():
    sel = metric_selector("avg@k")
    assert sel.pick(["avg_at_4", "avg_at_32", "pass_at_1"]) == ("avg_at_32", 32)
    assert metric_selector("pass_at_1").pick(["avg_at_4", "pass_at_1"]) == ("pass_at_1", 1)
    assert metric_selector("maj_at_k").pick(["avg_at_4"]) is None
    score = metric_selector("pass_at_k").problem_score(2)
    assert score({"correct": [True, False, False, False]}) == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2)


# --------------------------------------------------------------------------- fewer than 3 seeds


def test_bootstrap_mean_ci_on_cases_with_known_distributions():
    # two problems scoring 0 and 1: resampled means 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4,
    # so the 2.5% and 97.5% quantiles are 0 and 1
    r = bootstrap_mean_ci([np.array([[0.0], [1.0]])])
    assert (r.mean, r.low, r.high, r.n, r.method) == (0.5, 0.0, 1.0, 1, "bootstrap")
    # one problem, two seeds scoring 0 and 1: the seeds are what varies, same distribution
    r = bootstrap_mean_ci([np.array([[0.0, 1.0]])])
    assert (r.mean, r.low, r.high, r.n) == (0.5, 0.0, 1.0, 2)
    assert r.std == pytest.approx(math.sqrt(0.5))  # sd of the two seed means (0, 1)
    # every problem of every seed the same: no spread at all
    r = bootstrap_mean_ci([np.full((7, 2), 0.25), np.full((3, 2), 0.75)])
    assert (r.mean, r.low, r.high) == pytest.approx((0.5, 0.5, 0.5))
    # the point estimate shown can be given (the logged metric) and stays put
    assert bootstrap_mean_ci([np.array([[0.0], [1.0]])], mean=0.4).mean == 0.4


def test_bootstrap_mean_ci_seed_resampling_widens_the_interval():
    rng = np.random.default_rng(3)
    base = rng.binomial(4, 0.5, size=(200, 1)) / 4
    same = np.hstack([base, base])
    apart = np.hstack([base, np.clip(base + 0.2, 0, 1)])  # the second seed scores higher everywhere
    narrow = bootstrap_mean_ci([same])
    wide = bootstrap_mean_ci([apart])
    assert narrow.high - narrow.low == pytest.approx(bootstrap_mean_ci([base]).high - bootstrap_mean_ci([base]).low,
                                                     rel=0.1)
    assert wide.high - wide.low > 2 * (narrow.high - narrow.low)


def test_interval_and_p_value_agree_with_scipy():
    """Same data through scipy.stats.bootstrap / permutation_test: the intervals agree to
    Monte-Carlo precision, the p-values of the two paired tests (bootstrap, sign-flip permutation) to 0.002."""
    rng = np.random.default_rng(7)
    baseline = rng.binomial(4, 0.55, size=300) / 4
    arm = np.clip(baseline + rng.choice([0.0, 0.25, -0.25], size=300, p=[0.5, 0.3, 0.2]), 0, 1)

    ours = bootstrap_mean_ci([arm[:, None]])
    ref = stats.bootstrap((arm,), np.mean, method="percentile", n_resamples=10_000, random_state=0)
    assert ours.low == pytest.approx(ref.confidence_interval.low, abs=0.004)
    assert ours.high == pytest.approx(ref.confidence_interval.high, abs=0.004)

    paired = paired_bootstrap(arm, baseline)
    ref = stats.bootstrap((arm, baseline), lambda a, b: np.mean(a - b), paired=True, method="percentile",
                          n_resamples=10_000, random_state=0)
    assert paired.low == pytest.approx(ref.confidence_interval.low, abs=0.004)
    assert paired.high == pytest.approx(ref.confidence_interval.high, abs=0.004)
    perm = stats.permutation_test(
        (arm, baseline), lambda a, b, axis=-1: np.mean(a - b, axis=axis), permutation_type="samples",
        n_resamples=10_000, random_state=0, vectorized=True,
    )
    assert 0.001 < perm.pvalue < 0.2  # a moderate effect: both tests see it, neither is at its floor
    assert paired.p_value == pytest.approx(perm.pvalue, abs=0.002)  # 0.0022 vs 0.0024 here


def test_clip_ci_keeps_the_interval_in_the_metric_range():
    # seeds 0, 50, 100 (%): t-interval 0.5 ± 4.303 * 0.5 / sqrt(3) = ±1.242, far outside [0, 1]
    stat = mean_ci([0.0, 0.5, 1.0])
    assert stat.low == pytest.approx(0.5 - 4.302652729749464 * 0.5 / math.sqrt(3))
    clipped = clip_ci(stat, 0.0, 1.0)
    assert (clipped.mean, clipped.low, clipped.high, clipped.n) == (0.5, 0.0, 1.0, 3)
    assert clipped.symmetric and not clip_ci(mean_ci([0.9, 1.0, 1.0]), 0.0, 1.0).symmetric
    assert mean_ci([0.1, 0.2, 0.4]).symmetric  # a mean other than 0.5: mean - low is not mean + low
    assert clip_ci(MeanCI(0.5, math.nan, math.nan, 1, math.nan, ""), 0.0, 1.0).has_ci is False
    assert clip_ci(stat, None, None) == stat
