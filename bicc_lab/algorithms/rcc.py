"""Reward-Confidence Correction (RCC): a covariance-shifted group baseline.

From "When Right Meets Wrong: Bilateral Context Conditioning with
Reward-Confidence Correction for GRPO" (Li, Lan, Qi; arXiv 2603.13134). The
confidence of completion o_i is the sequence-level log ratio
``delta_i = log pi_theta(o_i|q) - log pi_ref(o_i|q)`` and the group baseline
becomes ``b = mean(r) + 2 * coef * Cov(r, delta)`` with the population
covariance over the group: the first-order expansion of the
variance-minimising baseline ``E[w^2 R] / E[w^2]`` with ``w = exp(delta)``.

For binary rewards ``Cov(r, delta) = p (1 - p) (mean_{O+} delta - mean_{O-} delta)``
with ``p = n+/G``, so the baseline moves towards the rewards of the outcome the
model is more confident about.

Pure functions over tensors; ``rewards`` and ``delta`` are group-contiguous
(the G completions of a prompt are adjacent), as TRL and verl lay them out.
A NaN reward marks an unscorable completion (TRL's convention): it is left out of
its group's mean, std and covariance and gets advantage 0. A non-finite delta
leaves only that completion out of the covariance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from bicc_lab.algorithms.variants import (
    ADVANTAGE_SCALES,
    STD_KINDS,
    AdvantageScale,
    StdKind,
    group_std,
    grouped_view,
)

__all__ = [
    "RCCResult",
    "group_covariance",
    "rcc_advantages",
    "sequence_delta",
]


@dataclass(frozen=True)
class RCCResult:
    """Output of :func:`rcc_advantages`.

    Attributes:
        advantages: ``(B,)`` corrected advantages.
        baseline: ``(B,)`` the corrected baseline b of each sample's group.
        cov: ``(n_groups,)`` population Cov(r, delta) within each group.
        baseline_shift: ``(n_groups,)`` ``b - mean(r)`` after the ``max_shift`` clamp.
    """

    advantages: torch.Tensor
    baseline: torch.Tensor
    cov: torch.Tensor
    baseline_shift: torch.Tensor


def sequence_delta(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    completion_mask: torch.Tensor,
    reduction: Literal["sum", "mean"] = "sum",
) -> torch.Tensor:
    """Confidence delta_i = log pi(o_i) - log pi_ref(o_i) over active tokens, shape (B,).

    ``reduction="sum"`` is the sequence log ratio of the paper; ``"mean"``
    divides by the active-token count (clamped at 1) so long completions do not
    dominate the covariance. The result is detached: the baseline must not
    carry gradient.
    """
    if policy_logps.shape != ref_logps.shape or policy_logps.shape != completion_mask.shape:
        raise ValueError(
            "policy_logps, ref_logps and completion_mask must share one (B, T) shape; got "
            f"{tuple(policy_logps.shape)}, {tuple(ref_logps.shape)}, {tuple(completion_mask.shape)}"
        )
    mask = completion_mask.to(policy_logps.dtype)
    summed = ((policy_logps - ref_logps) * mask).sum(-1)
    if reduction == "sum":
        return summed.detach()
    if reduction == "mean":
        return (summed / mask.sum(-1).clamp(min=1.0)).detach()
    raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")


def group_covariance(x: torch.Tensor, y: torch.Tensor, group_size: int) -> torch.Tensor:
    """Population covariance of ``x`` and ``y`` within each group, shape (n_groups,).

    ``Cov = mean_g((x - mean_g x) (y - mean_g y))``: divided by G, not G - 1,
    as the RCC baseline derivation requires. Pairs where either value is NaN or
    infinite are left out (means and the divisor run over the n finite pairs), so
    one unscorable completion or overflowing delta does not make the group's
    covariance NaN; a group with no finite pair has covariance 0.
    """
    grouped_view(x, group_size, "x")
    grouped_view(y, group_size, "y")
    if x.shape != y.shape:
        raise ValueError(
            f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    gx = x.view(-1, group_size)
    gy = y.view(-1, group_size).to(gx.dtype)
    finite = torch.isfinite(gx) & torch.isfinite(gy)
    if bool(finite.all()):
        return ((gx - gx.mean(dim=1, keepdim=True)) * (gy - gy.mean(dim=1, keepdim=True))).mean(dim=1)
    count = finite.sum(dim=1, keepdim=True).clamp(min=1).to(gx.dtype)
    zero = torch.zeros((), dtype=gx.dtype, device=gx.device)
    fx, fy = torch.where(finite, gx, zero), torch.where(finite, gy, zero)
    cx = torch.where(finite, fx - fx.sum(dim=1, keepdim=True) / count, zero)
    cy = torch.where(finite, fy - fy.sum(dim=1, keepdim=True) / count, zero)
    return (cx * cy).sum(dim=1) / count.squeeze(1)


def rcc_advantages(
    rewards: torch.Tensor,
    delta: torch.Tensor,
    group_size: int,
    *,
    coef: float = 1.0,
    max_shift: float | None = None,
    scale: AdvantageScale = "group_std",
    std: StdKind = "unbiased",
    eps: float = 1e-4,
) -> RCCResult:
    """Advantages with the RCC baseline ``b = mean(r) + 2 coef Cov(r, delta)``.

    ``advantages = (r - b) / (std(r) + eps)`` for ``scale="group_std"`` and
    ``r - b`` for ``scale="none"``; ``std`` and ``eps`` mean what they mean in
    :func:`~bicc_lab.algorithms.variants.group_advantages`, and with
    ``coef=0`` the advantages are bitwise equal to it. ``max_shift`` clamps
    ``|b - mean(r)|``. ``delta`` is treated as a constant (detached).

    NaN rewards are left out of mean, std and covariance and get advantage 0;
    non-finite deltas are left out of the covariance only.

    Raises:
        ValueError: shapes differ, B is not a multiple of ``group_size``, or an
            option is not one of its choices.
    """
    if scale not in ADVANTAGE_SCALES:
        raise ValueError(f"scale must be one of {', '.join(ADVANTAGE_SCALES)}; got {scale!r}")
    if std not in STD_KINDS:
        raise ValueError(f"std must be one of {', '.join(STD_KINDS)}; got {std!r}")
    if max_shift is not None and max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    grouped_view(rewards, group_size, "rewards")
    if delta.shape != rewards.shape:
        raise ValueError(f"delta must have shape {tuple(rewards.shape)}, got {tuple(delta.shape)}")
    delta = delta.detach()

    grouped = rewards.view(-1, group_size)
    mean = torch.nanmean(grouped, dim=1)
    cov = group_covariance(rewards, delta, group_size)
    if coef == 0:
        # Exactly zero even where delta is inf/NaN, so coef=0 is the plain variant.
        shift = torch.zeros_like(mean)
    else:
        shift = 2.0 * coef * cov
    if max_shift is not None:
        shift = shift.clamp(min=-max_shift, max=max_shift)
    # Same operation order as group_advantages, so coef=0 reproduces it bitwise.
    baseline = (mean + shift).repeat_interleave(group_size)
    advantages = rewards - baseline
    if scale == "group_std":
        spread = group_std(rewards, group_size, std).repeat_interleave(group_size)
        advantages = advantages / (spread + eps)
    # TRL's rule for unscorable completions, applied as TRL applies it.
    advantages = torch.nan_to_num(advantages, nan=0.0)
    return RCCResult(advantages=advantages, baseline=baseline, cov=cov, baseline_shift=shift)
