"""Reward-Confidence Correction: the corrected baseline against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from bicc_lab.algorithms.rcc import group_covariance, rcc_advantages, sequence_delta
from bicc_lab.algorithms.variants import group_advantages

# One group of G = 5: O+ = {0, 2} (n+ = 2), O- = {1, 3, 4} (n- = 3), p = 0.4.
REWARDS = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0], dtype=torch.float64)
DELTA = torch.tensor([-2.0, -5.0, -3.0, -4.0, -6.0], dtype=torch.float64)
# mean delta over O+ = -2.5, over O- = -5, so Cov = p (1 - p) (-2.5 - -5) = 0.24 * 2.5 = 0.6.
COV = 0.6
UNBIASED_STD = math.sqrt(0.3)  # sum of squared deviations 1.2, over G - 1 = 4
POPULATION_STD = math.sqrt(0.24)


def test_binary_closed_form_baseline():
    p = 2 / 5
    closed_form_cov = p * (1 - p) * (DELTA[[0, 2]].mean() - DELTA[[1, 3, 4]].mean())
    assert closed_form_cov.item() == pytest.approx(COV, abs=1e-12)
    result = rcc_advantages(REWARDS, DELTA, 5, coef=0.1, scale="none")
    baseline = 0.4 + 2 * 0.1 * COV  # 0.52
    torch.testing.assert_close(result.cov, torch.tensor([COV], dtype=torch.float64))
    torch.testing.assert_close(result.baseline_shift, torch.tensor([0.12], dtype=torch.float64))
    torch.testing.assert_close(result.baseline, torch.full((5,), baseline, dtype=torch.float64))
    torch.testing.assert_close(
        result.advantages, torch.tensor([0.48, -0.52, 0.48, -0.52, -0.52], dtype=torch.float64)
    )


@pytest.mark.parametrize(
    ("std", "spread"), [("unbiased", UNBIASED_STD), ("population", POPULATION_STD)]
)
def test_std_scaled_advantages_divide_by_reward_std(std, spread):
    result = rcc_advantages(REWARDS, DELTA, 5, coef=0.1, std=std)
    expected = (REWARDS - 0.52) / (spread + 1e-4)
    torch.testing.assert_close(result.advantages, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("scale", ["group_std", "none"])
@pytest.mark.parametrize("std", ["unbiased", "population"])
def test_zero_coef_is_the_variant_baseline_bitwise(scale, std):
    generator = torch.Generator().manual_seed(0)
    rewards = torch.randint(0, 2, (24,), generator=generator).float()
    rewards[8:16] = torch.rand(8, generator=generator)
    delta = 10 * torch.randn(24, generator=generator)
    delta[3] = float("inf")  # even a broken confidence cannot leak through coef = 0
    result = rcc_advantages(rewards, delta, 8, coef=0.0, scale=scale, std=std)
    assert torch.equal(result.advantages, group_advantages(rewards, 8, scale=scale, std=std))
    assert torch.equal(result.baseline_shift, torch.zeros(3))


def test_constant_delta_gives_zero_shift():
    result = rcc_advantages(REWARDS, torch.full((5,), -7.25, dtype=torch.float64), 5, coef=1.0)
    assert torch.equal(result.cov, torch.zeros(1, dtype=torch.float64))
    assert torch.equal(result.baseline_shift, torch.zeros(1, dtype=torch.float64))
    assert torch.equal(result.advantages, group_advantages(REWARDS, 5))


def test_max_shift_clamps_both_signs():
    # coef = 1: the raw shift is 2 * 0.6 = 1.2, clamped to 0.5.
    up = rcc_advantages(REWARDS, DELTA, 5, coef=1.0, max_shift=0.5, scale="none")
    torch.testing.assert_close(up.baseline_shift, torch.tensor([0.5], dtype=torch.float64))
    torch.testing.assert_close(up.advantages, REWARDS - 0.9)
    down = rcc_advantages(REWARDS, -DELTA, 5, coef=1.0, max_shift=0.5, scale="none")
    torch.testing.assert_close(down.cov, torch.tensor([-COV], dtype=torch.float64))
    torch.testing.assert_close(down.baseline_shift, torch.tensor([-0.5], dtype=torch.float64))
    torch.testing.assert_close(down.advantages, REWARDS + 0.1)
    unclamped = rcc_advantages(REWARDS, DELTA, 5, coef=1.0, scale="none")
    torch.testing.assert_close(unclamped.baseline_shift, torch.tensor([1.2], dtype=torch.float64))


def test_groups_are_independent():
    other_rewards = torch.tensor([0.0, 1.0, 1.0, 1.0, 0.5], dtype=torch.float64)
    other_delta = torch.tensor([1.0, -1.0, 0.5, 2.0, 0.0], dtype=torch.float64)
    both = rcc_advantages(
        torch.cat([REWARDS, other_rewards]), torch.cat([DELTA, other_delta]), 5, coef=0.3
    )
    first = rcc_advantages(REWARDS, DELTA, 5, coef=0.3)
    second = rcc_advantages(other_rewards, other_delta, 5, coef=0.3)
    torch.testing.assert_close(both.advantages, torch.cat([first.advantages, second.advantages]))
    torch.testing.assert_close(both.cov, torch.cat([first.cov, second.cov]))
    # Changing the second group's confidence leaves the first group untouched.
    moved = rcc_advantages(
        torch.cat([REWARDS, other_rewards]), torch.cat([DELTA, other_delta * 5]), 5, coef=0.3
    )
    assert torch.equal(moved.advantages[:5], both.advantages[:5])
    assert not torch.equal(moved.advantages[5:], both.advantages[5:])


def test_group_covariance_is_population_covariance():
    x = torch.tensor([1.0, 2.0, 3.0, 0.0, 0.0, 1.0])
    y = torch.tensor([2.0, 4.0, 9.0, 5.0, 1.0, 0.0])
    # Group 1: means 2 and 5, deviations (-1,0,1)x(-3,-1,4) -> (3 + 0 + 4)/3.
    # Group 2: means 1/3 and 2, sum (x - 1/3)(y - 2) = -1 + 1/3 - 4/3 = -2 -> /3.
    torch.testing.assert_close(group_covariance(x, y, 3), torch.tensor([7 / 3, -2 / 3]))


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="not a multiple of group_size=4"):
        rcc_advantages(torch.zeros(7), torch.zeros(7), 4)
    with pytest.raises(ValueError, match="delta must have shape"):
        rcc_advantages(torch.zeros(8), torch.zeros(4), 4)
    with pytest.raises(ValueError, match="max_shift"):
        rcc_advantages(torch.zeros(4), torch.zeros(4), 4, max_shift=-1.0)


def test_sequence_delta_sum_and_mean_by_hand():
    policy = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, 0.0]], requires_grad=True)
    ref = torch.tensor([[-1.5, -1.0, -3.0], [-1.0, -2.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    # Active differences: row 0 -> 0.5 and -1.0; row 1 -> 0.5.
    summed = sequence_delta(policy, ref, mask, "sum")
    torch.testing.assert_close(summed, torch.tensor([-0.5, 0.5]))
    torch.testing.assert_close(
        sequence_delta(policy, ref, mask, "mean"), torch.tensor([-0.25, 0.5])
    )
    assert not summed.requires_grad
    with pytest.raises(ValueError, match="reduction"):
        sequence_delta(policy, ref, mask, "max")


NAN = float("nan")


def test_nan_reward_is_left_out_of_mean_and_covariance_and_gets_zero_advantage():
    # Group 0: completion 2 unscorable. Scored pairs r = [1, 0, 1], delta = [2, 0, 1]:
    # mean r = 2/3, mean delta = 1, Cov = ((1/3)(1) + (-2/3)(-1) + (1/3)(0)) / 3 = 1/3,
    # b = 2/3 + 2/3 = 4/3, A = r - 4/3 = [-1/3, -4/3, 0 (NaN reward), -1/3].
    # Group 1 has no NaN: mean 1/4, Cov = (3/4 * 3/4 + 3 * 1/16) / 4 = 3/16, b = 1/4 + 3/8 = 5/8.
    rewards = torch.tensor([1.0, 0.0, NAN, 1.0, 1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    delta = torch.tensor([2.0, 0.0, 5.0, 1.0, 1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    result = rcc_advantages(rewards, delta, 4, coef=1.0, scale="none")
    torch.testing.assert_close(result.cov, torch.tensor([1 / 3, 3 / 16], dtype=torch.float64))
    expected = torch.tensor([-1 / 3, -4 / 3, 0.0, -1 / 3, 3 / 8, -5 / 8, -5 / 8, -5 / 8], dtype=torch.float64)
    torch.testing.assert_close(result.advantages, expected, rtol=0, atol=1e-12)
    # Std-scaled: the std of the three scored rewards, sqrt(1/3) (unbiased), divides group 0.
    scaled = rcc_advantages(rewards, delta, 4, coef=1.0, scale="group_std", eps=0.0)
    root = math.sqrt(1 / 3)
    torch.testing.assert_close(
        scaled.advantages[:4],
        torch.tensor([-1 / 3 / root, -4 / 3 / root, 0.0, -1 / 3 / root], dtype=torch.float64),
        rtol=0, atol=1e-12,
    )


def test_infinite_delta_leaves_only_that_pair_out_of_the_covariance():
    # Completion 1's delta overflowed: pairs 0, 2, 3 give r = [1, 0, 1], delta = [2, 0, 1],
    # Cov = 1/3 as above. Its reward still counts in the mean (1/2): b = 1/2 + 2/3 = 7/6.
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    for bad in (math.inf, -math.inf, NAN):
        delta = torch.tensor([2.0, bad, 0.0, 1.0], dtype=torch.float64)
        result = rcc_advantages(rewards, delta, 4, coef=1.0, scale="none")
        assert result.cov.item() == pytest.approx(1 / 3, abs=1e-12)
        torch.testing.assert_close(
            result.advantages,
            torch.tensor([-1 / 6, -7 / 6, -7 / 6, -1 / 6], dtype=torch.float64),
            rtol=0, atol=1e-12,
        )


def test_group_covariance_of_a_group_without_finite_pairs_is_zero():
    x = torch.tensor([NAN, 1.0, 0.0, 1.0], dtype=torch.float64)
    y = torch.tensor([0.0, math.inf, NAN, -math.inf], dtype=torch.float64)
    assert group_covariance(x, y, 4).tolist() == [0.0]
    # A whole group unscorable: every advantage 0, nothing NaN.
    result = rcc_advantages(torch.full((4,), NAN), torch.zeros(4), 4)
    assert result.advantages.tolist() == [0.0] * 4
