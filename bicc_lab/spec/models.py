"""Pydantic models of an experiment config and of a sweep: every key, its type and default.

This module is the single source of truth for config keys (DESIGN.md, "Config
keys (the contract)"). Every model forbids unknown keys. Integers and booleans
are strict (``max_steps: true`` or ``seed: "1"`` are errors, not coerced);
floats accept integers and numeric strings such as ``"1e-3"``.

Imports: pydantic and the standard library only (the CLI imports this at start-up).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AllowInfNan,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    field_validator,
    model_validator,
)

__all__ = [
    "ARMS",
    "VARIANTS",
    "BiccConfig",
    "DataConfig",
    "DiagnosticsConfig",
    "EvalConfig",
    "ExperimentConfig",
    "FieldProblem",
    "ModelConfig",
    "RccConfig",
    "SearchConfig",
    "SweepConfig",
    "TinyModelConfig",
    "TrackingConfig",
    "TrainConfig",
    "arm",
]

VARIANTS: tuple[str, ...] = ("grpo", "dr_grpo", "dapo", "gspo", "gmpo", "aspo")
"""Valid values of ``variant`` (the GRPO-family registry in ``bicc_lab.algorithms.variants``)."""

ARMS: tuple[str, ...] = ("base", "rcc", "bicc", "bicc+rcc")
"""The four ablation arms, from ``bicc.enabled`` × ``rcc.enabled``."""

Variant = Literal["grpo", "dr_grpo", "dapo", "gspo", "gmpo", "aspo"]


class FieldProblem(ValueError):
    """A cross-field check failed; ``path`` is the offending key relative to the model.

    Raised inside model validators so that the loader can point at the right line
    (pydantic would otherwise attribute it to the whole section).
    """

    def __init__(
        self,
        path: tuple[str, ...],
        message: str,
        *,
        hint: str | None = None,
        also: tuple[tuple[str, ...], ...] = (),
    ) -> None:
        self.path = path
        self.hint = hint  # shown after the location
        self.also = also  # other keys involved, tried in order when ``path`` has no location
        super().__init__(f"{message}; {hint}" if hint else message)
        self.message = message


def _reject_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {'true' if value else 'false'}")
    return value


# Floats: lax (ints and "1e-3"-style strings are fine), but never booleans.
Float = Annotated[float, Strict(False), AllowInfNan(False), BeforeValidator(_reject_bool)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


# --------------------------------------------------------------------------- experiment


class TinyModelConfig(_Section):
    """The offline tiny model (built and warm-started by ``bicc_lab.models``)."""

    layers: int = Field(4, ge=1, description="Transformer layers of the tiny Qwen2 model.")
    hidden: int = Field(128, ge=8, description="Hidden size of the tiny model.")
    heads: int = Field(4, ge=1, description="Attention heads (must divide hidden).")
    intermediate: int | None = Field(None, ge=1, description="MLP size; null: 4 x hidden.")
    digits: int = Field(
        2, ge=1, le=9, description="Operand digits of the warm-start arithmetic task."
    )
    target_accuracy: Float = Field(
        0.35,
        gt=0,
        le=1,
        description="Warm-start until held-out sampled accuracy reaches this (mixed groups for GRPO).",
    )
    warmup_lr: Float = Field(2e-3, gt=0, description="Learning rate of the supervised warm-start.")
    max_warmup_steps: int = Field(
        5000, ge=0, description="Cap on warm-start steps if the target accuracy is never reached."
    )
    context_prob: Float = Field(
        0.5, ge=0, le=1, description="Share of warm-start prompts followed by other answers (BICC's separator layout)."
    )
    max_warmup_seconds: Float = Field(
        300.0, gt=0, description="Cap on warm-start wall time; below target at the cap is an error."
    )

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> TinyModelConfig:
        if self.hidden % self.heads:
            raise FieldProblem(
                ("heads",),
                f"model.tiny.heads ({self.heads}) must divide model.tiny.hidden ({self.hidden})",
                also=(("hidden",),),
            )
        return self


class ModelConfig(_Section):
    """The policy model."""

    name: str = Field(
        "tiny", min_length=1, description='"tiny" (built offline), a hub id, or a local path.'
    )
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field(
        "float32", description="Weights dtype when loading the model."
    )
    attn_implementation: str | None = Field(
        None,
        description='transformers attn_implementation ("sdpa", "flash_attention_2", ...); null: default.',
    )
    trust_remote_code: bool = Field(False, description="Pass trust_remote_code to transformers.")
    tiny: TinyModelConfig = Field(
        default_factory=TinyModelConfig,
        description='Tiny-model settings; read only when name is "tiny".',
    )


class DataConfig(_Section):
    """Training prompts and rewards."""

    train: str = Field(
        "synthetic_arithmetic",
        min_length=1,
        description="Registry name (synthetic_arithmetic, math_train, gsm8k, dapo_math), a .jsonl path, or a hub id.",
    )
    data_dir: str | None = Field(
        None, description="Directory of local data files; null: $BICC_LAB_DATA_DIR or the hub."
    )
    chat: bool = Field(False, description="Format prompts as chat messages (instruct models).")
    problem_field: str | None = Field(
        None, description="Problem column of a JSONL/hub dataset; null: guess."
    )
    answer_field: str | None = Field(
        None, description="Answer column of a JSONL/hub dataset; null: guess."
    )
    digits: int = Field(2, ge=1, le=9, description="Operand digits of synthetic_arithmetic.")
    num_train: int | None = Field(
        None, ge=1, description="Use only the first N training problems; null: all."
    )


class TrainConfig(_Section):
    """RL training (mapped onto TRL's GRPOConfig by the backend)."""

    max_steps: int = Field(200, ge=1, description="Optimizer steps.")
    learning_rate: Float = Field(2e-4, gt=0, description="Peak learning rate.")
    num_generations: int = Field(8, description="Group size G: completions per prompt (>= 2).")
    per_device_train_batch_size: int = Field(
        64, ge=1, description="Completions per device per micro-batch (G x prompts)."
    )
    gradient_accumulation_steps: int = Field(
        1, ge=1, description="Micro-batches per optimizer step."
    )
    steps_per_generation: int | None = Field(
        None,
        ge=1,
        description="Micro-batches per generation batch; null: gradient_accumulation_steps.",
    )
    num_iterations: int = Field(1, ge=1, description="Policy updates per generation batch (mu).")
    max_completion_length: int = Field(32, ge=1, description="Maximum new tokens per completion.")
    max_prompt_length: int | None = Field(
        None,
        ge=1,
        description="Prompt part of the max sequence length BICC's budget is a fraction of; null: longest prompt of each batch.",
    )
    temperature: Float = Field(1.0, gt=0, description="Rollout sampling temperature.")
    top_p: Float = Field(1.0, gt=0, le=1, description="Rollout nucleus sampling.")
    beta: Float = Field(
        0.0, ge=0, description="KL coefficient to the reference model (0: no KL term)."
    )
    std: Literal["unbiased", "population"] = Field(
        "unbiased", description="Group std of std-normalised advantages (TRL uses unbiased)."
    )
    logging_steps: int = Field(1, ge=1, description="Log metrics every N steps.")
    save_steps: int = Field(50, ge=1, description="Checkpoint every N steps.")
    warmup_ratio: Float = Field(
        0.0, ge=0, le=1, description="Fraction of steps of linear LR warm-up."
    )
    weight_decay: Float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: Float = Field(1.0, ge=0, description="Gradient clipping norm (0: off).")
    bf16: bool = Field(False, description="bf16 mixed precision.")
    use_vllm: bool = Field(False, description="Generate rollouts with vLLM.")
    vllm_mode: Literal["colocate", "server"] = Field("colocate", description="vLLM placement.")
    output_dir: str | None = Field(
        None,
        description="Where checkpoints go; null: chosen by the launcher (not part of the run id).",
    )
    extra: dict[str, Any] = Field(
        default_factory=dict, description="Extra GRPOConfig fields, passed through unchanged."
    )

    @field_validator("num_generations")
    @classmethod
    def _group_of_two(cls, value: int) -> int:
        if value < 2:
            raise FieldProblem(
                (),
                f"train.num_generations must be >= 2 (a group of 1 has no baseline), got {value}",
            )
        return value

    @property
    def generation_batch_size(self) -> int:
        """Completions generated per process at once (per-device batch x steps per generation)."""
        steps = self.steps_per_generation or self.gradient_accumulation_steps
        return self.per_device_train_batch_size * steps

    @model_validator(mode="after")
    def _whole_groups(self) -> TrainConfig:
        steps = self.steps_per_generation or self.gradient_accumulation_steps
        if self.generation_batch_size % self.num_generations:
            raise FieldProblem(
                ("per_device_train_batch_size",),
                "train.per_device_train_batch_size x steps_per_generation "
                f"({self.per_device_train_batch_size} x {steps} = {self.generation_batch_size}) "
                f"must be divisible by train.num_generations ({self.num_generations})",
                hint="each generation batch must hold whole groups",
                also=(
                    ("num_generations",),
                    ("steps_per_generation",),
                    ("gradient_accumulation_steps",),
                ),
            )
        return self


class BiccConfig(_Section):
    """Bilateral Context Conditioning."""

    enabled: bool = Field(
        False, description="Score each answer under a prompt showing opposite-outcome answers."
    )
    context_fraction: Float = Field(
        0.4,
        gt=0,
        lt=1,
        description="Token budget of the packed traces, as a fraction of prompt + completion length.",
    )
    max_traces: int | None = Field(
        None, ge=1, description="At most this many opposite traces; null: as many as fit."
    )
    template: Literal["default", "separator"] = Field(
        "default",
        description="default: natural-language framing; separator: bare concatenation (authors' code).",
    )
    separator: str = Field("\n", description="String between packed traces.")
    ratio: Literal["paper", "conditioned"] = Field(
        "paper",
        description="paper: pi(o|q+ctx)/pi_old(o|q); conditioned: pi(o|q+ctx)/pi_old(o|q+ctx).",
    )
    success_threshold: Float = Field(0.5, description="A reward above this counts as correct.")
    seed: int | None = Field(
        None, description="Seed of trace selection/order; null: the experiment seed."
    )


class RccConfig(_Section):
    """Reward-Confidence Correction of the group baseline."""

    enabled: bool = Field(False, description="Shift the baseline by 2*coef*Cov(r, delta).")
    coef: Float = Field(1.0, description="lambda, the correction coefficient (paper: 1).")
    max_shift: Float | None = Field(
        None, gt=0, description="Clamp |b - mean(r)| to this; null: no clamp."
    )
    delta: Literal["sum", "mean"] = Field(
        "sum", description="Sequence confidence: sum or mean of token log ratios."
    )
    reference: Literal["ref", "old"] = Field(
        "ref",
        description="delta against the frozen reference model, or the policy that generated the previous batch.",
    )


class EvalConfig(_Section):
    """Evaluation of the final model."""

    enabled: bool = Field(True, description="Evaluate after training.")
    benchmarks: list[str] = Field(
        default_factory=lambda: ["arith_test"],
        description="Benchmarks: arith_test, math500, aime24, aime25, amc23, ...",
    )
    samples: int = Field(4, ge=1, description="Samples per problem (avg@k / pass@k).")
    temperature: Float = Field(0.6, ge=0, description="Sampling temperature (0: greedy).")
    top_p: Float = Field(0.95, gt=0, le=1, description="Nucleus sampling.")
    max_new_tokens: int = Field(32, ge=1, description="Generation budget per answer.")
    limit: int | None = Field(
        None, ge=1, description="Evaluate only the first N problems; null: all."
    )
    data_dir: str | None = Field(
        None, description="Directory of benchmark JSONL files (not part of the run id)."
    )
    backend: Literal["hf", "vllm"] = Field("hf", description="Generation backend of lm-eval.")

    @model_validator(mode="after")
    def _some_benchmark(self) -> EvalConfig:
        if self.enabled and not self.benchmarks:
            raise FieldProblem(
                ("benchmarks",), "eval.benchmarks is empty while eval.enabled is true"
            )
        return self


class DiagnosticsConfig(_Section):
    """Optional, costlier diagnostics."""

    grad_variance: bool = Field(
        False, description="Estimate policy-gradient variance each logging step."
    )


class TrackingConfig(_Section):
    """Where runs are tracked (never part of a run's identity)."""

    uri: str | None = Field(
        None, description="MLflow tracking URI; null: the local SQLite default."
    )
    experiment: str | None = Field(
        None, description="MLflow experiment name; null: chosen by the command."
    )


class ExperimentConfig(_Section):
    """One training run: model, data, training, BICC, RCC, evaluation, tracking."""

    name: str = Field(
        ..., min_length=1, description="Experiment name (a label; not part of the run id)."
    )
    seed: int = Field(0, description="Seed of everything (data order, sampling, init).")
    variant: Variant = Field(
        "grpo", description="GRPO-family variant: " + ", ".join(VARIANTS) + "."
    )
    variant_overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="Override fields of the variant spec, e.g. {epsilon_high: 0.28}.",
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


# --------------------------------------------------------------------------- sweep


class SearchConfig(_Section):
    """An Optuna study over config keys (validated loosely; ``bicc_lab.tune`` reads it)."""

    params: dict[str, Any] = Field(
        default_factory=dict,
        description="Dotted config key -> distribution, e.g. {low: 0, high: 2} or a list of choices.",
    )
    objective: str | None = Field(
        None, description="Metric to optimise, e.g. eval/arith_test/avg@4."
    )
    direction: Literal["maximize", "minimize"] = Field(
        "maximize", description="Optimisation direction."
    )
    n_trials: int = Field(20, ge=1, description="Number of trials.")
    sampler: str | dict[str, Any] = Field(
        "tpe", description="Optuna sampler name, or {name: ..., kwargs}."
    )
    pruner: str | dict[str, Any] | None = Field(
        None, description="Optuna pruner name, or null for none."
    )


class SweepConfig(_Section):
    """A grid of experiments over one base experiment."""

    name: str | None = Field(None, description="Sweep name; null: the file's stem.")
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
    gpus: list[Annotated[int, Field(ge=0)]] | None = Field(
        None, description="GPU ids to spread cells over."
    )
    tracking: TrackingConfig = Field(
        default_factory=TrackingConfig,
        description="Tracking for every cell (overrides the base's).",
    )
