"""bicc-lab's baseline arm against stock TRL ``GRPOTrainer``: same model, data, seed and
``GRPOConfig``, in one process, alternating.

Run:
    .venv/bin/python benchmarks/trl_peer.py paper      [--steps 4] [--rounds 2]
    .venv/bin/python benchmarks/trl_peer.py compute    [--steps 4] [--rounds 2]
    .venv/bin/python benchmarks/trl_peer.py quickstart [--steps 20] [--rounds 2]

``compute`` and ``quickstart`` are ``benchmarks/step_cost.py``'s settings. ``paper`` has the
shape of the paper's setting, scaled down: the compute-bound model (Qwen2, 4 layers, hidden
512, random weights), chat-template prompts of 25 tokens and completions of exactly 75
(prompts a quarter of each sequence), G = 8, 8 groups per step in one micro-batch.

Each round trains a fresh stock ``GRPOTrainer`` and a fresh bicc-lab baseline trainer
(``BiccGRPOTrainer``, BICC and RCC off, ``train.shared_prefix`` at its default, on), both
from the same loaded weights and the same ``GRPOConfig`` (``grpo_config``), for ``--steps``
optimizer steps; the first ``--warmup`` steps are not timed. Per step: the step time
(step begin to step end, generation included), the training-pass time (``training_step``
minus the generation inside it: forward + backward), each as wall and process CPU time;
gradient tokens per step (stock: the prompt and completion tokens of every loss forward;
bicc-lab: its ``tokens/grad_per_step`` counter); on a GPU, CUDA's peak allocation per
trainer (reset before each). On a CPU no per-trainer peak is recorded: the process's peak
resident set only grows, so it cannot be split between trainers that alternate in one
process. Ratios are bicc-lab / stock within a round, then the median over rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_cost import ROOT, compute_bound_model  # noqa: E402

PAPER_PROMPT_TOKENS, PAPER_COMPLETION_TOKENS = 25, 75


def _parity_reward(completions, **kwargs) -> list[float]:
    """Mixed groups from an untrained model: 1 when the completion's character codes sum to
    an even number (plain text, or a chat completion's message contents)."""
    texts = [c if isinstance(c, str) else "".join(m["content"] for m in c) for c in completions]
    return [float(sum(map(ord, t)) % 2 == 0) for t in texts]


def overrides(setting: str, args, model_dir: Path | None) -> list[str]:
    sets = [f"variant={args.variant}", f"train.max_steps={args.steps}", f"train.save_steps={args.steps * 10}",
            "train.logging_steps=1", "eval.enabled=false", "diagnostics.grad_variance=false"]
    if setting in ("compute", "paper"):
        completion = 64 if setting == "compute" else PAPER_COMPLETION_TOKENS
        sets += [f"model.name={model_dir}", f"train.max_completion_length={completion}",
                 "train.max_prompt_length=32", "train.per_device_train_batch_size=64",
                 "train.gradient_accumulation_steps=1", "train.num_generations=8",
                 f"train.extra={{generation_kwargs: {{min_new_tokens: {completion}}}}}", "train.learning_rate=1e-12"]
    if setting == "paper":
        sets += ["data.chat=true"]
    return sets


class Timers:
    """Per optimizer step: step time, training-pass time (training_step minus generation),
    wall and CPU; installed on a trainer instance and as a callback."""

    def __init__(self, trainer) -> None:
        from transformers import TrainerCallback

        self.clock = {"gen": [0.0, 0.0], "train": [0.0, 0.0]}
        self.steps: list[dict[str, float]] = []
        self._wrap(trainer, "_generate_and_score_completions", "gen")
        self._wrap(trainer, "training_step", "train")
        timers = self

        class _Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                timers._begin = (time.perf_counter(), time.process_time(),
                                 {k: list(v) for k, v in timers.clock.items()})

            def on_step_end(self, args, state, control, **kwargs):
                wall, cpu, before = timers._begin
                spent = {k: [v[0] - before[k][0], v[1] - before[k][1]] for k, v in timers.clock.items()}
                timers.steps.append({
                    "step_wall_s": time.perf_counter() - wall, "step_cpu_s": time.process_time() - cpu,
                    "pass_wall_s": spent["train"][0] - spent["gen"][0],
                    "pass_cpu_s": spent["train"][1] - spent["gen"][1],
                })

        trainer.add_callback(_Callback())

    def _wrap(self, trainer, name: str, key: str) -> None:
        inner = getattr(trainer, name)

        def timed(*args, **kwargs):
            wall, cpu = time.perf_counter(), time.process_time()
            try:
                return inner(*args, **kwargs)
            finally:
                self.clock[key][0] += time.perf_counter() - wall
                self.clock[key][1] += time.process_time() - cpu

        setattr(trainer, name, timed)


def count_stock_grad_tokens(trainer, totals: dict[str, float]) -> None:
    """Stock TRL's loss forward runs [prompt ⊕ completion] per sequence: count its real tokens."""
    inner = trainer._compute_loss

    def counted(model, inputs):
        totals["grad"] += float(inputs["prompt_mask"].sum() + inputs["completion_mask"].sum())
        return inner(model, inputs)

    trainer._compute_loss = counted


def run_one(kind: str, setting: str, config, args) -> dict:
    import torch
    from trl import GRPOTrainer

    from bicc_lab.backends.trl.run import (
        build_trainer,
        grpo_config,
        resolve_model,
        reward_functions,
        train_dataset,
    )
    from bicc_lab.models.loading import load_model_and_tokenizer

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as tmp:
        if kind == "bicc-lab":
            trainer = build_trainer(config, Path(tmp), progress=False)
        else:
            model, tokenizer = load_model_and_tokenizer(
                resolve_model(config, progress=False), dtype=config.model.dtype,
                attn_implementation=config.model.attn_implementation,
                trust_remote_code=config.model.trust_remote_code)
            trainer = GRPOTrainer(model=model, reward_funcs=reward_functions(config), args=grpo_config(config, Path(tmp)),
                                  train_dataset=train_dataset(config), processing_class=tokenizer)
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)  # as build_trainer does: the printed dicts are noise
        if setting in ("compute", "paper"):
            trainer.reward_funcs, trainer.reward_func_names = [_parity_reward], ["parity"]
        stock_tokens = {"grad": 0.0}
        if kind == "stock":
            count_stock_grad_tokens(trainer, stock_tokens)
        timers = Timers(trainer)
        trainer.train()
        steps = trainer.state.global_step
        grad = (trainer._token_totals["grad"] if kind == "bicc-lab" else stock_tokens["grad"]) / steps
    timed = timers.steps[args.warmup:]
    row = {"trainer": kind, "steps": steps, "grad_tokens_per_step": grad,
           **{key: statistics.median(s[key] for s in timed) for key in timed[0]}}
    row["peak_memory_mib"] = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("setting", choices=["paper", "compute", "quickstart"])
    parser.add_argument("--steps", type=int, default=None, help="steps per trainer (paper/compute 4, quickstart 20)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed first steps")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variant", default="grpo")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (CPU)")
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args()
    args.steps = args.steps or (20 if args.setting == "quickstart" else 4)

    import torch

    torch.set_num_threads(args.threads)
    from bicc_lab.backends.trl.run import quiet_transformers
    from bicc_lab.spec import load_experiment

    quiet_transformers()
    model_dir = None
    if args.setting != "quickstart":
        model_dir = compute_bound_model(Path(tempfile.gettempdir()) / "bicc-lab-compute-bound")
    config = load_experiment(ROOT / "experiments" / "tiny.yaml", overrides(args.setting, args, model_dir))
    print(f"load before: {os.getloadavg()}", file=sys.stderr)
    rows = []
    for round_index in range(args.rounds):
        order = ("stock", "bicc-lab") if round_index % 2 == 0 else ("bicc-lab", "stock")
        for kind in order:
            row = {**run_one(kind, args.setting, config, args), "round": round_index}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    print(f"load after: {os.getloadavg()}", file=sys.stderr)

    print(f"\n{args.setting}: {args.variant}, {args.steps} steps per trainer ({args.warmup} untimed), "
          f"{args.rounds} rounds, torch threads {args.threads}, device {'cuda' if torch.cuda.is_available() else 'cpu'}\n")
    print("| measure | stock TRL | bicc-lab baseline | ratio (rounds) |")
    print("|---|---|---|---|")
    measures = [("step CPU time", "step_cpu_s", "s"), ("step wall time", "step_wall_s", "s"),
                ("training-pass CPU time", "pass_cpu_s", "s"), ("training-pass wall time", "pass_wall_s", "s"),
                ("grad tokens/step", "grad_tokens_per_step", ""), ("peak memory (MiB)", "peak_memory_mib", "")]
    for label, key, unit in measures:
        if rows[0][key] is None:
            continue
        ratios, ours, stock = [], [], []
        for r in range(args.rounds):
            mine = next(x for x in rows if x["round"] == r and x["trainer"] == "bicc-lab")
            theirs = next(x for x in rows if x["round"] == r and x["trainer"] == "stock")
            ratios.append(mine[key] / theirs[key])
            ours.append(mine[key])
            stock.append(theirs[key])

        def show(values, unit=unit):
            value = statistics.median(values)
            return f"{value * 1000:.0f} ms" if unit == "s" else f"{value:.0f}"

        print(f"| {label} | {show(stock)} | {show(ours)} | {statistics.median(ratios):.2f}× "
              f"({', '.join(f'{x:.2f}' for x in ratios)}) |")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
