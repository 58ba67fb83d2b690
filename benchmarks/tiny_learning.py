"""Does the tiny quickstart configuration learn? Held-out accuracy before/after GRPO, per arm.

Run: .venv/bin/python benchmarks/tiny_learning.py [--steps 200] [--variant grpo] [--seeds 0]

For each arm (base, +RCC, +BICC, +BICC+RCC) it trains experiments/tiny.yaml for --steps
GRPO steps and measures sampled accuracy (temperature 1.0, one sample per problem) on the
500-problem arithmetic test split before and after, with wall time and mean step time.
The arms run one after another in this process, so the step-time ratios against the
base arm are measured under the same machine load.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARMS = {"base": (False, False), "rcc": (False, True), "bicc": (True, False), "bicc+rcc": (True, True)}


def test_accuracy(model_dir: str, seed: int) -> float:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bicc_lab.models.tiny_probe import sampled_accuracy
    from bicc_lab.tasks.arithmetic import arithmetic_problems

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return sampled_accuracy(model, tokenizer, arithmetic_problems("test"), seed=seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--variant", default="grpo")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--arms", default=",".join(ARMS), help="comma-separated subset of " + ", ".join(ARMS))
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args()

    from bicc_lab.backends.trl.run import resolve_model, train_run
    from bicc_lab.spec import load_experiment

    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for arm in args.arms.split(","):
            bicc, rcc = ARMS[arm]
            config = load_experiment(
                ROOT / "experiments" / "tiny.yaml",
                [f"variant={args.variant}", f"seed={seed}", f"bicc.enabled={str(bicc).lower()}",
                 f"rcc.enabled={str(rcc).lower()}", f"train.max_steps={args.steps}",
                 f"train.save_steps={args.steps}", "train.logging_steps=10"],
            )
            start_model = resolve_model(config)
            before = test_accuracy(start_model, seed)
            with tempfile.TemporaryDirectory() as tmp:
                started = time.perf_counter()
                result = train_run(config, tmp, progress=False)
                wall = time.perf_counter() - started
                after = test_accuracy(result.final_model_dir, seed)
                metrics = [json.loads(x) for x in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
            step_times = [m["step_time"] for m in metrics if "step_time" in m]
            conditioned = [m["bicc/frac_conditioned_groups"] for m in metrics if "bicc/frac_conditioned_groups" in m]
            rows.append({
                "variant": args.variant, "arm": arm, "seed": seed, "steps": result.steps,
                "acc_before": before, "acc_after": after, "wall_s": wall,
                "step_time_s": statistics.mean(step_times) if step_times else None,
                "frac_conditioned_groups": statistics.mean(conditioned) if conditioned else None,
            })
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)

    base_time = {r["seed"]: r["step_time_s"] for r in rows if r["arm"] == "base"}
    print(f"\n{args.variant}, {args.steps} GRPO steps, arithmetic test split (500 problems, 1 sample each, T=1.0)\n")
    print("| arm | seed | acc before | acc after | wall s | step s | step-time ratio vs base | frac conditioned groups |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = r["step_time_s"] / base_time[r["seed"]] if r["step_time_s"] and base_time.get(r["seed"]) else None
        fc = f"{r['frac_conditioned_groups']:.2f}" if r["frac_conditioned_groups"] is not None else "—"
        print(f"| {r['arm']} | {r['seed']} | {r['acc_before']:.3f} | {r['acc_after']:.3f} | {r['wall_s']:.1f} | "
              f"{r['step_time_s']:.3f} | {ratio:.2f} | {fc} |")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
