"""What conditioning on the opposite side's traces does at step 0, on any config's model.

Run: .venv/bin/python benchmarks/bicc_mechanism.py --config experiments/smollm2.yaml
         [--set KEY=VALUE ...] [--prompts 96] [--chunk 4] [--seed 0] [--out result.json]
         [--rollouts rollouts.pt]
     .venv/bin/python benchmarks/bicc_mechanism.py --table a.json b.json   (side by side, markdown)

The config's own trainer (model, chat template, reward, BICC packer and budget, variant,
clip) takes its first ``--prompts`` training prompts, G = train.num_generations rollouts
each, exactly as its first training step would (``_generate_and_score_completions``),
with BICC forced on. Then, over the completions of mixed groups:

1. the per-token shift log π(o_t | q ⊕ opposite traces) − log π(o_t | q) of right
   completions (under wrong traces) and of wrong ones (under right traces): mean with a
   95% interval (a t interval over completions of their per-token means, tokens weighted
   equally within a completion), median, and the per-token mean over all tokens;
2. under the paper's ratio π(o|q⊕ctx)/π_old(o|q): the fraction of completion tokens whose
   ratio lies outside the variant's clip range [1 − ε_low, 1 + ε_high], and of
   negative-advantage tokens beyond the dual clip (ratio > clip_ratio_c);
3. transfer: the cosine between the gradient of the loss BICC trains on and that of plain
   GRPO's loss on the same rollouts and advantages; then one AdamW step (the config's
   learning rate, fresh state, as a first training step) on each gradient in turn, from
   the same weights, and the change of the plain-prompt log π(o|q) it makes, in nats per
   completion, averaged over right and over wrong completions of mixed groups.

Also the rollouts' accuracy and how many groups were mixed: where the task puts the model
at step 0, under the config's own sampling settings. Numbers come with n (completions)
and are per completion or per token as labelled.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def t_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and a 95% t interval (normal quantile above 30 values)."""
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return mean, math.nan, math.nan
    from scipy import stats

    half = stats.t.ppf(0.975, n - 1) * statistics.stdev(values) / math.sqrt(n)
    return mean, mean - half, mean + half


def side_summary(shifts: list[list[float]]) -> dict:
    """Per-token shifts of each completion -> summary over completions."""
    per_completion = [statistics.fmean(s) for s in shifts if s]
    tokens = [x for s in shifts for x in s]
    if not per_completion:
        return {"n": 0}
    mean, low, high = t_interval(per_completion)
    return {
        "n": len(per_completion), "tokens": len(tokens),
        "per_token_mean_by_completion": mean, "ci95": [low, high],
        "median_by_completion": statistics.median(per_completion),
        "per_token_mean_all_tokens": statistics.fmean(tokens),
        "per_sequence_mean": statistics.fmean(sum(s) for s in shifts if s),
    }


