"""Does the tiny model read BICC contexts? Step-0 log-prob shift and accuracy with wrong attempts.

Run: .venv/bin/python benchmarks/tiny_context.py [--config experiments/tiny.yaml] [--set KEY=VALUE ...]
     [--problems 500] [--samples 8] [--seeds 0,1] [--model DIR] [--out result.json]

On the config's tiny model (built and cached on first use, exactly as a training run builds
it) and the 500-problem arithmetic test split, for each probe seed:
  1. G = train.num_generations samples per problem at train.temperature (GRPO's rollouts);
  2. BICC's packer with the config's template, separator, budget
     (bicc.context_fraction x (train.max_prompt_length + train.max_completion_length)) and
     packing options gives every sample of a mixed group its conditioned prompt;
  3. logp shift = log pi(o | q + opposite traces) - log pi(o | q) per sequence, averaged over
     correct samples (`bicc/logp_shift_correct` at step 0) and over incorrect ones;
  4. sampled accuracy on the mixed problems, --samples fresh samples per problem, from the
     plain prompt and from the prompt a correct sample sees (a block of the group's wrong
     answers); the difference and its standard error over problems.
Targets (issue #10): |logp_shift_correct| <= 1 nat per sequence; accuracy difference within
+-3 points.
"""

from __future__ import annotations

import argparse
import inspect
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "experiments" / "tiny.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, as for bicc-lab train (repeatable)")
    parser.add_argument("--problems", type=int, default=500, help="first N problems of the test split")
    parser.add_argument("--samples", type=int, default=8, help="fresh samples per problem for the accuracies")
    parser.add_argument("--seeds", default="0,1", help="probe seeds (rollouts, trace order, samples)")
    parser.add_argument("--model", default=None, help="a built model directory (default: the config's model)")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bicc_lab.algorithms.bicc import context_budget, get_template, pack_conditioned_prompts
    from bicc_lab.backends.trl.run import resolve_model
    from bicc_lab.models.tiny import read_record
    from bicc_lab.models.tiny_probe import context_probe, describe_probe
    from bicc_lab.spec import load_experiment
    from bicc_lab.tasks.arithmetic import arithmetic_problems

    config = load_experiment(args.config, args.overrides)
    started = time.perf_counter()
    model_dir = args.model or resolve_model(config)
    build_s = time.perf_counter() - started
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    bicc, train = config.bicc, config.train
    template = get_template(bicc.template, bicc.separator)
    budget = context_budget(bicc.context_fraction, train.max_prompt_length + train.max_completion_length)
    accepted = inspect.signature(pack_conditioned_prompts).parameters
    pack_options = {"max_traces": bicc.max_traces}
    if "truncate" in accepted and hasattr(bicc, "truncate"):
        pack_options["truncate"] = bicc.truncate
    rows = arithmetic_problems("test", digits=config.data.digits)[: args.problems]

    probes = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        t0 = time.perf_counter()
        probe = context_probe(
            model, tokenizer, rows,
            template=template,
            budget_tokens=budget,
            group_size=train.num_generations,
            samples=args.samples,
            seed=seed,
            temperature=train.temperature,
            max_new_tokens=train.max_completion_length,
            pack_options=pack_options,
        )
        probe.update(seed=seed, seconds=round(time.perf_counter() - t0, 1))
        probes.append(probe)
        print(f"seed {seed}: {describe_probe(probe)}", file=sys.stderr, flush=True)

    record = read_record(model_dir) if (Path(model_dir) / "warmstart.json").is_file() else {}
    print(f"\nmodel {model_dir}")
    if record:
        cfg = record.get("config", {})
        print(f"warm-start: {record.get('steps')} steps, {record.get('seconds')} s, held-out accuracy "
              f"{record.get('accuracy')}, context_prob {cfg.get('context_prob')}, "
              f"context_templates {cfg.get('context_templates')}; this call's model resolution {build_s:.1f} s")
    print(f"BICC: template {bicc.template}, budget {budget} tokens, packing {pack_options}, "
          f"G = {train.num_generations}, T = {train.temperature}, {len(rows)} test problems\n")
    print("Shifts: log pi(o | q + opposite traces) - log pi(o | q), in nats, over the n completions of "
          "mixed groups on that side; [95% interval of the mean]\n")
    print("| seed | side | n | per sequence: mean [95% CI] | median | per token: mean [95% CI] |")
    print("|---|---|--:|---|--:|---|")
    for p in probes:
        for side, label in (("correct", "right under wrong traces"), ("incorrect", "wrong under right traces")):
            s = p[f"shift_{side}"]
            if s is None:
                print(f"| {p['seed']} | {label} | 0 | | | |")
                continue
            print(f"| {p['seed']} | {label} | {s['n']} | {s['per_sequence_mean']:+.3f} "
                  f"[{s['per_sequence_ci95'][0]:+.3f}, {s['per_sequence_ci95'][1]:+.3f}] "
                  f"| {s['per_sequence_median']:+.3f} | {s['per_token_mean']:+.3f} "
                  f"[{s['per_token_ci95'][0]:+.3f}, {s['per_token_ci95'][1]:+.3f}] |")
    print("\n| seed | group acc | mixed problems | acc plain | acc wrong ctx | diff (pts) +- se | seconds |")
    print("|---|---|--:|---|---|---|---|")
    for p in probes:
        print(f"| {p['seed']} | {p['group_accuracy']:.3f} | {p['mixed_groups']} | {100 * p['accuracy_plain']:.1f} "
              f"| {100 * p['accuracy_wrong_context']:.1f} | {100 * p['accuracy_delta']:+.1f} +- "
              f"{100 * p['accuracy_delta_se']:.1f} | {p['seconds']} |")
    shift = statistics.mean(p["logp_shift_correct"] for p in probes)
    delta = statistics.mean(p["accuracy_delta"] for p in probes)
    n = sum(p["n_correct_scored"] for p in probes)
    print(f"\nmean over {len(probes)} seeds: logp_shift_correct {shift:+.3f} nats/seq over {n} completions "
          f"(target |.| <= 1: {'OK' if abs(shift) <= 1 else 'MISSED'}); accuracy difference "
          f"{100 * delta:+.1f} points (target within +-3: {'OK' if abs(delta) <= 0.03 else 'MISSED'})")
    if args.out:
        args.out.write_text(json.dumps({"model": str(model_dir), "probes": probes}, indent=2) + "\n")


if __name__ == "__main__":
    main()
