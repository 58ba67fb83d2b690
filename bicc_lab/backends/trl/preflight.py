"""What only the TRL backend knows about a config, checked before anything heavy loads.

:func:`check_config` is one part of :func:`bicc_lab.preflight.preflight` (which also checks
the model, the data, the benchmarks and the store). Each problem is a :class:`SpecError`
that names its dotted key but no location: the caller knows where the key is written.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from bicc_lab.spec.errors import SpecError
from bicc_lab.spec.models import ExperimentConfig
from bicc_lab.spec.sections import TrainConfig

__all__ = ["OVERRIDABLE", "check_config", "check_data_size", "check_extra", "check_variant", "check_vllm"]

# GRPOConfig fields that bicc-lab sets from the machine or for its own display, not from a
# config key: train.extra may replace them (e.g. report_to=wandb, gradient checkpointing
# off on a GPU with memory to spare). Every other field bicc-lab sets comes from the
# config (or the variant), and an extra key would make the run differ from what its
# config, id and tags say.
OVERRIDABLE = frozenset({"report_to", "disable_tqdm", "gradient_checkpointing", "use_cpu"})

# Where the value of a mapped GRPOConfig field comes from, when not train.<same name>.
_SOURCE = {
    "output_dir": "--output-dir / train.output_dir",
    "seed": "seed",
    "data_seed": "seed",
    "warmup_steps": "train.warmup_ratio",
    "save_strategy": "train.save_steps (resume needs step checkpoints)",
    "epsilon": "the variant (variant_overrides.epsilon_low)",
    "epsilon_high": "the variant (variant_overrides.epsilon_high)",
    "scale_rewards": "the variant (variant_overrides.advantage_scale)",
    "loss_type": "the variant (variant_overrides.trl_loss_type)",
    "importance_sampling_level": "the variant",
}


def check_config(config: ExperimentConfig) -> None:
    """Every backend check of one resolved config (cheap ones first; TRL is imported only
    when ``train.extra`` is not empty)."""
    check_variant(config)
    check_vllm(config)
    check_extra(config)


def prompts_per_generation(train: TrainConfig, processes: int = 1) -> int:
    """Distinct prompts one generation batch takes: TRL's RepeatSampler yields only full
    batches of ``generation_batch_size / num_generations`` prompts, so a data set smaller
    than one trains 0 steps."""
    return train.generation_batch_size * processes // train.num_generations


def check_data_size(config: ExperimentConfig) -> None:
    """The training data holds at least one generation batch of prompts (one process: more
    processes need more, which ``train_run`` reports after training)."""
    from bicc_lab.tasks.registry import count_task_records

    data, train = config.data, config.train
    count = count_task_records(data.train, data_dir=data.data_dir, num_train=data.num_train, digits=data.digits)
    need = prompts_per_generation(train)
    if count is None or count >= need:
        return
    steps = train.steps_per_generation or train.gradient_accumulation_steps
    limited = f" (data.num_train = {data.num_train})" if data.num_train is not None and data.num_train == count else ""
    raise SpecError(
        f"{count} training record(s){limited}, fewer than one generation batch of {need} prompts "
        f"(train.per_device_train_batch_size {train.per_device_train_batch_size} x steps_per_generation {steps} "
        f"/ num_generations {train.num_generations}): it would train 0 of {train.max_steps} steps",
        key="data.num_train" if limited else "data.train",
        hint="add records, or lower train.per_device_train_batch_size",
    )


def check_variant(config: ExperimentConfig) -> None:
    """The variant and its overrides build a valid spec (e.g. no unknown override field), and
    a variant's own policy loss is registered (torch is imported only for such a variant)."""
    from bicc_lab.backends.trl.run import variant_spec

    key = "variant_overrides" if config.variant_overrides else "variant"
    try:
        spec = variant_spec(config)
    except (ValueError, TypeError) as exc:
        raise SpecError(str(exc), key=key) from None
    if spec.policy_loss is not None:
        from bicc_lab.algorithms.variants import UnknownPolicyLossError, get_policy_loss

        try:
            get_policy_loss(spec.policy_loss)
        except UnknownPolicyLossError as exc:
            raise SpecError(str(exc), key=key) from None


def check_vllm(config: ExperimentConfig) -> None:
    """vLLM generation is validated here even where it cannot run (no GPU)."""
    if not config.train.use_vllm:
        return
    extra = config.train.extra
    if config.train.vllm_mode == "server" and not (
        "vllm_server_base_url" in extra or "vllm_server_host" in extra
    ):
        raise SpecError(
            "train.vllm_mode 'server' needs train.extra.vllm_server_base_url (or vllm_server_host/port)",
            key="train.vllm_mode",
            hint="start `trl vllm-serve --model ...` first",
        )
    if config.model.name == "tiny" or config.model.name.startswith("tiny:"):
        raise SpecError(
            "train.use_vllm needs a real model (model.name), not the tiny CPU model",
            key="train.use_vllm",
        )


def check_extra(config: ExperimentConfig) -> None:
    """``train.extra`` keys are GRPOConfig fields, and none replaces a field set from the config.

    Reads the dataclass fields of TRL's GRPOConfig (imports trl; builds no config and no model).
    """
    extra = config.train.extra
    if not extra:
        return
    import dataclasses

    from trl import GRPOConfig

    from bicc_lab.backends.trl.run import grpo_config_kwargs

    fields = sorted(f.name for f in dataclasses.fields(GRPOConfig) if f.init)
    mapped = grpo_config_kwargs(config, Path("."), use_cpu=True)
    for key in extra:
        dotted = f"train.extra.{key}"
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            raise SpecError(
                f"{dotted}: '{key}' is not a field of TRL's GRPOConfig",
                key=dotted,
                hint=f"did you mean '{close[0]}'?" if close else "train.extra passes GRPOConfig fields through",
            )
        if key in mapped and key not in OVERRIDABLE:
            source = _SOURCE.get(key) or (f"train.{key}" if key in TrainConfig.model_fields else None)
            raise SpecError(
                f"{dotted} would replace the {key} that bicc-lab sets"
                + (f" from {source}" if source else ""),
                key=dotted,
                hint=f"set {source} instead" if source else "remove it from train.extra",
            )
