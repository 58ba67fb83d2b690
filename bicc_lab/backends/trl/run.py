"""Turn one resolved ``ExperimentConfig`` into a trained model with TRL.

Output directory layout (everything a sweep, `eval` and `report` read back):

    <output_dir>/config.yaml         the resolved config (written before training starts)
    <output_dir>/checkpoint-<N>/     Trainer checkpoints every ``train.save_steps``
    <output_dir>/metrics.jsonl       one JSON object per logging step (TRL + bicc/rcc/contrast)
    <output_dir>/final/              the final model + tokenizer, loadable by `bicc-lab eval`
    <output_dir>/train_result.json   written last and atomically: its presence means "finished"

A killed run restarts from its last checkpoint (``resume=True``); the data order and RNG
state come back with the checkpoint, so the continued run follows the same trajectory up
to floating-point nondeterminism of the kernels (identical on CPU in our tests).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bicc_lab.errors import UserError
from bicc_lab.fileio import write_atomic
from bicc_lab.spec.models import ExperimentConfig
from bicc_lab.spec.sections import tiny_preset

MetricsCallback = Callable[[int, dict[str, float]], None]


class ShortTrainingError(UserError):
    """Training ended before ``train.max_steps`` without being asked to stop."""


@dataclass
class TrainResult:
    output_dir: str
    final_model_dir: str
    steps: int
    wall_time_s: float
    mean_step_time_s: float | None
    resumed_from: str | None
    final_metrics: dict[str, float] = field(default_factory=dict)


def variant_spec(config: ExperimentConfig):
    from bicc_lab.algorithms.registry import resolve_variant

    return resolve_variant(config.variant, config.variant_overrides, clip_ratio_c=config.clip_ratio_c)


def resolve_model(config: ExperimentConfig, *, progress: bool = True) -> str:
    """A loadable model reference: the tiny model's cache dir (built on first use) or the name."""
    from bicc_lab.models.loading import resolve_model_path

    is_tiny = tiny_preset(config.model.name) is not None
    return resolve_model_path(
        config.model.name, tiny_config=config.model.tiny if is_tiny else None, progress=progress
    )


def grpo_config(config: ExperimentConfig, output_dir: Path, *, use_cpu: bool | None = None):
    """Map the spec onto TRL's GRPOConfig (``train.extra`` passes through unchanged)."""
    import torch
    from trl import GRPOConfig

    if use_cpu is None:
        use_cpu = not torch.cuda.is_available()
    kwargs = grpo_config_kwargs(config, output_dir, use_cpu=use_cpu)
    kwargs.update(config.train.extra)
    return GRPOConfig(**kwargs)


def grpo_config_kwargs(config: ExperimentConfig, output_dir: Path, *, use_cpu: bool) -> dict[str, Any]:
    """The GRPOConfig fields bicc-lab sets itself (the preflight refuses ``train.extra`` keys
    that would silently replace one of them)."""
    spec = variant_spec(config)
    train = config.train
    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir),
        seed=config.seed,
        data_seed=config.seed,
        max_steps=train.max_steps,
        learning_rate=train.learning_rate,
        per_device_train_batch_size=train.per_device_train_batch_size,
        gradient_accumulation_steps=train.gradient_accumulation_steps,
        steps_per_generation=train.steps_per_generation,
        num_iterations=train.num_iterations,
        num_generations=train.num_generations,
        max_completion_length=train.max_completion_length,
        temperature=train.temperature,
        top_p=train.top_p,
        beta=train.beta,
        epsilon=spec.epsilon_low,
        epsilon_high=spec.epsilon_high,
        loss_type=spec.trl_loss_type,
        importance_sampling_level=spec.trl_importance_sampling_level,
        scale_rewards="group" if spec.advantage_scale == "group_std" else "none",
        logging_steps=train.logging_steps,
        save_strategy="steps",
        save_steps=train.save_steps,
        warmup_steps=train.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio
        weight_decay=train.weight_decay,
        max_grad_norm=train.max_grad_norm,
        bf16=train.bf16,
        use_cpu=use_cpu,
        use_vllm=train.use_vllm,
        vllm_mode=train.vllm_mode,
        report_to="none",
        disable_tqdm=True,
        gradient_checkpointing=False if use_cpu else True,
    )
    return kwargs


def reward_functions(config: ExperimentConfig) -> list[Callable[..., list[float]]]:
    """The run's reward functions; the first is the task's grader (its reward is the outcome)."""
    from bicc_lab.tasks.registry import reward_kind
    from bicc_lab.tasks.rewards import get_reward_function

    return [get_reward_function(reward_kind(config.data.train))]


