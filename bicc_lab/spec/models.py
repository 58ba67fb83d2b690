"""Pydantic models of an experiment config and of a sweep: every key, its type and default.

This module is the single source of truth for config keys. Every model forbids unknown keys. Integers and booleans
are strict (``max_steps: true`` or ``seed: "1"`` are errors, not coerced);
floats accept integers and numeric strings such as ``"1e-3"``.

Imports: pydantic, the standard library and the torch-free variant registry only (the
CLI imports this at start-up).
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AllowInfNan,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    field_validator,
    model_validator,
)

from bicc_lab.algorithms.registry import VARIANTS, UnknownVariantError, get_variant
from bicc_lab.spec.errors import show_value
from bicc_lab.spec.seeds import SeedPolicyConfig

__all__ = [
    "ARMS",
    "BiccConfig",
    "DataConfig",
    "DiagnosticsConfig",
    "EvalConfig",
    "ExperimentConfig",
    "FieldProblem",
    "LaunchConfig",
    "ModelConfig",
    "RccConfig",
    "PrunerConfig",
    "SamplerConfig",
    "SearchConfig",
    "SearchParam",
    "SweepConfig",
    "TINY_PRESETS",
    "TinyModelConfig",
    "TrackingConfig",
    "TrainConfig",
    "arm",
    "path_name_problem",
    "tiny_preset",
]

ARMS: tuple[str, ...] = ("base", "rcc", "bicc", "bicc+rcc")
"""The four ablation arms, from ``bicc.enabled`` × ``rcc.enabled``."""



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
SEED_MAX = 2**32 - 1
"""The largest seed numpy's RandomState (seeded by transformers.set_seed) accepts."""

Float = Annotated[float, Strict(False), AllowInfNan(False), BeforeValidator(_reject_bool)]


def path_name_problem(value: str) -> str | None:
    """Why ``value`` cannot name a directory of its own (None: it can).

    Experiment, sweep and study names become ``runs/<sweep>/``, ``runs/train/<name>-<id>/``
    and ``reports/<study>/``; a separator or a ``.``/``..`` name would write outside them.
    """
    if "/" in value or "\\" in value:
        return f"name {value!r} contains a path separator"
    if value.strip() in (".", ".."):
        return f"name {value!r} is a relative directory, not a name"
    if "\0" in value:
        return f"name {value!r} contains a NUL character"
    return None


PATH_NAME_HINT = "names become directory names under runs/ and reports/"


def _path_name(value: str) -> str:
    problem = path_name_problem(value)
    if problem:
        raise FieldProblem((), problem, hint=PATH_NAME_HINT)
    return value


PathName = Annotated[str, AfterValidator(_path_name)]
"""A name that becomes one directory name (no separator, not ``.`` or ``..``)."""


def _registered_variant(value: str) -> str:
    try:
        get_variant(value)
    except UnknownVariantError as exc:
        raise FieldProblem((), f"unknown variant {show_value(value)}", hint=exc.hint) from None
    return value


Variant = Annotated[str, AfterValidator(_registered_variant)]
"""A name in the variant registry (``bicc_lab.algorithms.registry``), read at validation
time so that a variant registered by a plugin module is accepted."""

PLUGINS_HINT = "a plugin is a module importable from the current directory, PYTHONPATH or site-packages"


def import_plugins(names: Any) -> None:
    """Import each module of a config's ``plugins`` list (they register variants, losses).

    The current directory is searched last, as ``python -m`` would search it first: a
    ``my_variants.py`` next to the config works from the ``bicc-lab`` script and in the
    workers it starts, without shadowing an installed module of the same name.
    """
    if not isinstance(names, list):
        return  # the field's own validation reports the wrong type
    if names and os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    for index, name in enumerate(names):
        if not isinstance(name, str):
            continue
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - any failure of user code is one config error
            raise FieldProblem(
                ("plugins", index), f"cannot import plugin {name!r} ({type(exc).__name__}: {exc})", hint=PLUGINS_HINT
            ) from None


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


# --------------------------------------------------------------------------- experiment


