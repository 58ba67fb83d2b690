"""Statistics of the report against hand-computed values."""

import math

import numpy as np
import pytest
from scipy import stats

from bicc_lab.report.data import metric_selector
from bicc_lab.report.stats import mean_ci, paired_bootstrap, paired_bootstrap_many

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
