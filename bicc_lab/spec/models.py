"""Pydantic models of an experiment config and of a sweep: every key, its type and default.

This module and its siblings are the single source of truth for config keys: the top-level
:class:`ExperimentConfig` and :class:`SweepConfig` here, the experiment's sections in
:mod:`bicc_lab.spec.sections`, a sweep's search and launch blocks in
:mod:`bicc_lab.spec.sweep_sections`, shared field types in :mod:`bicc_lab.spec.fields`.
Every model forbids unknown keys. Integers and booleans
are strict (``max_steps: true`` or ``seed: "1"`` are errors, not coerced);
floats accept integers and numeric strings such as ``"1e-3"``.

Imports: pydantic, the standard library and the torch-free variant registry only (the
CLI imports this at start-up).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, model_validator

from bicc_lab.algorithms.registry import VARIANTS
from bicc_lab.spec.fields import (
    SEED_MAX,
    FieldProblem,
    Float,
    PathName,
    Variant,
    _Section,
    import_plugins,
)
from bicc_lab.spec.sections import (
    BiccConfig,
    DataConfig,
    DiagnosticsConfig,
    EvalConfig,
    ModelConfig,
    RccConfig,
    TrackingConfig,
    TrainConfig,
    tiny_preset,
)
from bicc_lab.spec.seeds import SeedPolicyConfig
from bicc_lab.spec.sweep_sections import LaunchConfig, SearchConfig

__all__ = [
    "ARMS",
    "ExperimentConfig",
    "SweepConfig",
    "arm",
]


ARMS: tuple[str, ...] = ("base", "rcc", "bicc", "bicc+rcc")
"""The four ablation arms, from ``bicc.enabled`` × ``rcc.enabled``."""


class ExperimentConfig(_Section):
    """One training run: model, data, training, BICC, RCC, evaluation, tracking."""

    name: PathName = Field(
        ..., min_length=1, description="Experiment name (a label; not part of the run id)."
    )
    seed: int = Field(
        0, ge=0, le=SEED_MAX, description="Seed of everything (data order, sampling, init); 0..2**32-1 (numpy's range)."
    )
    plugins: list[str] = Field(
        default_factory=list,
        description="Python modules imported before the rest is validated, e.g. one that adds a "
        "variant with register_variant; importable from the current directory, PYTHONPATH or "
        "site-packages.",
    )
    variant: Variant = Field(
        "grpo",
        description="GRPO-family variant: " + ", ".join(VARIANTS) + ", or one a plugin registers.",
    )
    variant_overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="Override fields of the variant spec, e.g. {epsilon_high: 0.28}.",
    )
    clip_ratio_c: Float | None = Field(
        None,
        gt=1,
        description="verl's dual clip: for A < 0 the token loss is bounded at -c*A. Applies to the "
        "token-ratio variants (grpo, dr_grpo, dapo); gspo, gmpo and aspo keep their own clip rules, "
        "as in verl; null: off.",
    )
    model: ModelConfig = Field(default_factory=ModelConfig, description="Policy model.")
    data: DataConfig = Field(default_factory=DataConfig, description="Training data.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="RL training.")
    bicc: BiccConfig = Field(
        default_factory=BiccConfig, description="Bilateral Context Conditioning."
    )
    rcc: RccConfig = Field(default_factory=RccConfig, description="Reward-Confidence Correction.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Evaluation.")
    diagnostics: DiagnosticsConfig = Field(
        default_factory=DiagnosticsConfig, description="Diagnostics."
    )
    tracking: TrackingConfig = Field(
        default_factory=TrackingConfig, description="Tracking (MLflow)."
    )

    @model_validator(mode="before")
    @classmethod
    def _import_plugins_and_chat_format(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        # Before the fields: a plugin may register the variant that ``variant`` names.
        import_plugins(data.get("plugins"))
        # The tiny model is warm-started in the prompt format it trains on, unless told.
        train_data, model = data.get("data"), data.get("model", {})
        if isinstance(train_data, dict) and train_data.get("chat") is True and isinstance(model, dict):
            block = model.get("tiny", {})
            if isinstance(block, dict) and "prompt_format" not in block:
                data = {**data, "model": {**model, "tiny": {**block, "prompt_format": "chat"}}}
        return data

    @model_validator(mode="after")
    def _tiny_format_matches_data(self) -> ExperimentConfig:
        expected = "chat" if self.data.chat else "plain"
        if tiny_preset(self.model.name) is not None and self.model.tiny.prompt_format != expected:
            raise FieldProblem(
                ("model", "tiny", "prompt_format"),
                f"model.tiny.prompt_format is {self.model.tiny.prompt_format!r} but data.chat is "
                f"{str(self.data.chat).lower()}: the tiny model must be warm-started on the prompt format it trains on",
                also=(("model", "name"), ("data", "chat")),
            )
        return self

    @property
    def arm(self) -> str:
        """``base``, ``rcc``, ``bicc`` or ``bicc+rcc``."""
        return arm(self)


def arm(config: ExperimentConfig) -> str:
    """The ablation arm of ``config``: ``base``, ``rcc``, ``bicc`` or ``bicc+rcc``."""
    if config.bicc.enabled and config.rcc.enabled:
        return "bicc+rcc"
    if config.bicc.enabled:
        return "bicc"
    if config.rcc.enabled:
        return "rcc"
    return "base"


class SweepConfig(_Section):
    """A grid of experiments over one base experiment."""

    name: PathName | None = Field(None, description="Sweep name; null: the file's stem.")
    base: str = Field(
        ..., min_length=1, description="Base experiment YAML, relative to the sweep file."
    )
    set: dict[str, Any] = Field(
        default_factory=dict, description="Overrides of the base (dotted or nested keys)."
    )
    grid: dict[str, list[Any]] = Field(
        default_factory=dict, description="Dotted key -> values; cells are the cartesian product."
    )
    zip: list[dict[str, list[Any]]] = Field(
        default_factory=list, description="Groups of axes that move together (equal lengths)."
    )
    exclude: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Partial matches of axis values; matching cells are skipped.",
    )
    search: SearchConfig | None = Field(None, description="Optuna study block (bicc-lab tune).")
    max_parallel: int = Field(1, ge=1, description="Cells run at once.")
    max_cells: int = Field(
        10_000,
        ge=1,
        description="Refuse a grid of more cells than this (counted before expanding it); "
        "raise it with --set max_cells=N.",
    )
    gpus: list[Annotated[int, Field(ge=0)]] | None = Field(
        None, description="GPU ids to spread cells over."
    )
    launch: LaunchConfig = Field(
        default_factory=LaunchConfig,
        description="Where cells run: local processes (default) or SLURM jobs.",
    )
    tracking: TrackingConfig = Field(
        default_factory=TrackingConfig,
        description="Tracking for every cell (overrides the base's).",
    )
    seeds: SeedPolicyConfig | None = Field(
        None,
        description="Adaptive seeds: add seeds to each model x variant row until its "
        "comparisons with the baseline are resolved (see README, 'Seeds until the answer is clear').",
    )
