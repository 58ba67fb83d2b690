"""GRPO-family losses: pure functions over tensors, and the table of policy losses.

The variants themselves (:class:`VariantSpec`, :data:`VARIANTS`,
:func:`register_variant`) live in :mod:`bicc_lab.algorithms.registry`, which needs
no torch; they are re-exported here. A variant's per-token loss is the function
registered under its ``loss_name`` with :func:`register_policy_loss`, as verl's
``core_algos.py`` registers its policy losses; :func:`policy_loss` looks it up,
applies optional token weights and aggregates. Nothing here knows about a
trainer, a model or a process group.

Shapes used throughout: ``B`` sequences (completions), ``T`` completion
positions (right-padded), ``G`` completions per prompt (``group_size``).
``logps``/``old_logps`` are per-token log-probabilities ``(B, T)`` of the sampled
tokens, ``completion_mask`` is ``(B, T)`` with 1 on the tokens that count.

A registered policy loss is called as
``loss_fn(spec, logps, old_logps, advantages, completion_mask)`` with ``old_logps``
filled in and ``advantages`` of shape ``(B, 1)`` or ``(B, T)``, and returns
``(per_token_loss (B, T), metrics)`` (metrics: detached 0-d tensors).

Gradient accumulation: every loss here is the loss of the tensors passed in.
Dividing by the number of accumulation steps (TRL 1.16 does it after the
``grpo`` and ``dr_grpo`` aggregations; for ``dapo`` it folds it into the
token-count normaliser, which a caller passes as ``total_active_tokens``) is
the trainer's job.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Literal

import torch

from bicc_lab.algorithms.registry import (
    ADVANTAGE_SCALES,
    AGGREGATIONS,
    CLIP_KINDS,
    RATIO_KINDS,
    STD_KINDS,
    VARIANTS,
    AdvantageScale,
    Aggregation,
    StdKind,
    UnknownVariantError,
    VariantSpec,
    check_choice,
    get_variant,
    register_variant,
    resolve_variant,
    variant_names,
)
from bicc_lab.errors import UserError

__all__ = [
    "ADVANTAGE_SCALES",
    "AGGREGATIONS",
    "CLIP_KINDS",
    "POLICY_LOSSES",
    "RATIO_KINDS",
    "STD_KINDS",
    "VARIANTS",
    "PolicyLossFn",
    "UnknownPolicyLossError",
    "UnknownVariantError",
    "VariantSpec",
    "aggregate_loss",
    "aspo_per_token_loss",
    "get_policy_loss",
    "get_variant",
    "gmpo_per_token_loss",
    "group_advantages",
    "group_std",
    "importance_ratio",
    "log_importance_ratio",
    "masked_mean",
    "overlong_penalty",
    "policy_loss",
    "ppo_per_token_loss",
    "register_policy_loss",
    "register_variant",
    "resolve_variant",
    "sequence_logps",
    "variant_names",
]

# ----------------------------------------------------------------------------
# Advantages and reward shaping
# ----------------------------------------------------------------------------


def grouped_view(values: torch.Tensor, group_size: int, what: str) -> torch.Tensor:
    """``(B,)`` -> ``(B/G, G)``, with a clear error when B is not whole groups."""
    if values.dim() != 1:
        raise ValueError(f"{what} must have shape (B,), got {tuple(values.shape)}")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if values.numel() % group_size != 0:
        raise ValueError(
            f"{what} has {values.numel()} entries, not a multiple of group_size={group_size}"
        )
    return values.view(-1, group_size)


def group_std(rewards: torch.Tensor, group_size: int, std: StdKind = "unbiased") -> torch.Tensor:
    """Per-group standard deviation of ``rewards``, shape (n_groups,).

    ``unbiased`` applies Bessel's correction (TRL's ``nanstd``, verl's
    ``torch.std``); ``population`` divides by G, the normalisation under which
    binary rewards give advantages sqrt(n-/n+) and -sqrt(n+/n-).
    """
    grouped = grouped_view(rewards, group_size, "rewards")
    check_choice("std", std, STD_KINDS)
    if std == "unbiased" and group_size < 2:
        raise ValueError("std='unbiased' needs group_size >= 2")
    # The operations of TRL 1.16 ``trl.trainer.utils.nanstd``, in its order:
    # torch.std rounds differently, and TRL parity is meant bit for bit.
    mean = torch.nanmean(grouped, dim=1, keepdim=True)
    variance = torch.nanmean((grouped - mean) ** 2, dim=1, keepdim=True)
    if std == "unbiased":
        count = torch.sum(~torch.isnan(grouped), dim=1, keepdim=True)
        variance *= count / (count - 1)
    return torch.sqrt(variance).squeeze(1)


def group_advantages(
    rewards: torch.Tensor,
    group_size: int,
    *,
    scale: AdvantageScale = "group_std",
    std: StdKind = "unbiased",
    eps: float = 1e-4,
) -> torch.Tensor:
    """Group-relative advantages, shape (B,).

    ``A_i = (r_i - mean_g) / (std_g + eps)`` for ``scale="group_std"``, and
    ``r_i - mean_g`` for ``scale="none"`` (Dr.GRPO, arXiv 2503.20783). The
    defaults reproduce TRL 1.16 ``scale_rewards="group"``: Bessel-corrected std
    and ``eps = 1e-4`` added to the std, not under the square root, computed
    with TRL's operations so that the result is bitwise equal. ``rewards`` must
    be group-contiguous (the G completions of a prompt in a row). A NaN reward
    (an unscorable completion) is left out of its group's mean and std and gets
    advantage 0, as in TRL; so does a group with a single scored completion,
    whose unbiased std is undefined.
    """
    check_choice("scale", scale, ADVANTAGE_SCALES)
    grouped = grouped_view(rewards, group_size, "rewards")
    mean = torch.nanmean(grouped, dim=1).repeat_interleave(group_size)
    advantages = rewards - mean
    if scale == "group_std":
        spread = group_std(rewards, group_size, std).repeat_interleave(group_size)
        advantages = advantages / (spread + eps)
    return torch.nan_to_num(advantages, nan=0.0)


def overlong_penalty(
    completion_lengths: torch.Tensor,
    max_completion_length: int,
    overlong_buffer: int,
    *,
    penalty_factor: float = 1.0,
) -> torch.Tensor:
    """DAPO soft overlong punishment (arXiv 2503.14476, eq. 13), one value per sample.

    With ``L_max = max_completion_length`` and ``L_cache = overlong_buffer``:
    0 for ``|y| <= L_max - L_cache``; ``((L_max - L_cache) - |y|) / L_cache``
    inside the buffer; -1 beyond ``L_max``. The result is added to the task
    reward. ``penalty_factor`` scales it (verl's ``overlong_buffer.penalty_factor``;
    the paper uses 1).
    """
    if not 0 < overlong_buffer <= max_completion_length:
        raise ValueError(
            f"overlong_buffer must be in (0, max_completion_length={max_completion_length}], "
            f"got {overlong_buffer}"
        )
    lengths = completion_lengths.to(torch.get_default_dtype())
    expected = max_completion_length - overlong_buffer
    penalty = ((expected - lengths) / overlong_buffer).clamp(min=-1.0, max=0.0)
    return penalty * penalty_factor


# ----------------------------------------------------------------------------
# Ratios
# ----------------------------------------------------------------------------


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Mean of ``values`` over ``mask`` along ``dim``; an empty row gives 0, not NaN."""
    mask = mask.to(values.dtype)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def sequence_logps(logps: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """log pi(o_i | q): the sum of per-token log-probs over active tokens, shape (B,)."""
    return (logps * completion_mask.to(logps.dtype)).sum(-1)


LOG_RATIO_BOUND = 20.0
"""|log r| beyond this is clamped before ``exp`` (verl's bound): no gradient flows there."""


def log_importance_ratio(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    level: Literal["token", "sequence"] = "token",
) -> torch.Tensor:
    """log r: ``(B, T)`` per token, or ``(B, 1)`` masked mean per sequence.

    The sequence form is GSPO's length-normalised log ratio (arXiv 2507.18071)
    exactly as TRL 1.16 computes it: sum over active tokens divided by the
    active-token count clamped at 1.
    """
    log_ratio = logps - old_logps
    if level == "token":
        return log_ratio
    if level == "sequence":
        mask = completion_mask.to(logps.dtype)
        return (log_ratio * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1.0)
    raise ValueError(f"level must be 'token' or 'sequence', got {level!r}")


def importance_ratio(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    level: Literal["token", "sequence"] = "token",
) -> torch.Tensor:
    """pi_theta / pi_old per token ``(B, T)`` or per sequence ``(B, 1)``.

    The log ratio is clamped to ±``LOG_RATIO_BOUND`` before ``exp``, as verl's
    ``compute_policy_loss`` does: above ~88.7 float32's ``exp`` overflows to inf, and
    under the dual clip inf·0 turned into a NaN gradient where verl's is 0.
    """
    log_ratio = log_importance_ratio(logps, old_logps, completion_mask, level=level)
    return torch.exp(log_ratio.clamp(-LOG_RATIO_BOUND, LOG_RATIO_BOUND))


# ----------------------------------------------------------------------------
# Per-token losses. Each returns (per_token_loss (B, T), metrics).
# ----------------------------------------------------------------------------

Metrics = dict[str, torch.Tensor]
PolicyLossFn = Callable[
    [VariantSpec, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    tuple[torch.Tensor, Metrics],
]

POLICY_LOSSES: dict[str, PolicyLossFn] = {}
"""Per-token policy losses by name; a variant's ``loss_name`` picks one."""


class UnknownPolicyLossError(UserError, ValueError):
    """A variant names a policy loss that no imported module registered."""


def register_policy_loss(name: str) -> Callable[[PolicyLossFn], PolicyLossFn]:
    """Decorator: register ``loss_fn(spec, logps, old_logps, advantages, mask)`` as ``name``.

    A second function under a taken name raises, so that two modules cannot
    silently disagree about what a loss name means.
    """

    def decorator(loss_fn: PolicyLossFn) -> PolicyLossFn:
        if POLICY_LOSSES.get(name, loss_fn) is not loss_fn:
            raise ValueError(f"policy loss {name!r} is already registered: {POLICY_LOSSES[name]}")
        POLICY_LOSSES[name] = loss_fn
        return loss_fn

    return decorator


def get_policy_loss(name: str) -> PolicyLossFn:
    """The policy loss registered as ``name``; the error lists the registered ones."""
    if name not in POLICY_LOSSES:
        valid = sorted(POLICY_LOSSES)
        close = difflib.get_close_matches(name, valid, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UnknownPolicyLossError(
            f"unknown policy loss {name!r}; {hint}registered: {', '.join(valid)} "
            "(a plugin module registers more with register_policy_loss)"
        )
    return POLICY_LOSSES[name]


def _token_fraction(flags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(torch.float32)
    return ((flags.to(torch.float32) * mask).sum() / mask.sum().clamp(min=1.0)).detach()


def ppo_per_token_loss(
    coef: torch.Tensor,
    advantages: torch.Tensor,
    completion_mask: torch.Tensor,
    epsilon_low: float,
    epsilon_high: float,
    clip_ratio_c: float | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """PPO clipped surrogate ``-min(r A, clip(r, 1-eps_low, 1+eps_high) A)``.

    ``coef`` is the token ratio ``(B, T)`` or the GSPO sequence ratio ``(B, 1)``;
    ``advantages`` is ``(B, 1)`` or ``(B, T)``. Clip fractions follow TRL 1.16:
    low = ratio below 1-eps_low with A<0, high = above 1+eps_high with A>0,
    averaged over active tokens (or over sequences for a ``(B, 1)`` ratio).

    ``clip_ratio_c`` is verl's dual clip (``compute_policy_loss``): for A < 0 the
    loss becomes ``min(max(-A r, -A clip(r)), -A c)``, i.e. bounded at ``-c A``,
    with no gradient where ``r > c``. ``clip_ratio/dual_mean`` (logged only when
    it is on) is the fraction of active tokens held at that bound, verl's
    ``pg_clipfrac_lower``.
    """
    clipped = torch.clamp(coef, 1 - epsilon_low, 1 + epsilon_high)
    per_token_loss = -torch.min(coef * advantages, clipped * advantages)
    is_dual = None
    if clip_ratio_c is not None:
        bound = -advantages * clip_ratio_c
        negative = advantages < 0
        is_dual = negative & (per_token_loss > bound)
        per_token_loss = torch.where(negative, torch.minimum(per_token_loss, bound), per_token_loss)
    is_low = (coef < 1 - epsilon_low) & (advantages < 0)
    is_high = (coef > 1 + epsilon_high) & (advantages > 0)
    if is_low.shape[-1] == 1:
        # A sequence-level ratio: TRL averages these flags over sequences.
        metrics = {
            "clip_ratio/low_mean": is_low.float().mean().detach(),
            "clip_ratio/high_mean": is_high.float().mean().detach(),
            "clip_ratio/region_mean": (is_low | is_high).float().mean().detach(),
        }
    else:
        metrics = {
            "clip_ratio/low_mean": _token_fraction(is_low, completion_mask),
            "clip_ratio/high_mean": _token_fraction(is_high, completion_mask),
            "clip_ratio/region_mean": _token_fraction(is_low | is_high, completion_mask),
        }
    if is_dual is not None:
        metrics["clip_ratio/dual_mean"] = _token_fraction(
            is_dual.expand_as(completion_mask), completion_mask
        )
    return per_token_loss.expand_as(completion_mask), metrics


def gmpo_per_token_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    completion_mask: torch.Tensor,
    epsilon_low: float,
    epsilon_high: float,
) -> tuple[torch.Tensor, Metrics]:
    """GMPO (arXiv 2507.20673): ``-A * exp(mean_t clip_sgn(log r_t))`` per sequence.

    Each token's log ratio is clipped to ``[-epsilon_low, epsilon_high]``
    sign-aware, as in the official code (github.com/callsys/GMPO,
    ``train_zero_math_gmpo.py``: ``sgn_advantage``/``torch.max`` on the signed
    log ratio) and verl's ``geo_mean`` loss: ``min(log r, clip(log r))`` when
    A > 0 and ``max(...)`` when A < 0, so only tokens that already moved in the
    advantage's direction beyond the bound lose their gradient. The per-sequence
    loss is returned broadcast over the sequence's tokens so that any aggregation
    applies. A ``(B, T)`` advantage is reduced to its masked mean per sequence
    (as verl does); GMPO itself is defined for sequence advantages.
    """
    mask = completion_mask.to(logps.dtype)
    seq_adv = advantages.squeeze(-1) if advantages.shape[-1] == 1 else masked_mean(advantages, mask)
    sign = torch.sign(seq_adv).unsqueeze(-1)
    log_ratio = logps - old_logps
    clamped = log_ratio.clamp(-epsilon_low, epsilon_high)
    clipped_log_ratio = sign * torch.minimum(sign * log_ratio, sign * clamped)
    seq_log_ratio = (clipped_log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
    seq_loss = -seq_adv * torch.exp(seq_log_ratio)
    is_low = (log_ratio < -epsilon_low) & (sign < 0)
    is_high = (log_ratio > epsilon_high) & (sign > 0)
    metrics = {
        "clip_ratio/low_mean": _token_fraction(is_low, completion_mask),
        "clip_ratio/high_mean": _token_fraction(is_high, completion_mask),
        "clip_ratio/region_mean": _token_fraction(is_low | is_high, completion_mask),
    }
    return seq_loss.unsqueeze(-1).expand_as(logps), metrics


# The authors' code clamps log r to +-20 before exp; without it a flipped weight
# 1/r overflows for tokens whose probability collapsed.
_ASPO_LOG_RATIO_BOUND = LOG_RATIO_BOUND


def aspo_per_token_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    completion_mask: torch.Tensor,
    epsilon_low: float,
    epsilon_high: float,
    dual_clip_c: float | None,
) -> tuple[torch.Tensor, Metrics]:
    """ASPO (arXiv 2510.06062): flipped weights for A>0 tokens plus a soft dual clip.

    Read from the paper's method section (token masking, weight flipping with
    ``pi_old * pi / sg(pi^2)``, dual clipping "that only clips the value and
    retains the gradient", after CISPO) and the authors' verl code
    (``compute_policy_loss_archer`` in the Archer2.0 code, mirrored at
    github.com/zyh1999/ASPO ``verl/trainer/ppo/core_algos.py``). Per token,
    with ``r = exp(clamp(log r, -20, 20))``:

    - A < 0: ``w = max(r, 1 - eps_low)`` and loss ``-A w`` (PPO's rule for
      negatives). If ``w > c`` the loss becomes ``-A c sg(1) pi/sg(pi)``: value
      ``-A c`` and gradient ``-A c`` per unit log-prob, instead of PPO's zero.
    - A > 0: ``w = min(r, 1 + eps_high)`` and loss ``-A (w / sg(w)) / sg(w)``,
      whose value is ``-A / w`` and whose gradient w.r.t. ``log pi`` is
      ``-A / r`` inside the trust region and 0 above it (the flip: low-probability
      tokens get larger updates). If ``1 / w > c`` (r < 1/c) the loss becomes
      ``-A c pi/sg(pi)``, a capped weight that still has a gradient.

    On-policy (r = 1) this gives the same gradient as the PPO surrogate. The
    authors' code writes the dual-clipped branch as ``-A c log pi``; ours has the
    same gradient and a value on the ratio scale, so logged losses stay
    comparable across branches.
    """
    advantages = advantages.expand_as(logps)
    log_ratio = (logps - old_logps).clamp(-_ASPO_LOG_RATIO_BOUND, _ASPO_LOG_RATIO_BOUND)
    ratio = torch.exp(log_ratio)
    # Value 1, gradient 1 w.r.t. logps: carries a constant weight onto log pi.
    unit = torch.exp(logps - logps.detach())

    negative_weight = ratio.clamp(min=1 - epsilon_low)
    negative_loss = -advantages * negative_weight
    positive_weight = ratio.clamp(max=1 + epsilon_high)
    positive_loss = (
        -advantages * (positive_weight / positive_weight.detach()) / positive_weight.detach()
    )

    if dual_clip_c is not None:
        negative_dual = negative_weight.detach() > dual_clip_c
        positive_dual = (1.0 / positive_weight.detach()) > dual_clip_c
        capped_loss = -advantages * dual_clip_c * unit
        negative_loss = torch.where(negative_dual, capped_loss, negative_loss)
        positive_loss = torch.where(positive_dual, capped_loss, positive_loss)
    else:
        negative_dual = positive_dual = torch.zeros_like(ratio, dtype=torch.bool)

    is_negative = advantages < 0
    is_positive = advantages > 0
    per_token_loss = torch.where(is_negative, negative_loss, positive_loss)
    is_low = (ratio < 1 - epsilon_low) & is_negative
    is_high = (ratio > 1 + epsilon_high) & is_positive
    is_dual = (negative_dual & is_negative) | (positive_dual & is_positive)
    metrics = {
        "clip_ratio/low_mean": _token_fraction(is_low, completion_mask),
        "clip_ratio/high_mean": _token_fraction(is_high, completion_mask),
        "clip_ratio/region_mean": _token_fraction(is_low | is_high, completion_mask),
        "clip_ratio/dual_mean": _token_fraction(is_dual, completion_mask),
    }
    return per_token_loss, metrics


# The built-in losses, registered under the ratio kind each implements.


@register_policy_loss("token")
def _token_ratio_loss(spec, logps, old_logps, advantages, completion_mask):
    coef = importance_ratio(logps, old_logps, completion_mask, level="token")
    return ppo_per_token_loss(
        coef, advantages, completion_mask, spec.epsilon_low, spec.epsilon_high, spec.clip_ratio_c
    )


@register_policy_loss("sequence")
def _sequence_ratio_loss(spec, logps, old_logps, advantages, completion_mask):
    coef = importance_ratio(logps, old_logps, completion_mask, level="sequence")
    return ppo_per_token_loss(coef, advantages, completion_mask, spec.epsilon_low, spec.epsilon_high)


@register_policy_loss("geo_mean")
def _geo_mean_loss(spec, logps, old_logps, advantages, completion_mask):
    return gmpo_per_token_loss(
        logps, old_logps, advantages, completion_mask, spec.epsilon_low, spec.epsilon_high
    )


@register_policy_loss("flipped_positive")
def _flipped_positive_loss(spec, logps, old_logps, advantages, completion_mask):
    return aspo_per_token_loss(
        logps, old_logps, advantages, completion_mask,
        spec.epsilon_low, spec.epsilon_high, spec.dual_clip_c,
    )


# ----------------------------------------------------------------------------
# Aggregation and the entry point
# ----------------------------------------------------------------------------


def aggregate_loss(
    per_token_loss: torch.Tensor,
    completion_mask: torch.Tensor,
    aggregation: Aggregation,
    *,
    max_completion_length: int | None = None,
    total_active_tokens: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Reduce ``(B, T)`` token losses to a scalar, as TRL 1.16 ``_compute_loss`` does.

    - ``seq_mean_token_mean`` (TRL ``grpo``): per sequence, sum over active
      tokens / active count clamped at 1; then mean over the B sequences.
    - ``seq_mean``: the same formula. Sequence-level losses (GSPO, GMPO) are
      constant over a sequence's tokens, so it is the mean of per-sequence
      losses; a sequence with no active token contributes 0 and still counts
      in B, which is what TRL does for GSPO.
    - ``seq_mean_token_sum_norm`` (TRL ``dr_grpo``): sum over all active tokens /
      (B * max_completion_length). Pass the configured budget; the default is T.
    - ``token_mean`` (TRL ``dapo``): sum / ``total_active_tokens``. The default
      is the local active-token count clamped at 1 (TRL ``bnpo``, and TRL
      ``dapo`` with one process and no accumulation). To match TRL 1.16 ``dapo``
      in general pass its normaliser ``num_items_in_batch.clamp(min=1) /
      num_processes * gradient_accumulation_steps / steps_per_generation``,
      which already accounts for accumulation: do not divide by it again.
    """
    check_choice("aggregation", aggregation, AGGREGATIONS)
    mask = completion_mask.to(per_token_loss.dtype)
    masked = per_token_loss * mask
    if aggregation in ("seq_mean_token_mean", "seq_mean"):
        return (masked.sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    if aggregation == "seq_mean_token_sum_norm":
        horizon = (
            per_token_loss.shape[-1] if max_completion_length is None else max_completion_length
        )
        return masked.sum() / (per_token_loss.shape[0] * horizon)
    if total_active_tokens is None:
        return masked.sum() / mask.sum().clamp(min=1.0)
    return masked.sum() / total_active_tokens


def policy_loss(
    spec: VariantSpec,
    logps: torch.Tensor,
    old_logps: torch.Tensor | None,
    advantages: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    max_completion_length: int | None = None,
    total_active_tokens: float | torch.Tensor | None = None,
    token_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """The clipped policy-gradient loss of ``spec`` and its diagnostics.

    Args:
        spec: the variant.
        logps: ``(B, T)`` log-probs of the sampled tokens under pi_theta (with grad).
        old_logps: ``(B, T)`` log-probs under pi_old; ``None`` means on-policy
            (``logps.detach()``, ratio exactly 1), as TRL does when it skips them.
        advantages: ``(B,)`` per sequence or ``(B, T)`` per token.
        completion_mask: ``(B, T)`` 1 on tokens that count, 0 on padding.
        max_completion_length: the ``dr_grpo`` normaliser; defaults to T.
        total_active_tokens: the ``token_mean`` normaliser; defaults to the
            local active-token count.
        token_weights: optional ``(B, T)`` or ``(B, 1)`` factors applied to the token
            losses before aggregation (TRL's vLLM importance-sampling correction).

    Returns:
        ``(loss, metrics)``: a scalar to minimise (not divided by gradient
        accumulation steps) and detached 0-d tensors ``clip_ratio/low_mean``,
        ``clip_ratio/high_mean``, ``clip_ratio/region_mean`` (and
        ``clip_ratio/dual_mean`` for ASPO and for a ``clip_ratio_c`` dual clip),
        plus ``policy_loss``.
    """
    if logps.dim() != 2 or completion_mask.shape != logps.shape:
        raise ValueError(
            f"logps and completion_mask must both be (B, T); got {tuple(logps.shape)} "
            f"and {tuple(completion_mask.shape)}"
        )
    if old_logps is None:
        old_logps = logps.detach()
    elif old_logps.shape != logps.shape:
        raise ValueError(f"old_logps must be {tuple(logps.shape)}, got {tuple(old_logps.shape)}")
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)
    if advantages.shape[0] != logps.shape[0] or advantages.shape[1] not in (1, logps.shape[1]):
        raise ValueError(f"advantages must be (B,) or (B, T); got {tuple(advantages.shape)}")
    advantages = advantages.to(logps.dtype)

    loss_fn = get_policy_loss(spec.loss_name)
    per_token_loss, metrics = loss_fn(spec, logps, old_logps, advantages, completion_mask)
    if token_weights is not None:
        per_token_loss = per_token_loss * token_weights
    loss = aggregate_loss(
        per_token_loss,
        completion_mask,
        spec.aggregation,
        max_completion_length=max_completion_length,
        total_active_tokens=total_active_tokens,
    )
    metrics["policy_loss"] = loss.detach()
    return loss, metrics
