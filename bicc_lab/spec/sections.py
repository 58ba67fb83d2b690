"""The sections of an experiment config: model (and the offline tiny model), data, train,
bicc, rcc, eval, diagnostics and tracking.

Every section forbids unknown keys; :class:`~bicc_lab.spec.models.ExperimentConfig`
puts them together.

Imports: pydantic, the standard library and the torch-free variant registry only (the
CLI imports this at start-up).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    ConfigDict,
    Field,
    Strict,
    field_validator,
    model_validator,
)

from bicc_lab.spec.fields import SEED_MAX, FieldProblem, Float, _Section

__all__ = [
    "BiccConfig",
    "DataConfig",
    "DiagnosticsConfig",
    "EvalConfig",
    "ModelConfig",
    "RccConfig",
    "TINY_PRESETS",
    "TinyModelConfig",
    "TrackingConfig",
    "TrainConfig",
    "tiny_preset",
]


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
