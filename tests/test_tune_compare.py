"""`tune best` against the runner-up: the gap bound by hand, and the verdicts."""

import math

import pytest

from bicc_lab.stats.gaps import Z_95, score_gap_bound
from bicc_lab.tune.compare import compare_best, runner_up


def test_score_gap_bound_by_hand():
    # p = 0.5 on 100 problems each: 1.96 · sqrt(0.25/100 + 0.25/100) = 1.96 · 0.0707107
    assert score_gap_bound(0.5, 100, 0.5, 100) == pytest.approx(1.959964 * 0.0707107, rel=1e-6)
    # p = 0.9 on 400 and 0.8 on 100: sqrt(0.09/400 + 0.16/100) = sqrt(0.000225 + 0.0016) = 0.0427200
    assert score_gap_bound(0.9, 400, 0.8, 100) == pytest.approx(Z_95 * 0.0427200, rel=1e-5)
    assert score_gap_bound(1.0, 10, 0.0, 10) == 0.0  # no spread at all in 0/1 extremes
    with pytest.raises(ValueError):
        score_gap_bound(1.2, 10, 0.5, 10)


def _trials():
    import optuna
    from optuna.distributions import FloatDistribution

    dist = {"rcc.coef": FloatDistribution(0.1, 10)}
    values = [(0.1, 0.70), (2.0, 0.66), (0.1, 0.69), (5.0, 0.50)]  # trial 2 repeats trial 0's setting
    trials = []
    for number, (coef, value) in enumerate(values):
        t = optuna.trial.create_trial(params={"rcc.coef": coef}, distributions=dist, value=value)
        t.number = number
        trials.append(t)
    return trials


def test_runner_up_skips_the_same_setting():
    trials = _trials()
    assert runner_up(trials, trials[0], "maximize").number == 1  # not trial 2 (same parameters)
    assert runner_up(trials, trials[3], "minimize").number == 1
    assert runner_up(trials[:1], trials[0], "maximize") is None


def test_verdicts():
    trials = _trials()
    key = "eval/arith/avg_at_4"
    # 0.70 vs 0.66 on 200 problems each: bound 1.96·sqrt(.21/200 + .2244/200) = 0.0914 > 0.04
    close = compare_best(0.70, trials[1], key, lambda r: (200, 200))
    assert close.distinguishable is False and close.gap == pytest.approx(0.04)
    assert close.bound == pytest.approx(Z_95 * math.sqrt(0.21 / 200 + 0.2244 / 200))
    assert "not distinguishable from runner-up trial 1" in close.verdict
    # the same gap on 5,000 problems each: bound 0.0183 < 0.04
    far = compare_best(0.70, trials[1], key, lambda r: (5000, 5000))
    assert far.distinguishable is True and "confirm both settings on more seeds" in far.verdict
    unknown = compare_best(0.70, trials[1], key, lambda r: (None, 200))
    assert unknown.distinguishable is None and unknown.bound is None
    training = compare_best(0.70, trials[1], "reward", lambda r: (200, 200))
    assert training.distinguishable is None and "training metric" in training.verdict
    assert far.as_dict()["trial"] == 1


def test_tune_best_reads_the_problem_counts_of_both_runs():
    from types import SimpleNamespace

    import optuna
    from optuna.distributions import FloatDistribution

    from bicc_lab.tune import study as st
    from bicc_lab.tune.views import compare_with_runner_up

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    dist = {"rcc.coef": FloatDistribution(0.1, 10)}
    for coef, value, run in ((0.5, 0.70, "r0"), (2.0, 0.66, "r1")):
        study.add_trial(optuna.trial.create_trial(
            params={"rcc.coef": coef}, distributions=dist, value=value, user_attrs={st.A_RUN_ID: run}))
    counts = {"r0": 5000.0, "r1": 5000.0}
    asked: list[str] = []

    class Tracker:
        def get(self, run_id):
            asked.append(run_id)
            return SimpleNamespace(metrics={"eval/arith/n": counts[run_id], "eval/arith/avg_at_4": 0.7})

    setup = SimpleNamespace(objective_key="eval/arith/avg_at_4", search=SimpleNamespace(direction="maximize"),
                            ctx=SimpleNamespace(tracker=lambda create: Tracker()))
    verdict = compare_with_runner_up(setup, study, study.best_trial)
    assert sorted(asked) == ["r0", "r1"] and verdict.distinguishable is True and verdict.trial == 1
    counts.update(r0=200.0, r1=200.0)
    assert compare_with_runner_up(setup, study, study.best_trial).distinguishable is False