def table(paths: list[Path]) -> str:
    """The results of several runs side by side, one column per file."""
    runs = [json.loads(Path(p).read_text()) for p in paths]

    def side(r, key):
        s = r[key]
        if not s.get("n"):
            return "n = 0"
        low, high = s["ci95"]
        return (f"{s['per_token_mean_by_completion']:+.3f} [{low:+.3f}, {high:+.3f}], median "
                f"{s['median_by_completion']:+.3f} (n = {s['n']}, {s['tokens']} tokens)")

    rows = [
        ("model", lambda r: f"{r['model']} ({r['config']})"),
        ("rollouts (prompts x G)", lambda r: f"{r['rollouts']} ({r['prompts']} x {r['group_size']})"),
        ("rollout accuracy", lambda r: f"{100 * r['rollout_accuracy']:.1f}%"),
        ("mixed groups", lambda r: f"{r['mixed_groups']} of {r['groups']}"),
        ("shift per token, right under wrong traces (nats)", lambda r: side(r, "right_under_wrong_traces")),
        ("shift per token, wrong under right traces (nats)", lambda r: side(r, "wrong_under_right_traces")),
        ("tokens outside the clip range", lambda r: f"{100 * r['frac_tokens_outside_clip']:.1f}% of {r['tokens']} "
                                                   f"({r['clip_range'][0]:g}-{r['clip_range'][1]:g})"),
        ("negative-advantage tokens beyond the dual clip", lambda r: "off" if r["dual_clip"] is None else
         f"{100 * r['frac_negative_tokens_beyond_dual_clip']:.2f}% of {r['negative_advantage_tokens']} (c = {r['dual_clip']:g})"),
        ("gradient cosine, BICC vs GRPO", lambda r: f"{r['grad_cosine_bicc_vs_grpo']:.3f}"),
        ("plain log p change of right answers, one BICC / GRPO step", lambda r: "{:+.3f} / {:+.3f} nats".format(
            r["plain_logp_change_after_one_step"]["bicc"]["right"], r["plain_logp_change_after_one_step"]["grpo"]["right"])),
        ("plain log p change of wrong answers, one BICC / GRPO step", lambda r: "{:+.3f} / {:+.3f} nats".format(
            r["plain_logp_change_after_one_step"]["bicc"]["wrong"], r["plain_logp_change_after_one_step"]["grpo"]["wrong"])),
        ("learning rate of that step", lambda r: f"{r['learning_rate']:g}"),
    ]
    lines = ["| | " + " | ".join(Path(p).stem for p in paths) + " |", "|---|" + "---|" * len(runs)]
    lines += [f"| {label} | " + " | ".join(cell(r) for r in runs) + " |" for label, cell in rows]
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--table":
        print(table([Path(p) for p in sys.argv[2:]]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "experiments" / "smollm2.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--prompts", type=int, default=96, help="training prompts, G rollouts each")
    parser.add_argument("--chunk", type=int, default=4,
                        help="prompts per generation and loss call (memory: a loss call holds chunk x G x length "
                             "x vocabulary float32 logits; 16 x 4 on SmolLM2 reached 18 GB)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    parser.add_argument("--rollouts", type=Path, default=None,
                        help="keep the step-0 rollouts in this file (torch.save) once generated, and take them "
                             "from it when it exists: a stopped gradient part reruns without regenerating")
    args = parser.parse_args()

    import tempfile

    import torch

    from bicc_lab.backends.trl.run import build_trainer
    from bicc_lab.spec import load_experiment

    config = load_experiment(args.config, [*args.overrides, "bicc.enabled=true", "eval.enabled=false"])
    started = time.perf_counter()
    out_dir = Path(tempfile.mkdtemp(prefix="bicc-mechanism-"))
    trainer = build_trainer(config, out_dir, progress=False)
    model = trainer.model
    model.train()
    trainer.current_gradient_accumulation_steps = 1
    group = config.train.num_generations
    variant = trainer.variant
    low, high = 1 - variant.epsilon_low, 1 + variant.epsilon_high
    dual = variant.clip_ratio_c

    def token_logps(prompt_ids, prompt_mask, batch):
        with torch.no_grad():
            logps, _, _ = trainer._get_per_token_logps_and_entropies(
                model, torch.cat([prompt_ids, batch["completion_ids"]], 1),
                torch.cat([prompt_mask, batch["completion_mask"]], 1), batch["completion_ids"].size(1))
        return logps

    batches, right_shifts, wrong_shifts = [], [], []
    outside = beyond_dual = tokens_total = negative_tokens = 0
    rollouts = rollouts_right = groups_total = groups_mixed = 0
    rows = [trainer.train_dataset[i] for i in range(args.prompts)]
    # The rollouts are the expensive, sampled part; keyed by what produced them, so a
    # cache from other settings is refused rather than silently reused.
    rollout_key = {"config": str(args.config), "overrides": args.overrides, "prompts": args.prompts,
                   "chunk": args.chunk, "seed": args.seed}
    generated: list[dict] = []
    if args.rollouts is not None and args.rollouts.exists():
        cached = torch.load(args.rollouts, weights_only=False)
        if cached["key"] != rollout_key:
            sys.exit(f"{args.rollouts}: rollouts of {cached['key']}, not of {rollout_key}; "
                     "give another --rollouts path")
        generated = cached["batches"]
        print(f"{args.rollouts}: {len(generated)} rollout batches taken from the file", file=sys.stderr)
    for index, start in enumerate(range(0, len(rows), args.chunk)):
        if index < len(generated):
            batch = generated[index]
        else:
            torch.manual_seed(args.seed * 1000 + start)
            inputs = [dict(row) for row in rows[start:start + args.chunk] for _ in range(group)]
            batch = trainer._generate_and_score_completions(inputs)
            generated.append(batch)
            if args.rollouts is not None:
                partial = args.rollouts.with_name(args.rollouts.name + ".partial")
                torch.save({"key": rollout_key, "batches": generated}, partial)
                partial.replace(args.rollouts)
        outcomes = (batch["bicc_rewards"] > config.bicc.success_threshold).view(-1, group)
        rollouts += outcomes.numel()
        rollouts_right += int(outcomes.sum())
        groups_total += outcomes.size(0)
        groups_mixed += int((outcomes.any(1) & ~outcomes.all(1)).sum())
        conditioned = batch["bicc_conditioned"].bool()
        if not conditioned.any():  # no mixed group in this chunk: nothing to condition
            print(f"{min(start + args.chunk, len(rows))}/{len(rows)} prompts: no mixed group in this chunk",
                  file=sys.stderr, flush=True)
            continue
        plain = token_logps(batch["prompt_ids"], batch["prompt_mask"], batch)
        with_context = token_logps(batch["bicc_prompt_ids"], batch["bicc_prompt_mask"], batch)
        mask = batch["completion_mask"].bool()
        right = batch["bicc_rewards"] > config.bicc.success_threshold
        shift = (with_context - plain)
        ratio = shift.exp()
        advantages = batch["advantages"]
        for row in conditioned.nonzero().squeeze(1).tolist():
            values = shift[row][mask[row]].tolist()
            (right_shifts if right[row] else wrong_shifts).append(values)
            r = ratio[row][mask[row]]
            outside += int(((r < low) | (r > high)).sum())
            tokens_total += int(r.numel())
            if advantages[row] < 0:
                negative_tokens += int(r.numel())
                if dual is not None:
                    beyond_dual += int((r > dual).sum())
        batches.append(batch)
        print(f"{min(start + args.chunk, len(rows))}/{len(rows)} prompts: {len(right_shifts)} right, "
              f"{len(wrong_shifts)} wrong completions in mixed groups ({time.perf_counter() - started:.0f} s)",
              file=sys.stderr, flush=True)

    # ---- transfer: BICC's gradient against plain GRPO's, and what one step of each does
    params = [p for p in model.parameters() if p.requires_grad]
    mixed_batches = [b for b in batches if b["bicc_conditioned"].any()]
    plain_keys = ("bicc_prompt_ids", "bicc_prompt_mask", "bicc_rollout_logps", "bicc_rollout_rows")

    def gradient(bicc: bool) -> list[torch.Tensor]:
        model.zero_grad()
        for done, b in enumerate(mixed_batches, 1):
            inputs = dict(b) if bicc else {k: v for k, v in b.items() if k not in plain_keys}
            loss = trainer._compute_loss(model, inputs) / len(mixed_batches)
            loss.backward()
            print(f"gradient ({'bicc' if bicc else 'grpo'}): {done}/{len(mixed_batches)} batches "
                  f"({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
        return [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in params]

    def flat(tensors):
        return torch.cat([t.reshape(-1).float() for t in tensors])

    bicc_grad, plain_grad = gradient(True), gradient(False)
    cosine = float(torch.nn.functional.cosine_similarity(flat(bicc_grad), flat(plain_grad), dim=0))

    def plain_sequence_logps():
        right_sum, wrong_sum = [], []
        print(f"plain-prompt log-probs over {len(mixed_batches)} batches ({time.perf_counter() - started:.0f} s)",
              file=sys.stderr, flush=True)
        for b in mixed_batches:
            logps = token_logps(b["prompt_ids"], b["prompt_mask"], b)
            per_seq = (logps * b["completion_mask"]).sum(1)
            for row in b["bicc_conditioned"].nonzero().squeeze(1).tolist():
                (right_sum if b["bicc_rewards"][row] > config.bicc.success_threshold else wrong_sum).append(float(per_seq[row]))
        return right_sum, wrong_sum

    before = [p.detach().clone() for p in params]
    base_right, base_wrong = plain_sequence_logps()
    gains = {}
    for name, grads in (("bicc", bicc_grad), ("grpo", plain_grad)):
        optimizer = torch.optim.AdamW(params, lr=config.train.learning_rate, weight_decay=0.0)
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        optimizer.step()
        after_right, after_wrong = plain_sequence_logps()
        gains[name] = {
            "right": statistics.fmean(a - b for a, b in zip(after_right, base_right, strict=True)),
            "wrong": statistics.fmean(a - b for a, b in zip(after_wrong, base_wrong, strict=True)),
        }
        with torch.no_grad():
            for p, saved in zip(params, before, strict=True):
                p.copy_(saved)

    result = {
        "config": str(args.config), "overrides": args.overrides, "model": config.model.name,
        "prompts": len(rows), "group_size": group, "seed": args.seed,
        "rollouts": rollouts, "rollout_accuracy": rollouts_right / max(rollouts, 1),
        "groups": groups_total, "mixed_groups": groups_mixed,
        "right_under_wrong_traces": side_summary(right_shifts),
        "wrong_under_right_traces": side_summary(wrong_shifts),
        "clip_range": [low, high], "tokens": tokens_total,
        "frac_tokens_outside_clip": outside / max(tokens_total, 1),
        "dual_clip": dual, "negative_advantage_tokens": negative_tokens,
        "frac_negative_tokens_beyond_dual_clip": beyond_dual / max(negative_tokens, 1) if dual is not None else None,
        "grad_cosine_bicc_vs_grpo": cosine,
        "plain_logp_change_after_one_step": gains,
        "learning_rate": config.train.learning_rate,
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
