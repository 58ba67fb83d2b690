"""The registry of GRPO-family variants: one :class:`VariantSpec` per name, no torch.

This module is the only list of variant names. Config validation
(``bicc_lab.spec``), the TRL backend's loss-type mapping, the docs table and the
tests read :data:`VARIANTS`; a user module adds a variant with
:func:`register_variant` (and, for a new loss, ``register_policy_loss`` in
:mod:`bicc_lab.algorithms.variants`), listed under the config key ``plugins``.
It imports only the standard library, so the CLI and config validation can use it
without importing torch.

Variants and the source of every default:

- ``grpo``: DeepSeekMath, arXiv 2402.03300. Group-std advantages, token ratio,
  PPO clip 0.2, token mean within a sequence then mean over sequences.
- ``dr_grpo``: "Understanding R1-Zero-Like Training", arXiv 2503.20783. No std
  scaling, token ratio, clip 0.2, sum / (B * max_completion_length).
- ``dapo``: arXiv 2503.14476. Clip-higher (0.2 / 0.28), token mean over every
  active token of the batch, dynamic sampling, soft overlong punishment (eq. 13,
  buffer L_cache/L_max = 4096/20480 = 0.2).
- ``gspo``: arXiv 2507.18071. Sequence ratio exp(mean_t log r), clip
  [1 - 3e-4, 1 + 4e-4], mean over sequences.
- ``gmpo``: arXiv 2507.20673. Geometric mean of token ratios, each token's log
  ratio clipped to [-0.4, 0.4] sign-aware, loss -A * exp(mean_t clipped log r),
  mean over sequences (official code github.com/callsys/GMPO
  ``train_zero_math_gmpo.py``, ``CLIPRANGE=0.4``; verl ``geo_mean`` loss).
- ``aspo``: arXiv 2510.06062. Flipped ratio for positive-advantage tokens and a
  soft dual clip (c = 3), token mean. See ``aspo_per_token_loss``.

The token-ratio variants (grpo, dr_grpo, dapo) also take verl's dual clip
``clip_ratio_c`` (Ye et al., arXiv 1912.09729; verl ``compute_policy_loss``): off
by default, so that they stay equal to TRL's losses.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass
from typing import Any, Literal

from bicc_lab.errors import UserError

__all__ = [
    "ADVANTAGE_SCALES",
    "AGGREGATIONS",
    "CLIP_KINDS",
    "RATIO_KINDS",
    "STD_KINDS",
    "VARIANTS",
    "UnknownVariantError",
    "VariantSpec",
    "check_choice",
    "get_variant",
    "register_variant",
    "resolve_variant",
    "variant_names",
]

AdvantageScale = Literal["group_std", "none"]
RatioKind = Literal["token", "sequence", "geo_mean", "flipped_positive"]
ClipKind = Literal["ppo", "log_space", "soft_dual"]
Aggregation = Literal["seq_mean_token_mean", "seq_mean_token_sum_norm", "token_mean", "seq_mean"]
StdKind = Literal["unbiased", "population"]

ADVANTAGE_SCALES: tuple[str, ...] = ("group_std", "none")
RATIO_KINDS: tuple[str, ...] = ("token", "sequence", "geo_mean", "flipped_positive")
CLIP_KINDS: tuple[str, ...] = ("ppo", "log_space", "soft_dual")
AGGREGATIONS: tuple[str, ...] = (
    "seq_mean_token_mean",
    "seq_mean_token_sum_norm",
    "token_mean",
    "seq_mean",
)
STD_KINDS: tuple[str, ...] = ("unbiased", "population")

# Each ratio kind has exactly one clipping rule that its paper defines; other
# pairings have no reference behaviour to test against, so they are refused.
_CLIP_FOR_RATIO: dict[str, str] = {
    "token": "ppo",
    "sequence": "ppo",
    "geo_mean": "log_space",
    "flipped_positive": "soft_dual",
}


@dataclass(frozen=True)
class VariantSpec:
    """One GRPO-family variant: advantage scaling, ratio, clipping, aggregation.

    Attributes:
        name: registry key, e.g. ``"grpo"``.
        paper: arXiv id of the paper that defines the defaults.
        advantage_scale: ``"group_std"`` divides ``r - mean`` by the group std
            (GRPO, DAPO, GSPO, GMPO, ASPO); ``"none"`` keeps ``r - mean`` (Dr.GRPO).
        ratio: ``"token"`` r_t = pi/pi_old per token; ``"sequence"`` one ratio per
            sequence exp(mean_t log r_t) (GSPO); ``"geo_mean"`` exp of the mean of
            per-token clipped log ratios (GMPO); ``"flipped_positive"`` token ratio
            whose weight is 1/r for positive-advantage tokens (ASPO).
        clip: ``"ppo"`` -min(rA, clip(r, 1-eps_low, 1+eps_high)A); ``"log_space"``
            sign-aware clip of log r to [-eps_low, eps_high] (GMPO);
            ``"soft_dual"`` PPO masking plus a value-only cap at ``dual_clip_c``
            that keeps the gradient (ASPO).
        epsilon_low, epsilon_high: clip bounds (ratio space for ``ppo`` and
            ``soft_dual``, log space for ``log_space``).
        aggregation: how the (B, T) token losses become a scalar, see
            :func:`aggregate_loss`.
        dual_clip_c: ASPO's soft dual-clip cap on the (flipped) weight; ``None``
            disables it. Only read when ``clip == "soft_dual"``.
        clip_ratio_c: verl's hard dual clip for token ratios: a negative-advantage
            token's loss is capped at ``-c A``, so a token whose ratio rose above c
            has no gradient (PPO's clip leaves it unbounded). ``None`` disables it;
            c must be > 1; only token-ratio variants take it.
        dynamic_sampling: DAPO metadata: drop groups whose task outcomes are all
            correct or all wrong and generate more prompts until the batch is full
            (at most ``train.dynamic_sampling_max_rounds`` rounds). Applied by the
            trainer (``bicc_lab.algorithms.dynamic_sampling``).
        overlong_buffer_fraction: DAPO metadata: soft overlong punishment buffer
            as a fraction of ``max_completion_length`` (see
            :func:`overlong_penalty`); ``None`` disables it. Applied by the
            reward pipeline.
        policy_loss: name of a per-token loss registered with
            ``bicc_lab.algorithms.variants.register_policy_loss``; ``None`` (every
            built-in variant): the built-in loss registered under ``ratio``.
            ``ratio`` and ``clip`` describe the built-in losses; a registered loss
            reads whichever spec fields it needs.
        trl_loss_type: TRL's ``loss_type`` for this variant. It decides nothing in
            our loss (``policy_loss`` does) but keeps TRL's own checks and
            warnings meaningful; the importance-sampling level TRL is told follows
            from ``ratio``.
    """

    name: str
    paper: str = ""
    advantage_scale: AdvantageScale = "group_std"
    ratio: RatioKind = "token"
    clip: ClipKind = "ppo"
    epsilon_low: float = 0.2
    epsilon_high: float = 0.2
    aggregation: Aggregation = "seq_mean_token_mean"
    dual_clip_c: float | None = None
    clip_ratio_c: float | None = None
    dynamic_sampling: bool = False
    overlong_buffer_fraction: float | None = None
    policy_loss: str | None = None
    trl_loss_type: str = "grpo"

    def __post_init__(self) -> None:
        check_choice("advantage_scale", self.advantage_scale, ADVANTAGE_SCALES)
        check_choice("ratio", self.ratio, RATIO_KINDS)
        check_choice("clip", self.clip, CLIP_KINDS)
        check_choice("aggregation", self.aggregation, AGGREGATIONS)
        expected_clip = _CLIP_FOR_RATIO[self.ratio]
        if self.clip != expected_clip:
            raise ValueError(
                f"variant {self.name!r}: ratio {self.ratio!r} goes with clip "
                f"{expected_clip!r}, got {self.clip!r}"
            )
        for field_name in ("epsilon_low", "epsilon_high"):
            value = getattr(self, field_name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"variant {self.name!r}: {field_name} must be >= 0, got {value!r}")
        if self.clip != "log_space" and self.epsilon_low >= 1:
            raise ValueError(
                f"variant {self.name!r}: epsilon_low must be < 1 for ratio-space clipping, "
                f"got {self.epsilon_low!r}"
            )
        if self.dual_clip_c is not None and not self.dual_clip_c > 1:
            raise ValueError(
                f"variant {self.name!r}: dual_clip_c must be > 1, got {self.dual_clip_c!r}"
            )
        if self.clip_ratio_c is not None:
            c = self.clip_ratio_c
            if not (isinstance(c, int | float) and math.isfinite(c) and c > 1):
                raise ValueError(f"variant {self.name!r}: clip_ratio_c must be > 1, got {c!r}")
            if self.ratio != "token":
                raise ValueError(
                    f"variant {self.name!r}: clip_ratio_c (dual clip) applies to token-ratio "
                    f"variants (grpo, dr_grpo, dapo), not to ratio {self.ratio!r}"
                )
        if self.policy_loss is not None:
            if not (isinstance(self.policy_loss, str) and self.policy_loss):
                raise ValueError(
                    f"variant {self.name!r}: policy_loss must be a loss name, got {self.policy_loss!r}"
                )
            if self.policy_loss in RATIO_KINDS and self.policy_loss != self.ratio:
                raise ValueError(
                    f"variant {self.name!r}: the built-in loss {self.policy_loss!r} is chosen "
                    f"with ratio: {self.policy_loss}, not policy_loss"
                )
        fraction = self.overlong_buffer_fraction
        if fraction is not None and not 0 < fraction <= 1:
            raise ValueError(
                f"variant {self.name!r}: overlong_buffer_fraction must be in (0, 1], got {fraction!r}"
            )

    @property
    def loss_name(self) -> str:
        """The registered policy loss this variant trains with."""
        return self.policy_loss or self.ratio

    @property
    def trl_importance_sampling_level(self) -> str:
        """TRL's ``importance_sampling_level``: ``sequence`` for GSPO's ratio, else ``token``."""
        return "sequence" if self.ratio == "sequence" else "token"

    def overlong_buffer_tokens(self, max_completion_length: int) -> int | None:
        """The DAPO overlong buffer in tokens for this completion budget, or None."""
        if self.overlong_buffer_fraction is None:
            return None
        return max(1, round(self.overlong_buffer_fraction * max_completion_length))


def check_choice(field_name: str, value: object, choices: tuple[str, ...]) -> None:
    """Raise ValueError naming ``field_name`` and the valid choices unless ``value`` is one."""
    if value not in choices:
        raise ValueError(f"{field_name} must be one of {', '.join(choices)}; got {value!r}")


class UnknownVariantError(UserError, ValueError):
    """A variant name that is not in the registry; the message lists the valid ones."""

    def __init__(self, name: str, valid: list[str]) -> None:
        self.name = name
        self.valid = valid
        # Case and separators are the usual slips ("DR-GRPO", "dr.grpo").
        normalised = name.lower().replace("-", "_").replace(".", "_") if isinstance(name, str) else ""
        close = [normalised] if normalised in valid else difflib.get_close_matches(normalised, valid, n=1)
        guess = f"did you mean {close[0]!r}? " if close else ""
        # What to write instead; config errors show it after the key's location.
        self.hint = f"{guess}valid: {', '.join(valid)}"
        super().__init__(f"unknown variant {name!r}; {self.hint}")


VARIANTS: dict[str, VariantSpec] = {}
"""Every registered variant by name, in registration order (the order of docs and reports)."""


def register_variant(spec: VariantSpec, *, overwrite: bool = False) -> VariantSpec:
    """Add ``spec`` to :data:`VARIANTS` under ``spec.name`` and return it.

    Re-registering a name raises unless ``overwrite=True``, so that two modules
    cannot silently disagree about what a name means.
    """
    if spec.name in VARIANTS and not overwrite and VARIANTS[spec.name] != spec:
        raise ValueError(f"variant {spec.name!r} is already registered: {VARIANTS[spec.name]}")
    VARIANTS[spec.name] = spec
    return spec


def variant_names() -> list[str]:
    """Registered variant names, sorted."""
    return sorted(VARIANTS)


def get_variant(name: str, **overrides: Any) -> VariantSpec:
    """The registered spec called ``name``, with ``overrides`` applied to its fields.

    Raises:
        UnknownVariantError: ``name`` is not registered (message suggests the
            closest name).
        ValueError: an override names a field that does not exist, or gives a
            value the spec rejects.
    """
    if name not in VARIANTS:
        raise UnknownVariantError(name, variant_names())
    spec = VARIANTS[name]
    if not overrides:
        return spec
    valid_fields = [f.name for f in dataclasses.fields(VariantSpec)]
    unknown = sorted(set(overrides) - set(valid_fields))
    if unknown:
        raise ValueError(
            f"unknown variant field(s) {', '.join(unknown)} for {name!r}; "
            f"valid: {', '.join(valid_fields)}"
        )
    return dataclasses.replace(spec, **overrides)


def resolve_variant(
    name: str, overrides: dict[str, Any] | None = None, *, clip_ratio_c: float | None = None
) -> VariantSpec:
    """The spec a run trains with: ``name`` plus its overrides and the dual clip.

    ``clip_ratio_c`` (the experiment-level key) goes to token-ratio variants only, as verl
    applies it only in its vanilla PPO loss: one config can then set it for a grid over
    every variant, while gspo, gmpo, aspo and registered losses keep their own clip rules.
    An explicit ``overrides["clip_ratio_c"]`` wins and is validated like any field.
    """
    overrides = dict(overrides or {})
    if clip_ratio_c is not None and "clip_ratio_c" not in overrides:
        base = get_variant(name)
        ratio = overrides.get("ratio", base.ratio)
        custom_loss = overrides.get("policy_loss", base.policy_loss)
        if ratio == "token" and custom_loss in (None, "token"):
            overrides["clip_ratio_c"] = clip_ratio_c
    return get_variant(name, **overrides)


register_variant(
    VariantSpec(
        name="grpo",
        paper="2402.03300",
        advantage_scale="group_std",
        ratio="token",
        clip="ppo",
        epsilon_low=0.2,
        epsilon_high=0.2,
        aggregation="seq_mean_token_mean",
    )
)
register_variant(
    VariantSpec(
        name="dr_grpo",
        paper="2503.20783",
        advantage_scale="none",
        ratio="token",
        clip="ppo",
        epsilon_low=0.2,
        epsilon_high=0.2,
        aggregation="seq_mean_token_sum_norm",
        trl_loss_type="dr_grpo",
    )
)
register_variant(
    VariantSpec(
        name="dapo",
        paper="2503.14476",
        advantage_scale="group_std",
        ratio="token",
        clip="ppo",
        epsilon_low=0.2,
        epsilon_high=0.28,
        aggregation="token_mean",
        dynamic_sampling=True,
        # DAPO trains with L_max = 20480 and L_cache = 4096 (section 4.1).
        overlong_buffer_fraction=0.2,
        trl_loss_type="dapo",
    )
)
register_variant(
    VariantSpec(
        name="gspo",
        paper="2507.18071",
        advantage_scale="group_std",
        ratio="sequence",
        clip="ppo",
        epsilon_low=3e-4,
        epsilon_high=4e-4,
        aggregation="seq_mean",
    )
)
register_variant(
    VariantSpec(
        name="gmpo",
        paper="2507.20673",
        advantage_scale="group_std",
        ratio="geo_mean",
        clip="log_space",
        epsilon_low=0.4,
        epsilon_high=0.4,
        aggregation="seq_mean",
    )
)
register_variant(
    VariantSpec(
        name="aspo",
        paper="2510.06062",
        advantage_scale="group_std",
        ratio="flipped_positive",
        clip="soft_dual",
        # The authors' code clips low-entropy tokens at 0.2 and the top-20%
        # entropy tokens at 0.4 (Archer's dual-token constraint, arXiv
        # 2507.15778). That split needs token entropies, which a pure loss over
        # log-probs does not have, so the default is the low-entropy bound.
        epsilon_low=0.2,
        epsilon_high=0.2,
        aggregation="token_mean",
        dual_clip_c=3.0,
        trl_loss_type="dapo",
    )
)

