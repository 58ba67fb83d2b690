"""Values of the variant registry and losses, checked against hand computations.

TRL references below restate TRL 1.16 ``GRPOTrainer`` code (advantages in
``_generate_and_score_completions``, ``nanstd`` in ``trl/trainer/utils.py``,
aggregation in ``_compute_loss``) so that the tests do not import TRL.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from bicc_lab.algorithms.variants import (
    VARIANTS,
    UnknownVariantError,
    VariantSpec,
    get_variant,
    group_advantages,
    importance_ratio,
    overlong_penalty,
    policy_loss,
    register_variant,
    variant_names,
)

ALL_VARIANTS = ["aspo", "dapo", "dr_grpo", "gmpo", "grpo", "gspo"]


def leaf(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64, requires_grad=True)


def grad_of(spec: VariantSpec, logps, old_logps, advantages, mask, **kwargs):
    """(loss, d loss / d logps, metrics) for one call of policy_loss."""
    logps = leaf(logps)
    old = None if old_logps is None else torch.tensor(old_logps, dtype=torch.float64)
    adv = torch.tensor(advantages, dtype=torch.float64)
    mask = torch.tensor(mask, dtype=torch.float64)
    loss, metrics = policy_loss(spec, logps, old, adv, mask, **kwargs)
    loss.backward()
    return loss.item(), logps.grad, metrics


# ---------------------------------------------------------------- advantages


def test_binary_rewards_population_std_gives_sqrt_advantages():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0], dtype=torch.float64)  # n+ = 2, n- = 3
    advantages = group_advantages(rewards, 5, std="population", eps=0.0)
    a_pos, a_neg = math.sqrt(3 / 2), -math.sqrt(2 / 3)
    expected = torch.tensor([a_pos, a_neg, a_neg, a_pos, a_neg], dtype=torch.float64)
    torch.testing.assert_close(advantages, expected, rtol=0, atol=1e-12)


def test_unclipped_sequence_objective_is_scaled_ratio_margin():
    generator = torch.Generator().manual_seed(0)
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    ratios = 0.5 + torch.rand(5, generator=generator, dtype=torch.float64)
    advantages = group_advantages(rewards, 5, std="population", eps=0.0)
    objective = (advantages * ratios).mean()
    success = rewards > 0.5
    margin = ratios[success].mean() - ratios[~success].mean()
    expected = math.sqrt(2 * 3) / 5 * margin
    torch.testing.assert_close(objective, expected, rtol=0, atol=1e-12)


def trl_group_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """TRL 1.16 scale_rewards='group' with its nanstd, operation for operation."""
    grouped = rewards.view(-1, group_size)
    mean = torch.nanmean(grouped, dim=1).repeat_interleave(group_size, dim=0)
    centred = torch.nanmean(grouped, dim=1, keepdim=True)
    variance = torch.nanmean((grouped - centred) ** 2, dim=1, keepdim=True)
    count = torch.sum(~torch.isnan(grouped), dim=1, keepdim=True)
    correction = count / (count - 1)
    correction = torch.where(count > 1, correction, torch.full_like(correction, float("nan")))
    variance *= correction
    std = torch.sqrt(variance).squeeze(1).repeat_interleave(group_size, dim=0)
    return (rewards - mean) / (std + 1e-4)


def test_unbiased_std_matches_hand_value_torch_std_and_trl_bitwise():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.5, 1.0, 1.0, 0.0])
    advantages = group_advantages(rewards, 4)
    # Group 1: mean 0.25, Bessel variance (0.75^2 + 3 * 0.25^2) / 3 = 0.25, std 0.5.
    # Group 2: mean 0.625, variance (0.125^2 + 2 * 0.375^2 + 0.625^2) / 3 = 0.2291666...
    std2 = math.sqrt((0.125**2 + 2 * 0.375**2 + 0.625**2) / 3)
    expected = torch.tensor(
        [0.75 / 0.5001, -0.25 / 0.5001, -0.25 / 0.5001, -0.25 / 0.5001]
        + [x / (std2 + 1e-4) for x in (-0.125, 0.375, 0.375, -0.625)]
    )
    torch.testing.assert_close(advantages, expected, rtol=1e-6, atol=1e-7)
    torch_std = rewards.view(2, 4).std(dim=1).repeat_interleave(4)
    centred = rewards - rewards.view(2, 4).mean(dim=1).repeat_interleave(4)
    torch.testing.assert_close(advantages, centred / (torch_std + 1e-4))

    generator = torch.Generator().manual_seed(1)
    for group_size in (2, 3, 8):
        for values in (
            torch.rand(group_size * 6, generator=generator),
            torch.randint(0, 2, (group_size * 6,), generator=generator).float(),
        ):
            assert torch.equal(
                group_advantages(values, group_size), trl_group_advantages(values, group_size)
            )


def test_scale_none_is_centred_rewards_and_uniform_group_gives_zero():
    rewards = torch.tensor([3.0, 1.0, 2.0, 2.0, 5.0, 5.0])
    torch.testing.assert_close(
        group_advantages(rewards, 3, scale="none"), torch.tensor([1.0, -1.0, 0.0, -2.0, 1.0, 1.0])
    )
    assert torch.equal(group_advantages(torch.ones(4), 4), torch.zeros(4))


def test_group_advantages_rejects_bad_shapes():
    with pytest.raises(ValueError, match="multiple of group_size=4"):
        group_advantages(torch.zeros(6), 4)
    with pytest.raises(ValueError, match="group_size >= 2"):
        group_advantages(torch.zeros(3), 1)


# ---------------------------------------------------------------- on-policy gradients

# B = 4 sequences of lengths 5, 3, 2, 4 (N = 14 active tokens), T = 5.
LENGTHS = [5, 3, 2, 4]
MASK = [[1.0] * n + [0.0] * (5 - n) for n in LENGTHS]
ADVANTAGES = [1.5, -0.5, 0.25, -1.25]
LOGPS = [[-0.1 * (i + 1) - 0.05 * t for t in range(5)] for i in range(4)]


def expected_on_policy_grad(per_sequence_weight):
    grad = torch.zeros(4, 5, dtype=torch.float64)
    for i, n in enumerate(LENGTHS):
        grad[i, :n] = -ADVANTAGES[i] * per_sequence_weight(i, n)
    return grad


@pytest.mark.parametrize(
    ("name", "weight", "kwargs"),
    [
        ("grpo", lambda i, n: 1 / (4 * n), {}),
        ("dr_grpo", lambda i, n: 1 / (4 * 5), {}),  # default max_completion_length = T
        ("dr_grpo", lambda i, n: 1 / (4 * 8), {"max_completion_length": 8}),
        ("dapo", lambda i, n: 1 / 14, {}),
        ("dapo", lambda i, n: 1 / 20, {"total_active_tokens": 20.0}),
        ("gspo", lambda i, n: 1 / (4 * n), {}),
        ("gmpo", lambda i, n: 1 / (4 * n), {}),
        # ASPO on-policy: r = 1, so the flipped weight 1/r is 1 as well: -A/N.
        ("aspo", lambda i, n: 1 / 14, {}),
    ],
)
def test_on_policy_gradient_is_advantage_times_aggregation_weight(name, weight, kwargs):
    loss, grad, _ = grad_of(get_variant(name), LOGPS, None, ADVANTAGES, MASK, **kwargs)
    torch.testing.assert_close(grad, expected_on_policy_grad(weight), rtol=0, atol=1e-12)


def test_on_policy_loss_values():
    # Ratio 1 everywhere: grpo gives -mean(A), dapo -sum(A n)/N.
    assert grad_of(get_variant("grpo"), LOGPS, None, ADVANTAGES, MASK)[0] == pytest.approx(0.0)
    dapo_loss = grad_of(get_variant("dapo"), LOGPS, None, ADVANTAGES, MASK)[0]
    assert dapo_loss == pytest.approx(-(1.5 * 5 - 0.5 * 3 + 0.25 * 2 - 1.25 * 4) / 14)


# ---------------------------------------------------------------- clipping


def one_token(name, log_ratio, advantage, **overrides):
    """(loss, grad) of a single active token with log r = log_ratio."""
    loss, grad, metrics = grad_of(
        get_variant(name, **overrides), [[log_ratio - 1.0]], [[-1.0]], [advantage], [[1.0]]
    )
    return loss, grad.item(), metrics


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize(
    ("ratio", "advantage", "expected_grad"),
    [
        (1.3, 1.0, 0.0),  # A > 0 above 1 + eps_high: clipped
        (1.1, 1.0, -1.1),  # inside: -A r
        (0.7, 1.0, -0.7),  # A > 0 below the region: min() keeps the unclipped term
        (0.7, -1.0, 0.0),  # A < 0 below 1 - eps_low: clipped
        (0.9, -1.0, 0.9),
        (1.3, -1.0, 1.3),  # A < 0 above the region: unclipped (no dual clip)
    ],
)
def test_token_ratio_clipping(name, ratio, advantage, expected_grad):
    _, grad, metrics = one_token(name, math.log(ratio), advantage)
    assert grad == pytest.approx(expected_grad, abs=1e-12)
    assert metrics["clip_ratio/region_mean"].item() == (1.0 if expected_grad == 0 else 0.0)


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize(
    ("ratio", "advantage", "expected_loss", "expected_grad", "dual"),
    [
        # A < 0, r = 4 above c = 3: loss min(max(4, 1.2), 3) = 3 = -c A, no gradient.
        (4.0, -1.0, 3.0, 0.0, 1.0),
        # A = -2, r = 5: capped at -c A = 6 (unclipped it would be 10).
        (5.0, -2.0, 6.0, 0.0, 1.0),
        # A < 0, r = 2 between 1 + eps and c: PPO's unclipped -A r = 2, gradient -A r = 2.
        (2.0, -1.0, 2.0, 2.0, 0.0),
        # A < 0 below 1 - eps_low: PPO's own clip, value -A (1 - 0.2) = 0.8, untouched by c.
        (0.5, -1.0, 0.8, 0.0, 0.0),
        # A > 0: the dual clip never applies; r = 4 is PPO-clipped, r = 1.1 keeps -A r.
        (1.1, 1.0, -1.1, -1.1, 0.0),
    ],
)
def test_dual_clip_bounds_negative_advantage_tokens_at_c(
    name, ratio, advantage, expected_loss, expected_grad, dual
):
    loss, grad, metrics = one_token(name, math.log(ratio), advantage, clip_ratio_c=3.0)
    assert loss == pytest.approx(expected_loss, abs=1e-12)
    assert grad == pytest.approx(expected_grad, abs=1e-12)
    assert metrics["clip_ratio/dual_mean"].item() == dual


def test_dual_clip_positive_advantage_above_c_is_ppo_clipped_only():
    # A > 0, r = 4 > c: PPO clips at 1 + eps_high (value -1.2 for grpo), the dual clip plays no part.
    loss, grad, metrics = one_token("grpo", math.log(4.0), 1.0, clip_ratio_c=3.0)
    assert (loss, grad) == (pytest.approx(-1.2, abs=1e-12), 0.0)
    assert metrics["clip_ratio/dual_mean"].item() == 0.0


def test_dual_clip_fraction_is_over_active_tokens():
    # Two sequences, A = -1 and +1; log r = log 4 on every token; 3 active tokens of 4.
    spec = get_variant("grpo", clip_ratio_c=3.0)
    logps = torch.full((2, 2), math.log(4.0), dtype=torch.float64)
    old = torch.zeros(2, 2, dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    _, metrics = policy_loss(spec, logps, old, torch.tensor([-1.0, 1.0], dtype=torch.float64), mask)
    assert metrics["clip_ratio/dual_mean"].item() == pytest.approx(2 / 3)


def test_dual_clip_off_is_plain_ppo_and_logs_no_dual_fraction():
    loss_off, grad_off, metrics_off = one_token("grpo", math.log(4.0), -1.0)
    assert (loss_off, grad_off) == (pytest.approx(4.0), pytest.approx(4.0))
    assert "clip_ratio/dual_mean" not in metrics_off


def test_dual_clip_is_validated():
    with pytest.raises(ValueError, match="clip_ratio_c must be > 1, got 1.0"):
        get_variant("grpo", clip_ratio_c=1.0)
    with pytest.raises(ValueError, match="clip_ratio_c .*applies to token-ratio variants"):
        get_variant("gspo", clip_ratio_c=3.0)


def test_dapo_clip_higher_keeps_gradient_where_grpo_clips():
    _, grpo_grad, grpo_metrics = one_token("grpo", math.log(1.25), 1.0)
    _, dapo_grad, dapo_metrics = one_token("dapo", math.log(1.25), 1.0)
    assert grpo_grad == 0.0
    assert grpo_metrics["clip_ratio/high_mean"].item() == 1.0
    assert dapo_grad == pytest.approx(-1.25, abs=1e-12)
    assert dapo_metrics["clip_ratio/high_mean"].item() == 0.0


def test_clip_metrics_are_token_fractions_like_trl():
    # Three active tokens: one high-clipped (A>0, r=1.5), one low-clipped (A<0, r=0.5),
    # one inside; a padded position with an extreme ratio must not count.
    logps = [[math.log(1.5), 0.0, 5.0], [math.log(0.5), 0.0, 0.0]]
    old = [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    mask = [[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]
    _, _, metrics = grad_of(get_variant("grpo"), logps, old, [1.0, -1.0], mask)
    assert metrics["clip_ratio/high_mean"].item() == pytest.approx(1 / 3)
    assert metrics["clip_ratio/low_mean"].item() == pytest.approx(1 / 3)
    assert metrics["clip_ratio/region_mean"].item() == pytest.approx(2 / 3)


def test_gspo_sequence_clip_zeroes_whole_sequence_where_grpo_does_not():
    # log r = [1e-3, 0]: s = exp(5e-4) = 1.000500... > 1 + 4e-4, while both token
    # ratios sit well inside GRPO's [0.8, 1.2].
    logps, old, mask = [[1e-3 - 1.0, -2.0]], [[-1.0, -2.0]], [[1.0, 1.0]]
    s = math.exp(5e-4)
    loss, grad, metrics = grad_of(get_variant("gspo"), logps, old, [1.0], mask)
    assert loss == pytest.approx(-(1 + 4e-4), abs=1e-12)
    assert torch.equal(grad, torch.zeros(1, 2, dtype=torch.float64))
    assert metrics["clip_ratio/high_mean"].item() == 1.0
    _, grpo_grad, _ = grad_of(get_variant("grpo"), logps, old, [1.0], mask)
    torch.testing.assert_close(
        grpo_grad, torch.tensor([[-math.exp(1e-3) / 2, -0.5]], dtype=torch.float64)
    )
    # A < 0: the upper bound does not bind, loss = s and each token gets s/2.
    loss, grad, _ = grad_of(get_variant("gspo"), logps, old, [-1.0], mask)
    assert loss == pytest.approx(s, abs=1e-12)
    torch.testing.assert_close(grad, torch.full((1, 2), s / 2, dtype=torch.float64))


def test_gspo_differs_from_grpo_by_hand():
    # log r = [0.2, -0.2]: GRPO clips the first token at 1.2, GSPO sees s = exp(0) = 1.
    logps, old, mask = [[0.2, -0.2]], [[0.0, 0.0]], [[1.0, 1.0]]
    grpo_loss, grpo_grad, _ = grad_of(get_variant("grpo"), logps, old, [1.0], mask)
    gspo_loss, gspo_grad, _ = grad_of(get_variant("gspo"), logps, old, [1.0], mask)
    assert grpo_loss == pytest.approx(-(1.2 + math.exp(-0.2)) / 2, abs=1e-12)
    torch.testing.assert_close(
        grpo_grad, torch.tensor([[0.0, -math.exp(-0.2) / 2]], dtype=torch.float64)
    )
    assert gspo_loss == pytest.approx(-1.0, abs=1e-12)
    torch.testing.assert_close(gspo_grad, torch.tensor([[-0.5, -0.5]], dtype=torch.float64))


def test_gmpo_log_space_clip_and_geometric_mean_by_hand():
    old = [[0.0, 0.0, 0.0]]
    mask = [[1.0, 1.0, 1.0]]
    # A > 0: log r = 0.5 is clipped to 0.4 with zero gradient; 0.1 and -0.1 are kept.
    loss, grad, metrics = grad_of(get_variant("gmpo"), [[0.5, 0.1, -0.1]], old, [1.0], mask)
    ratio = math.exp(0.4 / 3)
    assert loss == pytest.approx(-ratio, abs=1e-12)
    torch.testing.assert_close(
        grad, torch.tensor([[0.0, -ratio / 3, -ratio / 3]], dtype=torch.float64)
    )
    assert metrics["clip_ratio/high_mean"].item() == pytest.approx(1 / 3)
    # GRPO on the same tokens: -(min(e^0.5, 1.2) + e^0.1 + e^-0.1) / 3.
    grpo_loss = grad_of(get_variant("grpo"), [[0.5, 0.1, -0.1]], old, [1.0], mask)[0]
    assert grpo_loss == pytest.approx(-(1.2 + math.exp(0.1) + math.exp(-0.1)) / 3, abs=1e-12)
    assert loss != pytest.approx(grpo_loss)
    # A < 0: log r = -0.5 is raised to -0.4 with zero gradient.
    loss, grad, _ = grad_of(get_variant("gmpo"), [[-0.5, 0.1, -0.1]], old, [-1.0], mask)
    ratio = math.exp(-0.4 / 3)
    assert loss == pytest.approx(ratio, abs=1e-12)
    torch.testing.assert_close(
        grad, torch.tensor([[0.0, ratio / 3, ratio / 3]], dtype=torch.float64)
    )
    # Sign-aware: A > 0 with log r = -0.5 is not clipped (min keeps -0.5).
    loss, grad, metrics = grad_of(get_variant("gmpo"), [[-0.5, 0.1, -0.1]], old, [1.0], mask)
    ratio = math.exp(-0.5 / 3)
    assert loss == pytest.approx(-ratio, abs=1e-12)
    torch.testing.assert_close(grad, torch.full((1, 3), -ratio / 3, dtype=torch.float64))
    assert metrics["clip_ratio/region_mean"].item() == 0.0


@pytest.mark.parametrize(
    ("ratio", "advantage", "expected_loss", "expected_grad"),
    [
        (0.8, 1.0, -1 / 0.8, -1 / 0.8),  # flipped: weight 1/r, gradient A/r
        (1.1, 1.0, -1 / 1.1, -1 / 1.1),
        (1.3, 1.0, -1 / 1.2, 0.0),  # A > 0 above 1 + eps_high: masked
        (0.5, 1.0, -2.0, -2.0),  # 1/r = 2 < c = 3: not dual-clipped
        (0.25, 1.0, -3.0, -3.0),  # 1/r = 4 > 3: value capped at 3, gradient kept
        (0.9, -1.0, 0.9, 0.9),  # A < 0: the PPO rule, unflipped
        (0.7, -1.0, 0.8, 0.0),  # A < 0 below 1 - eps_low: masked
        (2.5, -1.0, 2.5, 2.5),
        (4.0, -1.0, 3.0, 3.0),  # r = 4 > c: value capped at 3, gradient kept
    ],
)
def test_aspo_flipped_ratio_and_soft_dual_clip(ratio, advantage, expected_loss, expected_grad):
    loss, grad, _ = one_token("aspo", math.log(ratio), advantage)
    assert loss == pytest.approx(expected_loss, abs=1e-12)
    assert grad == pytest.approx(expected_grad, abs=1e-12)


def test_aspo_differs_from_grpo_and_counts_dual_clips():
    grpo_loss, grpo_grad, _ = one_token("grpo", math.log(0.8), 1.0)
    aspo_loss, aspo_grad, _ = one_token("aspo", math.log(0.8), 1.0)
    assert (grpo_loss, grpo_grad) == pytest.approx((-0.8, -0.8))
    assert (aspo_loss, aspo_grad) == pytest.approx((-1.25, -1.25))
    logps = [[math.log(0.25), math.log(4.0), 0.0]]
    _, _, metrics = grad_of(get_variant("aspo"), logps, [[0.0] * 3], [1.0], [[1.0] * 3])
    # Only the A>0 token with 1/r = 4 is dual-clipped (r = 4 with A > 0 is masked instead).
    assert metrics["clip_ratio/dual_mean"].item() == pytest.approx(1 / 3)
    assert metrics["clip_ratio/high_mean"].item() == pytest.approx(1 / 3)
    # The low clip counts A < 0 tokens below 1 - eps_low (0.8) only: r = 0.7 with A < 0 is
    # clipped; r = 0.9 with A < 0 and r = 0.7 with A > 0 are not.
    logps = [[math.log(0.7)], [math.log(0.9)], [math.log(0.7)]]
    _, _, metrics = grad_of(get_variant("aspo"), logps, [[0.0]] * 3, [-1.0, -1.0, 1.0], [[1.0]] * 3)
    assert metrics["clip_ratio/low_mean"].item() == pytest.approx(1 / 3)
    assert metrics["clip_ratio/region_mean"].item() == pytest.approx(1 / 3)
    # Without the dual clip the flipped weight 1/r = 4 passes through.
    loss, grad, _ = one_token("aspo", math.log(0.25), 1.0, dual_clip_c=None)
    assert (loss, grad) == pytest.approx((-4.0, -4.0))


# ---------------------------------------------------------------- TRL parity


def trl_loss(
    per_token_logps, old, advantages, mask, loss_type, level, eps_low, eps_high, max_len, num_items
):
    """TRL 1.16 GRPOTrainer._compute_loss restated (beta=0, no vLLM, no entropy mask)."""
    advantages = advantages.unsqueeze(1)
    log_ratio = per_token_logps - old
    if level == "sequence":
        log_ratio = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    coef_1 = torch.exp(log_ratio)
    coef_2 = torch.clamp(coef_1, 1 - eps_low, 1 + eps_high)
    per_token_loss = -torch.min(coef_1 * advantages, coef_2 * advantages)
    if loss_type == "grpo":
        return ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    if loss_type == "dr_grpo":
        return (per_token_loss * mask).sum() / (per_token_loss.size(0) * max_len)
    return (per_token_loss * mask).sum() / num_items.clamp(min=1.0)


@pytest.mark.parametrize(
    ("name", "loss_type", "level"),
    [
        ("grpo", "grpo", "token"),
        ("dr_grpo", "dr_grpo", "token"),
        ("dapo", "dapo", "token"),
        ("gspo", "grpo", "sequence"),
    ],
)
def test_loss_and_gradient_match_trl_off_policy(name, loss_type, level):
    generator = torch.Generator().manual_seed(3)
    logps = -torch.rand(6, 7, generator=generator, dtype=torch.float64) * 3
    old = logps + 0.3 * torch.randn(6, 7, generator=generator, dtype=torch.float64)
    if name == "gspo":
        old = logps + 2e-4 * torch.randn(6, 7, generator=generator, dtype=torch.float64)
    advantages = torch.randn(6, generator=generator, dtype=torch.float64)
    lengths = torch.tensor([7, 4, 0, 2, 6, 1])  # includes an empty completion
    mask = (torch.arange(7) < lengths.unsqueeze(1)).to(torch.float64)
    spec = get_variant(name)
    num_items = mask.sum()

    ours_logps = logps.clone().requires_grad_(True)
    ours, _ = policy_loss(spec, ours_logps, old, advantages, mask, max_completion_length=9)
    ours.backward()
    trl_logps = logps.clone().requires_grad_(True)
    reference = trl_loss(
        trl_logps,
        old,
        advantages,
        mask,
        loss_type,
        level,
        spec.epsilon_low,
        spec.epsilon_high,
        9,
        num_items,
    )
    reference.backward()
    assert torch.equal(ours, reference)
    assert torch.equal(ours_logps.grad, trl_logps.grad)


def test_importance_ratio_sequence_level_is_masked_mean_log_ratio():
    logps = torch.tensor([[-1.0, -2.0, -9.0]])
    old = torch.tensor([[-1.5, -1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    torch.testing.assert_close(
        importance_ratio(logps, old, mask, level="sequence"), torch.tensor([[math.exp(-0.25)]])
    )
    torch.testing.assert_close(importance_ratio(logps, old, mask), torch.exp(logps - old))


def test_token_level_advantages_are_accepted():
    adv_tokens = torch.tensor([ADVANTAGES], dtype=torch.float64).T.expand(4, 5).contiguous()
    for name in ALL_VARIANTS:
        spec = get_variant(name)
        logps = torch.tensor(LOGPS, dtype=torch.float64)
        mask = torch.tensor(MASK, dtype=torch.float64)
        per_seq, _ = policy_loss(
            spec, logps, None, torch.tensor(ADVANTAGES, dtype=torch.float64), mask
        )
        per_tok, _ = policy_loss(spec, logps, None, adv_tokens, mask)
        torch.testing.assert_close(per_seq, per_tok)


# ---------------------------------------------------------------- registry


def test_registry_defaults_follow_the_papers():
    assert variant_names() == ALL_VARIANTS
    grpo, dr_grpo, dapo = VARIANTS["grpo"], VARIANTS["dr_grpo"], VARIANTS["dapo"]
    gspo, gmpo, aspo = VARIANTS["gspo"], VARIANTS["gmpo"], VARIANTS["aspo"]
    assert (grpo.advantage_scale, grpo.ratio, grpo.epsilon_low, grpo.aggregation) == (
        "group_std",
        "token",
        0.2,
        "seq_mean_token_mean",
    )
    assert (dr_grpo.advantage_scale, dr_grpo.aggregation) == ("none", "seq_mean_token_sum_norm")
    assert (dapo.epsilon_low, dapo.epsilon_high, dapo.aggregation) == (0.2, 0.28, "token_mean")
    assert dapo.dynamic_sampling and dapo.overlong_buffer_tokens(20480) == 4096
    assert (gspo.ratio, gspo.epsilon_low, gspo.epsilon_high) == ("sequence", 3e-4, 4e-4)
    assert (gmpo.ratio, gmpo.clip, gmpo.epsilon_low, gmpo.epsilon_high) == (
        "geo_mean",
        "log_space",
        0.4,
        0.4,
    )
    assert (aspo.ratio, aspo.clip, aspo.dual_clip_c, aspo.aggregation) == (
        "flipped_positive",
        "soft_dual",
        3.0,
        "token_mean",
    )
    assert grpo.overlong_buffer_tokens(512) is None


def test_unknown_variant_suggests_closest_and_lists_valid():
    with pytest.raises(UnknownVariantError) as info:
        get_variant("drgrpo")
    message = str(info.value)
    assert message == (
        "unknown variant 'drgrpo'; did you mean 'dr_grpo'? valid: aspo, dapo, dr_grpo, gmpo, grpo, gspo"
    )
    assert isinstance(info.value, ValueError)
    with pytest.raises(ValueError, match=r"^unknown variant 'zzz'; valid: aspo, dapo"):
        get_variant("zzz")


def test_overrides_replace_fields_and_reject_unknown_ones():
    spec = get_variant("grpo", epsilon_high=0.28, aggregation="token_mean")
    assert (spec.epsilon_high, spec.aggregation, spec.name) == (0.28, "token_mean", "grpo")
    assert VARIANTS["grpo"].epsilon_high == 0.2
    with pytest.raises(
        ValueError, match=r"unknown variant field\(s\) epsilon for 'grpo'; valid: name, paper"
    ):
        get_variant("grpo", epsilon=0.3)
    with pytest.raises(ValueError, match="ratio 'geo_mean' goes with clip 'log_space'"):
        get_variant("grpo", ratio="geo_mean")
    with pytest.raises(ValueError, match="aggregation must be one of"):
        get_variant("grpo", aggregation="mean")
    # Clip widths are >= 0: zero (no trust region on that side) is allowed, a negative width not.
    assert get_variant("grpo", epsilon_high=0.0).epsilon_high == 0.0
    with pytest.raises(ValueError, match="epsilon_low must be >= 0, got -0.1"):
        get_variant("grpo", epsilon_low=-0.1)
    # Specs are frozen: the registered instance is shared by every run of a sweep process, so
    # an override must be a copy (as above), never an edit of the registered one.
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.epsilon_low = 0.3


def test_register_variant_refuses_silent_redefinition():
    with pytest.raises(ValueError, match="already registered"):
        register_variant(VariantSpec(name="grpo", epsilon_low=0.1))
    spec = register_variant(VariantSpec(name="test_only_variant", paper="0000.00000"))
    try:
        assert get_variant("test_only_variant") is spec
    finally:
        del VARIANTS["test_only_variant"]


# ---------------------------------------------------------------- DAPO overlong shaping


def test_overlong_penalty_by_hand():
    lengths = torch.tensor([10, 16, 17, 18, 20, 25])
    penalty = overlong_penalty(lengths, max_completion_length=20, overlong_buffer=4)
    torch.testing.assert_close(penalty, torch.tensor([0.0, 0.0, -0.25, -0.5, -1.0, -1.0]))
    half = overlong_penalty(lengths, 20, 4, penalty_factor=0.5)
    torch.testing.assert_close(half, torch.tensor([0.0, 0.0, -0.125, -0.25, -0.5, -0.5]))
    with pytest.raises(ValueError, match="overlong_buffer"):
        overlong_penalty(lengths, 20, 0)


def test_experiment_level_dual_clip_reaches_token_ratio_variants_only():
    from bicc_lab.algorithms.variants import resolve_variant

    for name in ("grpo", "dr_grpo", "dapo"):
        assert resolve_variant(name, {}, clip_ratio_c=3.0).clip_ratio_c == 3.0
    # verl applies clip_ratio_c in its vanilla PPO loss only: the other variants keep theirs.
    for name in ("gspo", "gmpo", "aspo"):
        assert resolve_variant(name, {}, clip_ratio_c=3.0) == VARIANTS[name]
    assert resolve_variant("grpo", {"clip_ratio_c": 10.0}, clip_ratio_c=3.0).clip_ratio_c == 10.0
    assert resolve_variant("grpo", {}, clip_ratio_c=None) == VARIANTS["grpo"]


def test_nan_reward_is_left_out_of_the_group_and_gets_advantage_zero():
    nan = float("nan")
    # Group 0: scored rewards [1, 0, 0]: mean 1/3, unbiased std sqrt((4/9 + 1/9 + 1/9) / 2) = 1/sqrt(3).
    # Group 1: one scored reward, whose unbiased std is undefined: TRL zeroes all its advantages.
    rewards = torch.tensor([1.0, nan, 0.0, 0.0, nan, nan, nan, 1.0], dtype=torch.float64)
    advantages = group_advantages(rewards, 4, eps=0.0)
    root3 = math.sqrt(3)
    expected = torch.tensor([2 / root3, 0.0, -1 / root3, -1 / root3, 0, 0, 0, 0], dtype=torch.float64)
    torch.testing.assert_close(advantages, expected, rtol=0, atol=1e-12)
    centred = group_advantages(rewards, 4, scale="none")
    torch.testing.assert_close(
        centred[:4], torch.tensor([2 / 3, 0.0, -1 / 3, -1 / 3], dtype=torch.float64), rtol=0, atol=1e-12
    )


@pytest.mark.parametrize("name", ["grpo", "dapo", "dr_grpo"])
def test_huge_log_ratio_gives_verls_zero_gradient_not_nan(name):
    """A log ratio past float32's exp range (~88.7) is clamped at ±20 before exp, as in
    verl: under the dual clip the token's loss is -c·A with no gradient, not NaN."""
    logps = torch.tensor([[100.0, 0.0]], dtype=torch.float32, requires_grad=True)
    old = torch.zeros(1, 2)
    loss, _ = policy_loss(get_variant(name, clip_ratio_c=3.0), logps, old, torch.tensor([-1.0]), torch.ones(1, 2))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logps.grad).all()
    assert logps.grad[0, 0].item() == 0.0  # clamped and dual-clipped: no gradient, as in verl
    assert importance_ratio(torch.tensor([[100.0, -100.0]]), torch.zeros(1, 2), torch.ones(1, 2)).tolist() == [
        [pytest.approx(math.exp(20.0), rel=1e-6), pytest.approx(math.exp(-20.0), rel=1e-6)]
    ]
