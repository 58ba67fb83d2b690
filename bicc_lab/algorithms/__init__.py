"""Pure-torch algorithms: GRPO variants, RCC, BICC packing and diagnostics.

No trainer state and no imports beyond torch, so a second backend (verl) can reuse them.
The names below load on first use: ``bicc_lab.algorithms.registry`` (the variant
specs) needs no torch, so config validation can read it without importing torch;
every other submodule imports torch.
"""

from __future__ import annotations

import importlib
from typing import Any

# Public name -> the submodule that defines it.
_EXPORTS: dict[str, str] = {
    "BiccBatch": "bicc",
    "BiccTemplate": "bicc",
    "context_budget": "bicc",
    "get_template": "bicc",
    "pack_conditioned_prompts": "bicc",
    "contrastive_margin": "diagnostics",
    "GroupSelection": "dynamic_sampling",
    "dynamic_sampling_metrics": "dynamic_sampling",
    "needs_another_round": "dynamic_sampling",
    "select_groups": "dynamic_sampling",
    "cov_r_delta": "diagnostics",
    "logp_gap": "diagnostics",
    "mixed_group_mask": "diagnostics",
    "outcome_gap_by_group": "diagnostics",
    "RCCResult": "rcc",
    "group_covariance": "rcc",
    "rcc_advantages": "rcc",
    "sequence_delta": "rcc",
    "VARIANTS": "registry",
    "UnknownVariantError": "registry",
    "VariantSpec": "registry",
    "get_variant": "registry",
    "register_variant": "registry",
    "variant_names": "registry",
    "aggregate_loss": "variants",
    "get_policy_loss": "variants",
    "group_advantages": "variants",
    "overlong_penalty": "variants",
    "policy_loss": "variants",
    "register_policy_loss": "variants",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
