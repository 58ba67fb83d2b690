"""Per-step diagnostics of the contrastive view of GRPO, BICC and RCC.

With binary rewards the unclipped GRPO objective of a group is
``(sqrt(n+ n-)/G) * (mean_{O+} rho - mean_{O-} rho)`` (Li, Lan, Qi, arXiv
2603.13134): GRPO widens the margin between the mean ratio of correct and of
incorrect completions. These functions log that margin and its neighbours.

Only *mixed* groups (at least one success and one failure) have a margin, so
group-averaged quantities come back as a :class:`GroupStat` dict: ``value``
is ``None`` when no group qualifies, never NaN, and ``num_groups`` says how
many groups the value averages.

Inputs are group-contiguous ``(B,)`` tensors; a completion succeeds when its
reward is strictly greater than ``success_threshold`` (BICC's partition rule)
and fails when it is at most the threshold. A NaN reward (unscorable) does
neither and is left out of every outcome split.
"""

from __future__ import annotations

from typing import TypedDict

import torch

from bicc_lab.algorithms.rcc import group_covariance
from bicc_lab.algorithms.variants import grouped_view

__all__ = [
    "GroupStat",
    "context_tokens_mean",
    "contrastive_margin",
    "cov_r_delta",
    "frac_conditioned_groups",
    "logp_gap",
    "mixed_group_mask",
    "outcome_gap_by_group",
    "transfer_metrics",
]


class GroupStat(TypedDict):
    """A mean over qualifying groups: ``value`` is None when ``num_groups`` is 0."""

    value: float | None
    num_groups: int


def mixed_group_mask(
    rewards: torch.Tensor, group_size: int, success_threshold: float = 0.5
) -> torch.Tensor:
    """``(n_groups,)`` bool: the group has at least one success and one failure.

    NaN rewards count as neither, so a group of successes and unscorable answers is not
    mixed. This is also DAPO's dynamic-sampling rule: a group that is not mixed by task
    outcome carries no signal.
    """
    grouped = grouped_view(rewards, group_size, "rewards")
    success = grouped > success_threshold
    failure = grouped <= success_threshold
    return success.any(dim=1) & failure.any(dim=1)


def _outcome_gap(
    values: torch.Tensor, rewards: torch.Tensor, group_size: int, success_threshold: float
) -> GroupStat:
    grouped_view(values, group_size, "values")
    grouped_view(rewards, group_size, "rewards")
    group_index = torch.arange(values.numel(), device=values.device) // group_size
    return outcome_gap_by_group(values, rewards, group_index, success_threshold)


def outcome_gap_by_group(
    values: torch.Tensor,
    rewards: torch.Tensor,
    group_index: torch.Tensor,
    success_threshold: float = 0.5,
) -> GroupStat:
    """Mean over mixed groups of ``mean_{O+} value - mean_{O-} value``, groups given by id.

    Unlike the group-contiguous functions, samples may come in any order and a group may
    be partly present (a trainer sees shuffled micro-batches): a group counts when the
    samples present include at least one success and one failure.
    """
    values = values.detach().reshape(-1).to(torch.float64)
    flat_rewards = rewards.reshape(-1)
    success = (flat_rewards > success_threshold).to(torch.float64)
    failure = (flat_rewards <= success_threshold).to(torch.float64)  # NaN: neither
    _, dense = torch.unique(group_index.reshape(-1), return_inverse=True)
    n_groups = int(dense.max()) + 1 if dense.numel() else 0
    zeros = torch.zeros(n_groups, dtype=torch.float64, device=values.device)
    n_success = zeros.index_add(0, dense, success)
    n_failure = zeros.index_add(0, dense, failure)
    # where(), not a product: the value of an unscorable sample may itself be NaN.
    sum_success = zeros.index_add(0, dense, torch.where(success > 0, values, 0.0))
    sum_failure = zeros.index_add(0, dense, torch.where(failure > 0, values, 0.0))
    mixed = (n_success > 0) & (n_failure > 0)
    num_mixed = int(mixed.sum())
    if num_mixed == 0:
        return GroupStat(value=None, num_groups=0)
    gap = sum_success[mixed] / n_success[mixed] - sum_failure[mixed] / n_failure[mixed]
    return GroupStat(value=float(gap.mean()), num_groups=num_mixed)


def contrastive_margin(
    seq_ratios: torch.Tensor,
    rewards: torch.Tensor,
    group_size: int,
    success_threshold: float = 0.5,
) -> GroupStat:
    """Mean over mixed groups of ``mean_{O+} rho - mean_{O-} rho``.

    ``seq_ratios`` are sequence-level ratios ``rho_i = pi_theta(o_i)/pi_old(o_i)``,
    shape (B,). The value is ``None`` when the batch has no mixed group.
    """
    return _outcome_gap(seq_ratios, rewards, group_size, success_threshold)