def train_dataset(config: ExperimentConfig):
    from bicc_lab.tasks.data_dir import resolve_data_dir
    from bicc_lab.tasks.registry import build_dataset

    data = config.data
    kwargs: dict[str, Any] = dict(
        split="train", data_dir=resolve_data_dir(data.data_dir), chat=data.chat,
        limit=data.num_train, seed=0, digits=data.digits,
    )
    if data.problem_field:
        kwargs["problem_field"] = data.problem_field
    if data.answer_field:
        kwargs["answer_field"] = data.answer_field
    return build_dataset(data.train, **kwargs)


def last_checkpoint(output_dir: Path, *, set_aside: bool = True, say: Callable[[str], None] | None = None) -> str | None:
    """The newest checkpoint that can be resumed (see :func:`checkpoint_problem`).

    A newer one that cannot (a kill during its save, a truncated weights file) is skipped
    with a warning naming it and, with ``set_aside`` (main process only), renamed to
    ``torn-checkpoint-N`` so that it is neither resumed nor retried, and stays for a look."""
    if not output_dir.is_dir():
        return None
    candidates = []
    for path in output_dir.glob("checkpoint-*"):
        suffix = path.name.rsplit("-", 1)[-1]
        if path.is_dir() and suffix.isdigit():
            candidates.append((int(suffix), path))
    say = say or _warn
    main = int(os.environ.get("RANK", "0")) == 0
    for _, path in sorted(candidates, reverse=True):
        problem = checkpoint_problem(path)
        if problem is None:
            return str(path)
        moved = ""
        if set_aside and main:
            target = path.with_name(f"torn-{path.name}")
            n = 1
            while target.exists():
                n += 1
                target = path.with_name(f"torn{n}-{path.name}")
            try:
                path.rename(target)
                moved = f"; set aside as {target.name}"
            except OSError:
                pass
        say(f"warning: checkpoint {path} cannot be resumed ({problem}){moved}; trying the one before it")
    return None


def _warn(message: str) -> None:
    import sys

    print(message, file=sys.stderr, flush=True)


def checkpoint_problem(path: Path) -> str | None:
    """Why the checkpoint directory ``path`` cannot be resumed, or None. Cheap: no tensor
    is read. The Trainer writes ``trainer_state.json`` last, so a save cut by a kill lacks
    it; a file cut later (a full disk, a copy that stopped) is found by its size: a
    ``.safetensors`` file must end where its header's last tensor ends, a torch file
    (``optimizer.pt``, ``rng_state.pth``, ...) is a zip whose directory sits at its end."""
    import zipfile

    try:
        json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return "no readable trainer_state.json: its save did not finish"
    # (Only the files that are there: a DeepSpeed or FSDP checkpoint keeps its weights in
    # subfolders of its own format, which the Trainer checks when it loads them.)
    for file in sorted(path.glob("*.safetensors")):
        problem = safetensors_problem(file)
        if problem is not None:
            return f"{file.name}: {problem}"
    for file in sorted([*path.glob("*.pt"), *path.glob("*.pth"), *path.glob("*.bin")]):
        try:
            with zipfile.ZipFile(file):
                pass
        except (OSError, zipfile.BadZipFile) as exc:
            return f"{file.name}: {exc}"
    return None