class TinyModelConfig(_Section):
    """The offline tiny model: everything that determines it (its hash is the cache key).

    ``bicc_lab.models.tiny`` builds and warm-starts it from this config alone; the
    ``model.tiny`` block of an experiment is this class, and ``tiny:<preset>`` model names
    start from :data:`TINY_PRESETS`.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    # architecture (Qwen2)
    layers: int = Field(4, ge=1, description="Transformer layers of the tiny Qwen2 model.")
    hidden: int = Field(128, ge=8, description="Hidden size of the tiny model.")
    heads: int = Field(4, ge=1, description="Attention heads (must divide hidden).")
    kv_heads: int = Field(2, ge=1, description="Key/value heads (must divide heads).")
    intermediate: int = Field(384, ge=1, description="MLP size.")
    max_positions: int = Field(1024, ge=16, description="Longest sequence the model takes, in tokens.")
    # warm-start task: synthetic arithmetic train split (never the test split)
    digits: int = Field(2, ge=1, le=9, description="Operand digits of the warm-start arithmetic task.")
    ops: str = Field("+", min_length=1, description="Operators of the warm-start task, e.g. + or +-*.")
    prompt_format: Literal["plain", "chat"] = Field(
        "plain",
        description="plain: 47+38=85<eos>; chat: ChatML user/assistant. Unset: chat when data.chat is true.",
    )
    # Share of warm-start prompts that carry a block of other attempts, so that BICC's
    # conditioned prompts are in-distribution. The block goes where the BICC template puts
    # it: the compact template puts it in front of the question ("84\n91\n47+38="). With
    # the block after the question (the separator template) the warm-start was still at
    # 7-10% after 1,500-2,578 steps; in front, it reached 35% in fewer steps than bare
    # prompts (825 vs 1,350 in the measurement).
    context_prob: Float = Field(
        0.5, ge=0, le=1,
        description="Share of warm-start prompts that carry a block of other attempts (BICC's compact layout, in front of the question).",
    )
    context_templates: Annotated[tuple[str, ...], Strict(False)] = Field(
        ("compact",), description="BICC templates the blocks are laid out in, drawn uniformly."
    )
    context_separator: str = Field("\n", description="String between the attempts of a block.")
    context_max_attempts: int = Field(3, ge=0, description="A block holds 1 to this many attempts.")
    context_correct_prob: Float = Field(
        0.3, ge=0, le=1, description="Each attempt of a block is the right answer with this probability."
    )
    context_cut_prob: Float = Field(
        0.25, ge=0, le=1, description="The block's last attempt is cut short with this probability (BICC's cut packing)."
    )
    # Context probe after the warm-start (held-out slice; numbers only, no effect on weights):
    # G samples per prompt, BICC's token budget (the quickstart's: int(0.4 x (16 + 6)) = 8),
    # fresh samples per prompt for the accuracy with and without a block of wrong attempts.
    probe_group_size: int = Field(8, ge=1, description="Context probe after the warm-start: samples per prompt.")
    probe_budget_tokens: int = Field(8, ge=1, description="Context probe: BICC's context budget in tokens.")
    probe_samples: int = Field(
        8, ge=1, description="Context probe: fresh samples per prompt for the accuracy with and without wrong attempts."
    )
    n_train: int = Field(5000, ge=1, description="Problems in the warm-start's train split.")
    n_test: int = Field(500, ge=1, description="Problems in the test split (must match the arithmetic benchmark's).")
    n_val: int = Field(200, ge=1, description="Held-out slice at the end of the train split that measures the warm-start.")
    data_seed: int = Field(0, description="Seed of the warm-start's problems.")
    # warm-start schedule
    target_accuracy: Float = Field(
        0.35, ge=0, le=1,
        description="Warm-start until held-out sampled accuracy reaches this (mixed groups for GRPO); 0: untrained.",
    )
    eval_every: int = Field(25, ge=1, description="Warm-start steps between accuracy checks.")
    # The warm-start is deterministic in its steps, so the step cap decides the outcome; a
    # wall-clock cap only turns a busy machine into a failed build.
    max_warmup_steps: int = Field(
        5000, ge=0, description="Cap on warm-start steps if the target accuracy is never reached."
    )
    max_warmup_seconds: Float | None = Field(
        None, gt=0, description="Optional cap on warm-start wall time (null: only the step cap); below target at a cap is an error."
    )
    warmup_lr: Float = Field(2e-3, gt=0, description="Learning rate of the supervised warm-start.")
    lr_warmup_steps: int = Field(20, ge=0, description="Linear learning-rate ramp of the warm-start, in steps.")
    batch_size: int = Field(64, ge=1, description="Warm-start batch size.")
    weight_decay: Float = Field(0.0, ge=0, description="Weight decay of the warm-start.")
    seed: int = Field(0, description="Seed of the initial weights and of the warm-start's sampling.")

    @model_validator(mode="after")
    def _shapes_and_context(self) -> TinyModelConfig:
        if self.hidden % self.heads:
            raise FieldProblem(
                ("heads",), f"model.tiny.heads ({self.heads}) must divide model.tiny.hidden ({self.hidden})",
                also=(("hidden",),),
            )
        if self.heads % self.kv_heads:
            raise FieldProblem(
                ("kv_heads",), f"model.tiny.kv_heads ({self.kv_heads}) must divide model.tiny.heads ({self.heads})",
                also=(("heads",),),
            )
        if self.context_prob > 0 and (not self.context_templates or self.context_max_attempts < 1):
            raise FieldProblem(
                ("context_prob",), "model.tiny.context_prob > 0 needs context_templates and context_max_attempts >= 1"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON writes and reads them back (tuples as lists)."""
        return self.model_dump(mode="json")

    def replace(self, **changes: Any) -> TinyModelConfig:
        """A validated copy with ``changes`` applied."""
        return type(self).model_validate({**self.model_dump(), **changes})


