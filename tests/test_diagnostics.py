"""Contrastive diagnostics against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from bicc_lab.algorithms.diagnostics import (
    context_tokens_mean,
    contrastive_margin,
    cov_r_delta,
    frac_conditioned_groups,
    logp_gap,
    mixed_group_mask,
)

# Four groups of G = 4, success means reward > 0.5:
# group 0 mixed (O+ = {0, 2, 3}), group 1 all wrong, group 2 all right,
# group 3 mixed (0.6 counts as success, 0.4 does not: O+ = {12}).
REWARDS = torch.tensor(
    [1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.6, 0.4, 0.0, 0.0]
)
RATIOS = torch.tensor(
    [1.2, 0.8, 1.0, 1.1, 5.0, 5.0, 5.0, 5.0, 0.1, 0.1, 0.1, 0.1, 1.0, 0.9, 1.1, 0.95]
)


def test_mixed_group_mask():
    assert mixed_group_mask(REWARDS, 4).tolist() == [True, False, False, True]
    # At 0.7 the 0.6 of group 3 is a failure too, so group 3 is no longer mixed.
    assert mixed_group_mask(REWARDS, 4, success_threshold=0.7).tolist() == [
        True,
        False,
        False,
        False,
    ]


def test_contrastive_margin_by_hand():
    # Group 0: (1.2 + 1.0 + 1.1)/3 - 0.8 = 0.3. Group 3: 1.0 - (0.9 + 1.1 + 0.95)/3 = 1/60.
    stat = contrastive_margin(RATIOS, REWARDS, 4)
    assert stat["num_groups"] == 2
    assert stat["value"] == pytest.approx((0.3 + 1 / 60) / 2, abs=1e-6)


def test_no_mixed_group_gives_none_not_nan():
    rewards = torch.tensor([1.0, 1.0, 0.0, 0.0])
    assert contrastive_margin(torch.ones(4), rewards, 2) == {"value": None, "num_groups": 0}
    assert logp_gap(torch.ones(4), rewards, 2) == {"value": None, "num_groups": 0}


def test_logp_gap_by_hand_and_dpo_case():
    seq_logps = torch.tensor([-3.0, -7.0, -9.0, -1.0])
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0])
    # G = 2: log pi(o+) - log pi(o-) per group: 4 and 8.
    stat = logp_gap(seq_logps, rewards, 2)
    assert stat == {"value": pytest.approx(6.0), "num_groups": 2}


def test_cov_r_delta_all_groups_and_mixed_only():
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0])
    delta = torch.tensor([1.0, -1.0, 3.0, 0.0])
    # Group 0: means 0.5 and 0 -> (0.5 * 1 + (-0.5) * (-1)) / 2 = 0.5. Group 1: rewards constant -> 0.
    assert cov_r_delta(rewards, delta, 2) == {"value": pytest.approx(0.25), "num_groups": 2}
    assert cov_r_delta(rewards, delta, 2, mixed_only=True) == {
        "value": pytest.approx(0.5),
        "num_groups": 1,
    }
    assert cov_r_delta(torch.ones(2), delta[:2], 2, mixed_only=True) == {
        "value": None,
        "num_groups": 0,
    }


def test_frac_conditioned_groups():
    flags = torch.tensor([1, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0], dtype=torch.bool)
    assert frac_conditioned_groups(flags, 4) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="multiple of group_size"):
        frac_conditioned_groups(flags, 5)


def test_context_tokens_mean_over_conditioned_only():
    tokens = torch.tensor([10, 20, 0, 30])
    assert context_tokens_mean(tokens, torch.tensor([True, True, False, False])) == pytest.approx(
        15.0
    )
    assert context_tokens_mean(tokens, torch.zeros(4, dtype=torch.bool)) is None


def test_outcome_gap_by_group_is_order_free_and_handles_partial_groups():
    from bicc_lab.algorithms.diagnostics import logp_gap, outcome_gap_by_group

    values = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0, 20.0, 30.0, 40.0])
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    contiguous = logp_gap(values, rewards, 4)
    # group 0: (1+3)/2 - (2+4)/2 = -1 ; group 1: (10+20)/2 - (30+40)/2 = -20 ; mean -10.5
    assert contiguous["value"] == pytest.approx(-10.5)
    perm = torch.tensor([5, 2, 7, 0, 3, 6, 1, 4])
    group_index = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])[perm] + 100
    shuffled = outcome_gap_by_group(values[perm], rewards[perm], group_index)
    assert shuffled["value"] == pytest.approx(-10.5) and shuffled["num_groups"] == 2
    # Only part of group 1 present, and only correct ones: it no longer counts.
    partial = outcome_gap_by_group(values[:6], rewards[:6], torch.tensor([0, 0, 0, 0, 1, 1]))
    assert partial["value"] == pytest.approx(-1.0) and partial["num_groups"] == 1
    none = outcome_gap_by_group(values[4:6], rewards[4:6], torch.tensor([1, 1]))
    assert none["value"] is None
    # A reward equal to the threshold is a failure (success is reward > threshold), and an
    # empty batch has no group.
    at_threshold = outcome_gap_by_group(torch.tensor([1.0, 4.0]), torch.tensor([0.5, 1.0]), torch.tensor([0, 0]))
    assert at_threshold == {"value": 3.0, "num_groups": 1}
    empty = torch.zeros(0)
    assert outcome_gap_by_group(empty, empty, torch.zeros(0, dtype=torch.long)) == {"value": None, "num_groups": 0}


def test_gradient_variance_from_moments_by_hand():
    from bicc_lab.algorithms.diagnostics import gradient_variance

    g1 = torch.tensor([1.0, 2.0, 0.0])
    g2 = torch.tensor([3.0, 2.0, 4.0])
    total, total_sq = g1 + g2, g1 * g1 + g2 * g2
    # Per coordinate unbiased variance over two samples: (a-b)^2/2 -> 2, 0, 8; summed: 10.
    assert gradient_variance(total, total_sq, 2) == pytest.approx(10.0)
    assert gradient_variance(g1, g1 * g1, 1) is None


def test_nan_rewards_are_neither_success_nor_failure():
    from bicc_lab.algorithms.diagnostics import outcome_gap_by_group

    nan = float("nan")
    # Group 0: successes and an unscorable answer, not mixed; group 1: one failure, one success.
    rewards = torch.tensor([1.0, nan, 1.0, 1.0, nan, 0.0, 1.0, nan])
    assert mixed_group_mask(rewards, 4).tolist() == [False, True]
    # Group 1's gap: success value 5 minus failure value 2 = 3; the NaN values of unscorable
    # samples do not leak into the sums.
    values = torch.tensor([1.0, nan, 1.0, 1.0, nan, 2.0, 5.0, nan])
    group = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    assert outcome_gap_by_group(values, rewards, group) == {"value": 3.0, "num_groups": 1}


def test_transfer_metrics_by_hand():
    from bicc_lab.algorithms.diagnostics import transfer_metrics

    bicc = torch.tensor([1.0, 0.0, 0.0])
    plain = torch.tensor([1.0, 1.0, 0.0])  # cosine 1/sqrt(2)
    update = torch.tensor([0.1, -0.2, 0.0])
    # Two correct completions whose log-prob gradients sum to [2, 0, 4]: (0.2 + 0) / 2 = 0.1.
    # One incorrect with gradient [0, 1, 0]: -0.2.
    out = transfer_metrics(bicc, plain, update, torch.tensor([2.0, 0.0, 4.0]), 2, torch.tensor([0.0, 1.0, 0.0]), 1)
    assert out["transfer/grad_cosine"] == pytest.approx(2**-0.5)
    assert out["transfer/plain_logp_gain_correct"] == pytest.approx(0.1)
    assert out["transfer/plain_logp_gain_incorrect"] == pytest.approx(-0.2)
    # Opposite gradients: -1. No gradient or no completion of a side: None, never NaN.
    assert transfer_metrics(bicc, -2 * bicc, update, bicc, 0, bicc, 0) == {
        "transfer/grad_cosine": pytest.approx(-1.0),
        "transfer/plain_logp_gain_correct": None,
        "transfer/plain_logp_gain_incorrect": None,
    }
    assert transfer_metrics(torch.zeros(3), plain, update, bicc, 1, bicc, 1)["transfer/grad_cosine"] is None