def logp_gap(
    seq_logps: torch.Tensor,
    rewards: torch.Tensor,
    group_size: int,
    success_threshold: float = 0.5,
) -> GroupStat:
    """Mean over mixed groups of ``mean_{O+} log pi(o) - mean_{O-} log pi(o)``.

    For G = 2 this is DPO's core term ``log pi(o+) - log pi(o-)``.
    """
    return _outcome_gap(seq_logps, rewards, group_size, success_threshold)


def cov_r_delta(
    rewards: torch.Tensor,
    delta: torch.Tensor,
    group_size: int,
    *,
    mixed_only: bool = False,
    success_threshold: float = 0.5,
) -> GroupStat:
    """Mean per-group population Cov(r, delta), the quantity RCC shifts the baseline by.

    By default every group counts (uniform-reward groups contribute 0); with
    ``mixed_only=True`` only mixed groups do. The paper reports this growing
    during training (about 0.07 for Qwen3-4B) without saying which average it
    takes, hence the switch.
    """
    cov = group_covariance(rewards, delta.detach(), group_size).to(torch.float64)
    if mixed_only:
        cov = cov[mixed_group_mask(rewards, group_size, success_threshold)]
    if cov.numel() == 0:
        return GroupStat(value=None, num_groups=0)
    return GroupStat(value=float(cov.mean()), num_groups=int(cov.numel()))


def frac_conditioned_groups(flags: torch.Tensor, group_size: int) -> float:
    """Fraction of groups in which at least one completion was BICC-conditioned.

    ``flags`` is ``(B,)`` bool (or 0/1), one per completion.
    """
    grouped = grouped_view(flags, group_size, "flags").bool()
    return float(grouped.any(dim=1).to(torch.float64).mean())


def context_tokens_mean(context_tokens: torch.Tensor, flags: torch.Tensor) -> float | None:
    """Mean number of BICC context tokens over conditioned completions, or None if none.

    ``context_tokens`` is ``(B,)`` (tokens of opposite-outcome traces packed into
    each completion's prompt) and ``flags`` ``(B,)`` marks conditioned ones;
    unconditioned completions (context 0) would drag the mean down, so they
    are left out.
    """
    if context_tokens.shape != flags.shape or context_tokens.dim() != 1:
        raise ValueError(
            f"context_tokens and flags must both be (B,); got {tuple(context_tokens.shape)} "
            f"and {tuple(flags.shape)}"
        )
    selected = context_tokens[flags.bool()]
    if selected.numel() == 0:
        return None
    return float(selected.to(torch.float64).mean())


def gradient_variance(total: torch.Tensor, total_sq: torch.Tensor, n: int) -> float | None:
    """Total variance of per-micro-batch gradients, ``sum_j Var_i(g_ij)`` (unbiased over i).

    ``total`` and ``total_sq`` are the running sum and sum of squares of the n flattened
    micro-batch gradients. This is ``E||g - g_bar||^2``, the quantity a lower-variance
    baseline (RCC) should shrink; None when n < 2.
    """
    if n < 2:
        return None
    mean = total / n
    return float(((total_sq - n * mean * mean) / (n - 1)).clamp(min=0).sum())


def transfer_metrics(
    bicc_grad: torch.Tensor,
    plain_grad: torch.Tensor,
    update: torch.Tensor,
    correct_logp_grad_sum: torch.Tensor,
    num_correct: int,
    incorrect_logp_grad_sum: torch.Tensor,
    num_incorrect: int,
) -> dict[str, float | None]:
    """How a BICC update carries over to the plain prompt, from flattened parameter vectors.

    - ``transfer/grad_cosine``: cosine between the BICC loss gradient and the plain-prompt
      GRPO loss gradient of the same batch (equal to the cosine of the two update
      directions of plain gradient descent); None when either gradient is 0.
    - ``transfer/plain_logp_gain_correct``: ``(sum_c grad log pi(o_c|q)) . update / n_c``,
      the first-order change of log pi(o|q) under the plain prompt, in nats per sequence,
      averaged over the correct completions c, that the parameter change ``update`` makes;
      None when there is no correct completion. ``..._incorrect`` likewise.

    ``update`` is whatever the caller measures as the step (the trainer passes the
    optimizer's actual parameter change, Adam's rescaling included).
    """
    a, b = bicc_grad.double(), plain_grad.double()
    norms = a.norm() * b.norm()
    step = update.double()
    out: dict[str, float | None] = {
        "transfer/grad_cosine": float(a @ b / norms) if norms > 0 else None,
        "transfer/plain_logp_gain_correct": None,
        "transfer/plain_logp_gain_incorrect": None,
    }
    if num_correct > 0:
        out["transfer/plain_logp_gain_correct"] = float(correct_logp_grad_sum.double() @ step) / num_correct
    if num_incorrect > 0:
        out["transfer/plain_logp_gain_incorrect"] = float(incorrect_logp_grad_sum.double() @ step) / num_incorrect
    return out