def safetensors_problem(file: Path) -> str | None:
    """Why ``file`` is not a whole safetensors file (8-byte header length, JSON header, data
    up to the last tensor's end offset), or None."""
    import struct

    try:
        size = file.stat().st_size
        with file.open("rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                return f"truncated ({size} bytes, no header)"
            (length,) = struct.unpack("<Q", head)
            if length > size - 8:
                return f"truncated: header length {length} runs past the end of the file ({size} bytes)"
            header = json.loads(fh.read(length))
    except OSError as exc:
        return f"unreadable ({exc})"
    except ValueError:
        return "header is not valid JSON"
    if not isinstance(header, dict):
        return "header is not a JSON object"
    try:
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (TypeError, KeyError, IndexError, ValueError):
        return "header has no valid data_offsets"
    expected = 8 + length + end
    if size != expected:
        return f"truncated: {size} bytes, its header describes {expected}"
    return None


def quiet_transformers() -> None:
    """Silence what would bury our progress lines: per-file tqdm bars and known rename warnings."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    # TRL 1.16 still sets `gradient_checkpointing`, which transformers 5 is renaming.
    warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*is deprecated", category=FutureWarning)


def build_trainer(config: ExperimentConfig, output_dir: Path, *, progress: bool = True, callbacks=()):
    """Model, tokenizer, data, rewards and the BICC/RCC trainer for one config."""
    from bicc_lab.backends.trl.trainer import BiccGRPOTrainer

    quiet_transformers()
    from bicc_lab.models.loading import load_model_and_tokenizer

    dataset = train_dataset(config)  # before the model: a bad record fails in seconds, not minutes
    model_ref = resolve_model(config, progress=progress)
    model, tokenizer = load_model_and_tokenizer(
        model_ref,
        dtype=config.model.dtype,
        attn_implementation=config.model.attn_implementation,
        trust_remote_code=config.model.trust_remote_code,
    )
    args = grpo_config(config, output_dir)
    rewards = reward_functions(config)
    trainer = BiccGRPOTrainer(
        model=model,
        reward_funcs=rewards,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=list(callbacks),
        variant=variant_spec(config),
        bicc=config.bicc,
        rcc=config.rcc,
        std=config.train.std,
        max_prompt_length=config.train.max_prompt_length,
        grad_variance=config.diagnostics.grad_variance,
        transfer_every=config.diagnostics.transfer_every,
        outcome_reward=rewards[0].__name__,  # TRL names a function reward by its __name__
        max_generation_rounds=config.train.dynamic_sampling_max_rounds,
        shared_prefix=config.train.shared_prefix,
    )
    from transformers.trainer_callback import PrinterCallback

    # Metrics go to metrics.jsonl and the progress display; the printed dicts are noise.
    trainer.remove_callback(PrinterCallback)
    return trainer


def train_run(
    config: ExperimentConfig,
    output_dir: str | os.PathLike[str],
    *,
    resume: bool = True,
    progress: bool = True,
    on_log: MetricsCallback | None = None,
    callbacks: tuple | list = (),
    stopped: Callable[[], str | None] | None = None,
) -> TrainResult:
    """Train one run; resume from the newest checkpoint in ``output_dir`` when there is one.
    With ``resume``, a run that finished (``train_result.json``) is returned as it is.

    A run that ends below ``train.max_steps`` raises :class:`ShortTrainingError` (no final
    model, no ``train_result.json``: it is not finished), unless ``stopped()`` says why a
    callback stopped it early on purpose (tune's pruning)."""
    import yaml

    from bicc_lab.backends.trl.callbacks import MetricsFileCallback, RichProgressCallback

    output_dir = Path(output_dir)
    done = read_train_result(output_dir) if resume else None
    if done is not None:  # trained before (e.g. not evaluated yet): never trained, nor written, again
        print(f"{output_dir} is trained already ({done.steps} steps, train_result.json); not training it again")
        return done
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    checkpoint = last_checkpoint(output_dir) if resume else None
    metrics_file = MetricsFileCallback(output_dir / "metrics.jsonl", on_log=on_log, truncate_after=_step_of(checkpoint))
    all_callbacks = [metrics_file, *callbacks]
    if progress:
        all_callbacks.append(RichProgressCallback(label=config.name))
    trainer = build_trainer(config, output_dir, progress=progress, callbacks=all_callbacks)

    start = time.perf_counter()
    if checkpoint is not None and _step_of(checkpoint) >= trainer.args.max_steps > 0:
        # Killed after its last checkpoint: the Trainer resumed there would train one step
        # more than max_steps; the checkpoint already is the trained model.
        from transformers import TrainerState

        trainer._load_from_checkpoint(checkpoint)
        trainer.state = TrainerState.load_from_json(str(Path(checkpoint) / "trainer_state.json"))
    else:
        trainer.train(resume_from_checkpoint=checkpoint)
    wall = time.perf_counter() - start
    steps = trainer.state.global_step
    if steps < trainer.args.max_steps and not (stopped is not None and stopped()):
        groups = trainer.args.generation_batch_size // trainer.args.num_generations
        raise ShortTrainingError(
            f"trained {steps} of {trainer.args.max_steps} steps: {len(trainer.train_dataset)} training prompts, "
            f"one generation batch takes {groups} (TRL uses full batches only); the run is not finished"
        )

    final_dir = output_dir / "final"
    trainer.save_model(str(final_dir))
    if trainer.is_world_process_zero():  # one writer when several processes train (torchrun)
        trainer.processing_class.save_pretrained(str(final_dir))
    result = TrainResult(
        output_dir=str(output_dir),
        final_model_dir=str(final_dir),
        steps=trainer.state.global_step,
        wall_time_s=wall,
        mean_step_time_s=metrics_file.mean("step_time"),
        resumed_from=checkpoint,
        final_metrics=metrics_file.last,
    )
    if trainer.is_world_process_zero():
        write_atomic(output_dir / "train_result.json", json.dumps(asdict(result), indent=2, default=str))
    return result


def _step_of(checkpoint: str | None) -> int | None:
    if checkpoint is None:
        return None
    return int(Path(checkpoint).name.rsplit("-", 1)[1])


def read_train_result(output_dir: str | os.PathLike[str]) -> TrainResult | None:
    path = Path(output_dir) / "train_result.json"
    if not path.is_file():
        return None
    return TrainResult(**json.loads(path.read_text()))