TINY_PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "chat": {"prompt_format": "chat"},
    "nano": {"layers": 2, "hidden": 64, "heads": 2, "kv_heads": 1, "intermediate": 192},
    "untrained": {"target_accuracy": 0.0},
}
"""``tiny:<preset>`` model names: the fields that differ from the defaults. A ``model.tiny``
block's keys win over the preset's."""


def tiny_preset(model_name: str) -> str | None:
    """``tiny`` -> ``"default"``, ``tiny:nano`` -> ``"nano"``; None for any other model name."""
    if model_name == "tiny":
        return "default"
    if model_name.startswith("tiny:"):
        return model_name.split(":", 1)[1] or "default"
    return None


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
        description='The tiny model; read only when name is "tiny" or "tiny:<preset>".',
    )

    @model_validator(mode="before")
    @classmethod
    def _preset_under_block(cls, data: Any) -> Any:
        # ``tiny:<preset>`` gives the block its defaults; keys written in the block win. The
        # merged block is what a resolved config records, so it reloads to the same model.
        if not (isinstance(data, dict) and isinstance(data.get("name"), str)):
            return data
        preset = tiny_preset(data["name"])
        if preset not in TINY_PRESETS:
            return data  # not a tiny model, or an unknown preset (the preflight names it)
        block = data.get("tiny", {})
        if TINY_PRESETS[preset] and isinstance(block, dict):
            data = {**data, "tiny": {**TINY_PRESETS[preset], **block}}
        return data


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
    dynamic_sampling_max_rounds: int | None = Field(
        10,
        ge=1,
        description="Dynamic sampling (dapo): generation rounds per batch at most, then train on the mixed "
        "groups found (verl's max_num_gen_batches, DAPO's recipe 10); null: no bound.",
    )
    max_completion_length: int = Field(32, ge=1, description="Maximum new tokens per completion.")
    max_prompt_length: int | None = Field(
        None,
        ge=1,
        description="Prompt part of the max sequence length BICC's budget is a fraction of; null: longest prompt of each batch.",
    )
    shared_prefix: bool = Field(
        True,
        description="Every forward of the run, every arm (loss and no-grad passes): run each distinct "
        "prompt of a group once (q, or BICC's conditioned prompt) and score its completions against its "
        "key/value cache (same numbers, fewer tokens); false: every completion recomputes its prompt "
        "(TRL's path). Models or settings it is not checked on fall back with a warning.",
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
    template: Literal["default", "separator", "compact"] = Field(
        "default",
        description=(
            "default: natural-language framing; separator: bare concatenation after the question "
            "(authors' code); compact: each trace + separator, in front of a plain question."
        ),
    )
    separator: str = Field("\n", description="String between packed traces.")
    ratio: Literal["paper", "conditioned"] = Field(
        "paper",
        description="paper: pi(o|q+ctx)/pi_old(o|q); conditioned: pi(o|q+ctx)/pi_old(o|q+ctx).",
    )
    success_threshold: Float = Field(
        0.5,
        description="A task (grader) reward above this counts as correct: BICC's partition, DAPO's dynamic "
        "sampling and the outcome diagnostics.",
    )
    seed: int | None = Field(
        None, ge=0, le=SEED_MAX, description="Seed of trace selection/order (0..2**32-1); null: the experiment seed."
    )
    truncate: Literal["whole", "cut"] = Field(
        "whole",
        description="whole: a trace that does not fit the remaining budget is skipped, never cut; "
        "cut: the last trace is right-truncated to the budget (authors' code).",
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
    transfer_every: int | None = Field(
        None,
        ge=1,
        description="Every N steps log how the BICC update transfers to the plain prompt "
        "(transfer/*; one extra forward+backward pass per micro-batch on those steps); null: off.",
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


# --------------------------------------------------------------------------- sweep


def _shorthand(kind: str) -> Any:
    """``"tpe"`` -> ``{"type": "tpe"}`` (samplers and pruners may be written as a bare name)."""

    def convert(value: Any) -> Any:
        if isinstance(value, str):
            return {"type": value}
        return value

    convert.__name__ = f"{kind}_shorthand"
    return convert


def _param_shorthand(value: Any) -> Any:
    """A bare list is a categorical parameter: ``[sum, mean]`` -> ``{type: categorical, choices: [...]}``."""
    if isinstance(value, list):
        return {"type": "categorical", "choices": value}
    return value


Choice = str | int | float | bool | None


class SearchParam(_Section):
    """One searched config key: a distribution Optuna samples it from.

    ``{type: float, low: 0.1, high: 10, log: true}`` (or ``type: log-float``),
    ``{type: int, low: 1, high: 8, step: 1}``, ``{type: categorical, choices: [sum, mean]}``;
    a bare list is a categorical. Cross-field rules are checked in :class:`SearchConfig`,
    where the key is known.
    """

    type: Literal["float", "log-float", "int", "categorical"] = Field(
        ..., description="Distribution: float, log-float, int or categorical."
    )
    low: Float | None = Field(None, description="Lower bound (float, log-float, int).")
    high: Float | None = Field(None, description="Upper bound, inclusive (float, log-float, int).")
    step: Float | None = Field(
        None, gt=0, description="Discretisation step (float, int); null: continuous / 1."
    )
    log: bool = Field(False, description="Sample on a log scale (float, int); log-float implies it.")
    choices: list[Choice] | None = Field(
        None, description="Values of a categorical parameter (strings, numbers, booleans, null)."
    )

    @property
    def is_log(self) -> bool:
        return self.log or self.type == "log-float"


class SamplerConfig(_Section):
    """The Optuna sampler of a study (``tpe`` by default, seeded)."""

    type: Literal["tpe", "random"] = Field("tpe", description="tpe (default) or random.")
    seed: int | None = Field(
        0,
        description="Seed of the sampler; on resume it is combined with the number of trials so far, "
        "so that a resumed study does not repeat its first proposals. null: unseeded.",
    )
    n_startup_trials: int | None = Field(
        None, ge=0, description="tpe: random trials before TPE starts; null: Optuna's default (10)."
    )
    multivariate: bool | None = Field(
        None, description="tpe: multivariate TPE; null: Optuna's default."
    )

    @model_validator(mode="after")
    def _tpe_only(self) -> SamplerConfig:
        if self.type != "tpe":
            for key in ("n_startup_trials", "multivariate"):
                if key in self.model_fields_set:
                    raise FieldProblem((key,), f"search.sampler.{key} applies to type tpe only")
        return self


PRUNER_KEYS: dict[str, tuple[str, ...]] = {
    "median": ("n_startup_trials", "n_warmup_steps", "interval_steps"),
    "hyperband": ("min_resource", "max_resource", "reduction_factor"),
    "none": (),
}


class PrunerConfig(_Section):
    """Early stopping of unpromising trials, fed with a training metric at each logging step."""

    type: Literal["median", "hyperband", "none"] = Field(
        "none", description="median, hyperband, or none."
    )
    metric: str = Field(
        "reward",
        min_length=1,
        description="Training metric (as TRL logs it) reported to the pruner at each logging step.",
    )
    n_startup_trials: int = Field(
        5, ge=0, description="median: no pruning until this many trials finished."
    )
    n_warmup_steps: int = Field(
        0, ge=0, description="median: no pruning of a trial before this step."
    )
    interval_steps: int = Field(1, ge=1, description="median: steps between pruning checks.")
    min_resource: int = Field(1, ge=1, description="hyperband: minimum steps of a trial.")
    max_resource: int | Literal["auto"] | None = Field(
        None, description="hyperband: maximum steps; null: train.max_steps of the base config."
    )
    reduction_factor: int = Field(3, ge=2, description="hyperband: reduction factor of the brackets.")

    @model_validator(mode="after")
    def _keys_of_type(self) -> PrunerConfig:
        allowed = set(PRUNER_KEYS[self.type]) | {"type", "metric"}
        for key in self.model_fields_set - allowed:
            owner = next((t for t, keys in PRUNER_KEYS.items() if key in keys), None)
            raise FieldProblem(
                (key,), f"search.pruner.{key} applies to type {owner}, not {self.type}"
            )
        if isinstance(self.max_resource, int) and self.max_resource < self.min_resource:
            raise FieldProblem(
                ("max_resource",),
                f"search.pruner.max_resource ({self.max_resource}) must be >= min_resource ({self.min_resource})",
            )
        return self


def _number(value: float) -> str:
    return f"{value:g}"


class SearchConfig(_Section):
    """An Optuna study over config keys (``bicc-lab tune``): what to sample, what to optimise.

    Each trial trains the sweep's base config (base + ``set`` + ``--set``) with the sampled
    values applied to the dotted keys of ``params``.
    """

    params: dict[str, Annotated[SearchParam, BeforeValidator(_param_shorthand)]] = Field(
        ...,
        description="Dotted config key -> distribution, e.g. rcc.coef: {type: log-float, low: 0.1, high: 10}.",
    )
    objective: str = Field(
        ...,
        min_length=1,
        description="Metric to optimise: eval/<benchmark>/<metric> (e.g. eval/arith/avg@4) or a training metric (its last logged value).",
    )
    direction: Literal["maximize", "minimize"] = Field(
        "maximize", description="Optimisation direction."
    )
    n_trials: int = Field(
        20,
        ge=1,
        description="Trials to finish (COMPLETE + PRUNED + FAIL; trials interrupted by a kill are retried, not counted).",
    )
    n_jobs: int = Field(1, ge=1, description="Trials running at once (default of --n-jobs).")
    sampler: Annotated[SamplerConfig, BeforeValidator(_shorthand("sampler"))] = Field(
        default_factory=SamplerConfig, description="Sampler: tpe (seeded) or random."
    )
    pruner: Annotated[PrunerConfig, BeforeValidator(_shorthand("pruner"))] | None = Field(
        None, description="Pruner: median, hyperband or none (null), fed with pruner.metric."
    )
    storage: str | None = Field(
        None,
        min_length=1,
        description="Optuna storage: an RDB URL, or journal:<path> (a journal file on a shared filesystem); null: runs/<study>/optuna.db.",
    )
    study_name: PathName | None = Field(
        None, min_length=1, description="Optuna study name; null: the sweep's name."
    )
    enqueue: list[dict[str, Choice]] = Field(
        default_factory=list,
        description="Parameter sets to try first (e.g. the paper's defaults), once per study.",
    )

    @model_validator(mode="after")
    def _distributions(self) -> SearchConfig:
        if not self.params:
            raise FieldProblem(("params",), "search.params is empty; expected at least one parameter")
        for key, p in self.params.items():
            at = ("params", key)
            where = f"search.params.{key}"
            if p.type == "categorical":
                for field in ("low", "high", "step"):
                    if getattr(p, field) is not None:
                        raise FieldProblem(at + (field,), f"{where}: a categorical has choices, not {field}")
                if "log" in p.model_fields_set:
                    raise FieldProblem(at + ("log",), f"{where}: a categorical has no log scale")
                if not p.choices:
                    raise FieldProblem(
                        at + ("choices",), f"{where}: a categorical needs a non-empty list of choices"
                    )
                seen: list[Any] = []
                for index, value in enumerate(p.choices):
                    if any(type(value) is type(other) and value == other for other in seen):
                        raise FieldProblem(
                            at + ("choices", index),
                            f"{where}: choice {value!r} is repeated",
                            also=(at + (index,),),  # the bare-list form
                        )
                    seen.append(value)
                continue
            if p.choices is not None:
                raise FieldProblem(at + ("choices",), f"{where}: choices belong to type categorical, not {p.type}")
            for field in ("low", "high"):
                if getattr(p, field) is None:
                    raise FieldProblem(at, f"{where}: type {p.type} needs '{field}'")
            assert p.low is not None and p.high is not None
            if p.low > p.high:
                raise FieldProblem(
                    at + ("low",), f"{where}: low ({_number(p.low)}) is above high ({_number(p.high)})"
                )
            if p.is_log and p.low <= 0:
                raise FieldProblem(
                    at + ("low",), f"{where}: a log scale needs low > 0, got {_number(p.low)}"
                )
            if p.is_log and p.step is not None:
                raise FieldProblem(at + ("step",), f"{where}: step and a log scale exclude each other")
            if p.type == "log-float" and "log" in p.model_fields_set and not p.log:
                raise FieldProblem(at + ("log",), f"{where}: type log-float with log: false")
            if p.type == "int":
                for field in ("low", "high", "step"):
                    value = getattr(p, field)
                    if value is not None and not float(value).is_integer():
                        raise FieldProblem(
                            at + (field,), f"{where}: type int needs an integer {field}, got {_number(value)}"
                        )
        for index, entry in enumerate(self.enqueue):
            for key in entry:
                if key not in self.params:
                    raise FieldProblem(
                        ("enqueue", index, key),
                        f"search.enqueue[{index}]: '{key}' is not a search parameter",
                        hint="parameters: " + ", ".join(self.params),
                    )
        return self


class LaunchConfig(_Section):
    """Where the cells of a sweep (or the trials of a study) run: local processes or SLURM jobs."""

    kind: Literal["local", "slurm"] = Field(
        "local", description="local: processes on this machine; slurm: one job per cell (submitit)."
    )
    partition: str | None = Field(None, description="SLURM partition; null: the cluster's default.")
    nodes: int = Field(
        1, ge=1,
        description="Nodes per cell; > 1: accelerate launch across them (with train.vllm_mode: server, the last node serves vLLM).",
    )
    gpus_per_node: int = Field(0, ge=0, description="GPUs per node of a cell (0: CPU only).")
    cpus_per_task: int = Field(1, ge=1, description="CPU cores per node of a cell.")
    mem_gb: Float | None = Field(None, gt=0, description="Memory per node in GB; null: the cluster's default.")
    time_min: int = Field(
        60, ge=1,
        description=(
            "Time limit of one job in minutes; a timed-out cell is requeued and resumes. SLURM may "
            "send its warning up to a minute early: give a job several minutes at least."
        ),
    )
    account: str | None = Field(None, description="SLURM account (--account).")
    qos: str | None = Field(None, description="SLURM quality of service (--qos).")
    constraint: str | None = Field(None, description="SLURM node features (--constraint).")
    array_parallelism: int | None = Field(
        None, ge=1,
        description="Submit the sweep's cells as one job array with at most this many tasks at once; null: one job per cell.",
    )
    setup: list[str] = Field(
        default_factory=list, description="Shell lines run in the job before the cell (module load, conda activate)."
    )
    extra: dict[str, Any] = Field(
        default_factory=dict, description="Any other sbatch option, without the leading -- (e.g. {exclusive: true})."
    )

    @model_validator(mode="after")
    def _slurm_only(self) -> LaunchConfig:
        if self.kind == "local":
            for key in ("partition", "account", "qos", "constraint", "array_parallelism"):
                if getattr(self, key) is not None:
                    raise FieldProblem((key,), f"launch.{key} applies to kind slurm, not local")
            if self.nodes > 1:
                raise FieldProblem(("nodes",), "launch.nodes > 1 needs kind: slurm")
        return self


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
