"""What BICC and RCC cost per training step: step time and tokens, per arm, in one process.

Run:
    .venv/bin/python benchmarks/step_cost.py quickstart [--steps 40] [--rounds 2]
    .venv/bin/python benchmarks/step_cost.py compute    [--steps 6]  [--rounds 2]

``quickstart`` is experiments/tiny.yaml as sweeps/quickstart.yaml trains it (the warm-started
0.8M-parameter model, its reward, 8 prompts x 8 completions of <= 6 tokens per step).
``compute`` is a compute-bound tiny-family model (Qwen2, 4 layers, hidden 512, random
weights, about 9M parameters), 8 groups of 8 per step in one micro-batch, completions of
exactly 64 tokens (``min_new_tokens``), a prompt budget of 16 and a BICC context budget of
40% of that 80-token sequence, filled by cutting traces (``truncate: cut``). Its reward is a
parity rule on the completion text so that groups are mixed (an untrained model never
solves the task), and its learning rate is 1e-12, so every arm samples from the same
policy: a cost measurement needs neither learning nor a task.

Arms run one after another, ``--rounds`` times in alternation (base, +RCC, +BICC, ... then
again), each a fresh trainer of ``--steps`` optimizer steps; the first ``--warmup`` steps of
each are not timed. Step time is measured between the Trainer's step-begin and step-end
(generation included), as wall time and as this process's CPU time: with one torch thread
the CPU time is the work done, and it hardly moves when other jobs load the machine, while
the wall time does. Token counts are the trainer's ``tokens/*_per_step`` counters.
Ratios are against the baseline arm of the same round, then the median over rounds.
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

ROOT = Path(__file__).resolve().parents[1]
ARMS = {
    "base": {},
    "rcc": {"rcc.enabled": "true"},
    "bicc": {"bicc.enabled": "true"},
    "bicc+rcc": {"bicc.enabled": "true", "rcc.enabled": "true"},
    # The per-sequence path (train.shared_prefix: false) for every arm: ratios compare arms
    # on the same path.
    "base-unshared": {"train.shared_prefix": "false"},
    "rcc-unshared": {"rcc.enabled": "true", "train.shared_prefix": "false"},
    "bicc-unshared": {"bicc.enabled": "true", "train.shared_prefix": "false"},
    "bicc+rcc-unshared": {"bicc.enabled": "true", "rcc.enabled": "true", "train.shared_prefix": "false"},
}
COMPUTE = {"layers": 4, "hidden": 512, "heads": 8, "kv_heads": 2, "intermediate": 1024}


def _parity_reward(completions, **kwargs):
    return [float(sum(map(ord, c)) % 2 == 0) for c in completions]


def compute_bound_model(directory: Path) -> Path:
    from bicc_lab.models.tiny import TinyModelConfig, build_tokenizer, build_untrained_model

    if not (directory / "config.json").is_file():
        tokenizer = build_tokenizer()
        model = build_untrained_model(TinyModelConfig(**COMPUTE, seed=0), tokenizer)
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
    return directory


def overrides(setting: str, arm: str, args, model_dir: Path | None) -> list[str]:
    sets = [f"variant={args.variant}", f"train.max_steps={args.steps}", f"train.save_steps={args.steps * 10}",
            "train.logging_steps=1", "eval.enabled=false", "diagnostics.grad_variance=false"]
    if setting == "compute":
        sets += [f"model.name={model_dir}", "train.max_completion_length=64", "train.max_prompt_length=16",
                 "train.per_device_train_batch_size=64", "train.gradient_accumulation_steps=1",
                 "train.extra={generation_kwargs: {min_new_tokens: 64}}", "train.learning_rate=1e-12",
                 "bicc.context_fraction=0.4", "bicc.truncate=cut"]
    return sets + [f"{k}={v}" for k, v in ARMS[arm].items()]


class StepTimer:
    def __init__(self) -> None:
        from transformers import TrainerCallback

        timer = self

        class _Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                timer._start = (time.perf_counter(), time.process_time())

            def on_step_end(self, args, state, control, **kwargs):
                timer.times.append(time.perf_counter() - timer._start[0])
                timer.cpu_times.append(time.process_time() - timer._start[1])

        self.times: list[float] = []
        self.cpu_times: list[float] = []
        self._start = (0.0, 0.0)
        self.callback = _Callback()


def run_arm(setting: str, arm: str, args, model_dir: Path | None, profile: bool) -> dict:
    from bicc_lab.backends.trl.run import build_trainer
    from bicc_lab.spec import load_experiment

    config = load_experiment(ROOT / "experiments" / "tiny.yaml", overrides(setting, arm, args, model_dir))
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(config, Path(tmp), progress=False, callbacks=[timer.callback])
        if setting == "compute":
            trainer.reward_funcs = [_parity_reward]
            trainer.reward_func_names = ["parity"]
        if profile:
            import cProfile
            import pstats

            profiler = cProfile.Profile()
            profiler.enable()
            trainer.train()
            profiler.disable()
            stats = pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative")
            print(f"\n=== profile: {arm} ===", file=sys.stderr)
            stats.print_stats(45)
        else:
            trainer.train()
        steps = trainer.state.global_step
        tokens = {k: v / steps for k, v in trainer._token_totals.items()}
        conditioned = [x["bicc/frac_conditioned_groups"] for x in trainer.state.log_history
                       if "bicc/frac_conditioned_groups" in x]
    return {
        "arm": arm, "steps": steps, "step_time_s": statistics.median(timer.times[args.warmup:]),
        "step_cpu_s": statistics.median(timer.cpu_times[args.warmup:]),
        "tokens": tokens, "frac_conditioned_groups": statistics.mean(conditioned) if conditioned else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("setting", choices=["quickstart", "compute"])
    parser.add_argument("--steps", type=int, default=None, help="steps per arm (quickstart 40, compute 6)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed first steps (quickstart 5, compute 1)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variant", default="grpo")
    parser.add_argument("--arms", default=None, help="comma-separated subset of " + ", ".join(ARMS))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: a fair share of a busy box)")
    parser.add_argument("--profile", default=None, help="cProfile this arm (first round) to stderr")
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args()
    compute = args.setting == "compute"
    args.steps = args.steps or (6 if compute else 40)
    args.warmup = args.warmup if args.warmup is not None else (1 if compute else 5)
    arms = (args.arms or ("base,rcc,bicc,bicc+rcc,bicc-unshared" if compute else "base,rcc,bicc,bicc+rcc")).split(",")

    import torch

    torch.set_num_threads(args.threads)
    from bicc_lab.backends.trl.run import quiet_transformers

    quiet_transformers()
    model_dir = compute_bound_model(Path(tempfile.gettempdir()) / "bicc-lab-compute-bound") if compute else None
    print(f"load before: {os.getloadavg()}", file=sys.stderr)
    rows = []
    for round_index in range(args.rounds):
        for arm in arms:
            row = run_arm(args.setting, arm, args, model_dir, profile=(arm == args.profile and round_index == 0))
            row["round"] = round_index
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    print(f"load after: {os.getloadavg()}", file=sys.stderr)

    print(f"\n{args.setting}: {args.variant}, {args.steps} steps per arm ({args.warmup} untimed), "
          f"{args.rounds} rounds, torch threads {args.threads}\n")
    print("| arm | step CPU time | CPU-time ratio | step wall time | wall-time ratio | grad tokens/step | ratio | "
          "no-grad policy | no-grad reference | conditioned prefix | frac conditioned groups |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for arm in arms:
        mine = [r for r in rows if r["arm"] == arm]
        ratios, cpu_ratios, grad_ratios = [], [], []
        for r in mine:
            base = next(b for b in rows if b["arm"] == arms[0] and b["round"] == r["round"])
            ratios.append(r["step_time_s"] / base["step_time_s"])
            cpu_ratios.append(r["step_cpu_s"] / base["step_cpu_s"])
            grad_ratios.append(r["tokens"].get("grad", 0) / base["tokens"]["grad"])
        tokens = mine[0]["tokens"]
        frac = mine[0]["frac_conditioned_groups"]
        print(f"| {arm} | {statistics.median(r['step_cpu_s'] for r in mine) * 1000:.0f} ms | "
              f"{statistics.median(cpu_ratios):.2f}× ({', '.join(f'{x:.2f}' for x in cpu_ratios)}) | "
              f"{statistics.median(r['step_time_s'] for r in mine) * 1000:.0f} ms | "
              f"{statistics.median(ratios):.2f}× ({', '.join(f'{x:.2f}' for x in ratios)}) | "
              f"{tokens.get('grad', 0):.0f} | {statistics.median(grad_ratios):.2f}× | "
              f"{tokens.get('nograd_policy', 0):.0f} | {tokens.get('nograd_reference', 0):.0f} | "
              f"{tokens.get('conditioned_prefix', 0):.0f} | {'-' if frac is None else f'{frac:.2f}'} |")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
