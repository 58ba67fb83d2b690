"""Pure-torch algorithms: GRPO variants, RCC, BICC packing and diagnostics.

No trainer state and no imports beyond torch, so a second backend (verl) can reuse them.
Importing this package imports torch: the CLI must only import it inside commands.
"""

from bicc_lab.algorithms.bicc import (
    BiccBatch,
    BiccTemplate,
    context_budget,
    get_template,
    pack_conditioned_prompts,
)
from bicc_lab.algorithms.diagnostics import (
    contrastive_margin,
    cov_r_delta,
    logp_gap,
    mixed_group_mask,
    outcome_gap_by_group,
)
from bicc_lab.algorithms.rcc import RCCResult, group_covariance, rcc_advantages, sequence_delta
from bicc_lab.algorithms.variants import (
    VARIANTS,
    UnknownVariantError,
    VariantSpec,
    aggregate_loss,
    get_variant,
    group_advantages,
    overlong_penalty,
    policy_loss,
    register_variant,
    variant_names,
)

__all__ = [
    "VARIANTS",
    "BiccBatch",
    "BiccTemplate",
    "RCCResult",
    "UnknownVariantError",
    "VariantSpec",
    "aggregate_loss",
    "context_budget",
    "contrastive_margin",
    "cov_r_delta",
    "get_template",
    "get_variant",
    "group_advantages",
    "group_covariance",
    "logp_gap",
    "mixed_group_mask",
    "outcome_gap_by_group",
    "overlong_penalty",
    "pack_conditioned_prompts",
    "policy_loss",
    "rcc_advantages",
    "register_variant",
    "sequence_delta",
    "variant_names",
]
