"""The anytime-valid interval of the seed policy (bicc_lab.stats.sequential), by hand."""

import math

import numpy as np
import pytest

from bicc_lab.stats.sequential import (
    confidence_sequence,
    critical_t,
    detectable_effect,
    mixture_e_value,
    power_at,
    running_confidence_sequence,
    seeds_needed,
)


def test_critical_t_by_hand():
    # n = 8, c = 8, α = sqrt(2)/8: B = sqrt(16/8)/α = 8, k = 1 − 8^(−1/4), m = 2k,
    # t* = sqrt(7 m / (1 − m))
    m = 2 * (1 - 8 ** -0.25)
    assert m == pytest.approx(0.810793, abs=1e-6)
    assert critical_t(8, math.sqrt(2) / 8, c=8) == pytest.approx(math.sqrt(7 * m / (1 - m)), rel=1e-12)
    assert critical_t(8, math.sqrt(2) / 8, c=8) == pytest.approx(5.4769, abs=1e-4)  # sqrt(7 · 0.810793 / 0.189207)


def test_too_few_seeds_give_the_whole_line():
    assert critical_t(1, 0.05) == math.inf  # one seed says nothing about a scale-free effect
    # n = 2, c = 2, α = 0.5: B = sqrt(2)/0.5, k = 1 − 1/B = 1 − 0.5/sqrt(2) = 0.646, m = 2k > 1
    assert critical_t(2, 0.5, c=2) == math.inf
    ci = confidence_sequence([0.1, 0.3], 0.05)
    assert (ci.low, ci.high) == (-math.inf, math.inf) and not ci.excludes_zero
    assert ci.mean == pytest.approx(0.2)


def test_interval_is_mean_plus_minus_t_star_s_over_root_n():
    d = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]  # mean 4.5, s^2 = 42/7 = 6
    alpha = math.sqrt(2) / 8
    ci = confidence_sequence(d, alpha, c=8)
    half = critical_t(8, alpha, c=8) * math.sqrt(6) / math.sqrt(8)
    assert (ci.mean, ci.low, ci.high, ci.n) == pytest.approx((4.5, 4.5 - half, 4.5 + half, 8))
    assert ci.sd == pytest.approx(math.sqrt(6)) and ci.half_width == pytest.approx(half)


def test_interval_ends_are_where_the_mixture_e_value_reaches_one_over_alpha():
    # independent of the closed form: E_n(μ) from the data directly (Lai's mixture)
    rng = np.random.default_rng(3)
    d = rng.normal(0.3, 1.0, 12)
    for alpha, c in [(0.05, 0.5), (0.01, 1.0), (0.2, 0.25)]:
        ci = confidence_sequence(d, alpha, c)
        for end in (ci.low, ci.high):
            assert mixture_e_value(d, end, c) == pytest.approx(1 / alpha, rel=1e-9)
        assert mixture_e_value(d, ci.mean, c) < 1 / alpha
        assert mixture_e_value(d, ci.high + 0.1, c) > 1 / alpha


def test_mixture_e_value_by_hand():
    # d = [1, 3], μ = 0, c = 1: S = 4, V = 10, E = sqrt(1/3) (10 / (10 − 16/3))^1 = sqrt(1/3)·15/7
    assert mixture_e_value([1.0, 3.0], 0.0, c=1.0) == pytest.approx(math.sqrt(1 / 3) * 15 / 7)
    assert mixture_e_value([2.0], 0.0, c=1.0) == pytest.approx(1.0)  # E_1 = 1 for any datum


def test_running_interval_intersects_the_looks():
    d = [0.0, 1.0, 0.2, 0.1, 0.15, 0.9, 0.05, 0.1, 0.12, 0.11]
    alpha = 0.2
    each = [confidence_sequence(d[:n], alpha) for n in (4, 6, 8, 10)]
    run = running_confidence_sequence(d, alpha, looks=[4, 6, 8, 10])
    assert run.low == pytest.approx(max(c.low for c in each))
    assert run.high == pytest.approx(min(c.high for c in each))
    assert run.mean == pytest.approx(np.mean(d)) and run.n == 10


def test_power_matches_a_monte_carlo_of_the_t_rule():
    # The CS at one look excludes 0 exactly when |t| >= t*_n: count it on simulated data.
    n, effect, sd, alpha = 10, 0.05, 0.04, 0.05 / 6
    t_star = critical_t(n, alpha)
    rng = np.random.default_rng(0)
    x = rng.normal(effect, sd, (20_000, n))
    t = x.mean(1) / (x.std(1, ddof=1) / math.sqrt(n))
    observed = float(np.mean(np.abs(t) >= t_star))
    p = power_at(n, effect, sd, alpha)
    assert 0.2 < p < 0.8  # a value the check can tell apart from its neighbours
    assert abs(observed - p) < 4 * math.sqrt(p * (1 - p) / 20_000)


def test_detectable_effect_and_seeds_needed_invert_the_power():
    sd, alpha = 0.035, 0.05 / 6
    mde = detectable_effect(12, sd, alpha)
    assert power_at(12, mde, sd, alpha) == pytest.approx(0.8, abs=1e-6)
    assert detectable_effect(3, sd, alpha) == math.inf  # 3 seeds: no finite interval at α/6
    assert detectable_effect(20, sd, alpha) < mde  # more seeds detect smaller effects
    n = seeds_needed(0.046, sd, alpha)
    assert n is not None
    assert power_at(n, 0.046, sd, alpha) >= 0.8 > power_at(n - 1, 0.046, sd, alpha)
    assert seeds_needed(0.0, sd, alpha) is None
    assert seeds_needed(0.2125, 0.0798, alpha) < n  # a larger standardised effect needs fewer
