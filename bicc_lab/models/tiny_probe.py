"""What the tiny model does with a prompt: sampling, sampled accuracy, sequence log-probs,
and the context probe (how much a block of other attempts moves it, as GRPO + BICC meets
it at step 0). Used by the warm-start (:mod:`bicc_lab.models.tiny_warmstart`) and the
build (:mod:`bicc_lab.models.tiny`), which records the probe in ``warmstart.json``.

torch is imported inside functions only.
"""

from __future__ import annotations

from typing import Any


def _render_prompt(tokenizer: Any, prompt: str, prompt_format: str) -> str:
    if prompt_format == "chat":
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    return prompt


def _left_pad(rows: list[list[int]], pad_id: int):
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r) :] = torch.tensor(r)
            mask[i, width - len(r) :] = 1
    return ids, mask


def _right_pad(rows: list[list[int]], pad_id: int):
    import torch

    width = max(1, max(len(r) for r in rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


def sample_completions(
    model: Any,
    tokenizer: Any,
    prompts: list[list[int]],
    *,
    seed: int,
    temperature: float = 1.0,
    max_new_tokens: int = 6,
    batch_size: int = 256,
) -> list[list[int]]:
    """One sample per prompt (token ids, left-padded per batch), by pure sampling at
    ``temperature``. Each completion is cut after its first EOS, which it keeps, as TRL's
    completion mask does. Deterministic for a seed."""
    import torch

    eos = tokenizer.eos_token_id
    out: list[list[int]] = []
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed)
            for start in range(0, len(prompts), batch_size):
                ids, mask = _left_pad(prompts[start : start + batch_size], tokenizer.pad_token_id)
                generated = model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    do_sample=True,
                    temperature=temperature,
                    top_k=0,
                    top_p=1.0,
                    max_new_tokens=max_new_tokens,
                    eos_token_id=eos,
                    pad_token_id=tokenizer.pad_token_id,
                )
                for row in generated[:, ids.shape[1] :].tolist():
                    out.append(row[: row.index(eos) + 1] if eos in row else row)
    finally:
        model.train(was_training)
    return out


def sampled_accuracy(
    model: Any,
    tokenizer: Any,
    rows: list[dict[str, str]],
    *,
    prompt_format: str = "plain",
    seed: int = 0,
    temperature: float = 1.0,
    max_new_tokens: int | None = None,
    batch_size: int = 256,
) -> float:
    """Share of ``rows`` answered exactly (leading integer) with one sample each at
    ``temperature`` (pure sampling, no top-k/top-p). Deterministic for a seed."""
    from bicc_lab.tasks.rewards import arithmetic_reward

    if not rows:
        return 0.0
    if max_new_tokens is None:
        max_new_tokens = max(len(r["solution"]) for r in rows) + 2
    prompts = [
        tokenizer.encode(_render_prompt(tokenizer, r["prompt"], prompt_format), add_special_tokens=False)
        for r in rows
    ]
    completions = sample_completions(
        model, tokenizer, prompts, seed=seed, temperature=temperature,
        max_new_tokens=max_new_tokens, batch_size=batch_size,
    )
    texts = tokenizer.batch_decode(completions, skip_special_tokens=True)
    return sum(arithmetic_reward(None, texts, [r["solution"] for r in rows])) / len(rows)


def sequence_logps(
    model: Any,
    prompt_ids: Any,
    prompt_mask: Any,
    completion_ids: Any,
    completion_mask: Any,
    *,
    temperature: float = 1.0,
    batch_size: int = 512,
) -> Any:
    """log π(o|q) summed over each completion's unmasked tokens, computed as TRL's GRPO
    trainer does (left-padded prompt + right-padded completion in one forward pass,
    logits divided by the sampling temperature). Returns a (B,) float tensor."""
    import torch

    width = completion_ids.size(1)
    out = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, prompt_ids.size(0), batch_size):
                part = slice(start, start + batch_size)
                ids = torch.cat([prompt_ids[part], completion_ids[part]], dim=1)
                mask = torch.cat([prompt_mask[part], completion_mask[part]], dim=1)
                logits = model(input_ids=ids, attention_mask=mask).logits[:, -width - 1 : -1].float()
                logps = torch.log_softmax(logits / temperature, dim=-1)
                token = logps.gather(-1, completion_ids[part].unsqueeze(-1)).squeeze(-1)
                out.append((token * completion_mask[part]).sum(-1))
    finally:
        model.train(was_training)
    return torch.cat(out)


def context_probe(
    model: Any,
    tokenizer: Any,
    rows: list[dict[str, str]],
    *,
    template: Any,
    budget_tokens: int,
    group_size: int = 8,
    samples: int = 8,
    seed: int = 0,
    temperature: float = 1.0,
    max_new_tokens: int = 6,
    pack_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """How much a block of other attempts moves the model, measured the way GRPO + BICC
    meets it at step 0 (plain prompts only).

    1. ``group_size`` samples per prompt at ``temperature``, graded by the arithmetic reward.
    2. BICC's packer (``pack_conditioned_prompts`` with ``template``, ``budget_tokens`` and
       ``pack_options``) gives every sample of a mixed group its conditioned prompt.
    3. ``logp_shift_correct``: mean over correct samples of log π(o|q ⊕ incorrect traces) −
       log π(o|q), in nats per sequence (EOS included), as ``bicc/logp_shift_correct`` at
       step 0; ``logp_shift_incorrect`` likewise for incorrect samples under correct traces.
    4. Accuracy with and without a block of wrong attempts: for each mixed group, the
       conditioned prompt of one correct sample (its block holds the group's wrong answers)
       and the plain prompt each get ``samples`` fresh samples; ``accuracy_delta`` is the
       difference on the same problems, with the standard error of the per-problem
       differences.
    """
    import torch

    from bicc_lab.algorithms.bicc import pack_conditioned_prompts
    from bicc_lab.tasks.rewards import arithmetic_reward

    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    prompts = [tokenizer.encode(r["prompt"], add_special_tokens=False) for r in rows]
    solutions = [r["solution"] for r in rows]
    grouped = [p for p in prompts for _ in range(group_size)]
    completions = sample_completions(
        model, tokenizer, grouped, seed=seed, temperature=temperature, max_new_tokens=max_new_tokens
    )
    texts = tokenizer.batch_decode(completions, skip_special_tokens=True)
    rewards = torch.tensor(arithmetic_reward(None, texts, [s for s in solutions for _ in range(group_size)]))
    prompt_ids, prompt_mask = _left_pad(grouped, pad)
    completion_ids, completion_mask = _right_pad(completions, pad)
    packed = pack_conditioned_prompts(
        prompt_ids, prompt_mask, completion_ids, completion_mask, rewards, group_size,
        tokenize=lambda text: tokenizer.encode(text, add_special_tokens=False),
        budget_tokens=budget_tokens,
        pad_token_id=pad,
        template=template,
        strip_token_ids=[eos, pad],
        seed=seed,
        **(pack_options or {}),
    )
    plain = sequence_logps(model, prompt_ids, prompt_mask, completion_ids, completion_mask, temperature=temperature)
    conditioned = sequence_logps(
        model, packed.prompt_ids, packed.prompt_mask, completion_ids, completion_mask, temperature=temperature
    )
    shift = conditioned - plain
    tokens = completion_mask.sum(-1).float()
    correct = rewards > 0.5
    shift_correct = shift[packed.conditioned & correct]
    shift_incorrect = shift[packed.conditioned & ~correct]

    plain_prompts, wrong_context_prompts, problem_solutions = [], [], []
    for g, solution in enumerate(solutions):
        members = range(g * group_size, (g + 1) * group_size)
        shown_wrong = [i for i in members if packed.conditioned[i] and correct[i]]
        if shown_wrong:
            i = shown_wrong[0]
            plain_prompts.append(prompts[g])
            wrong_context_prompts.append(packed.prompt_ids[i][packed.prompt_mask[i].bool()].tolist())
            problem_solutions.append(solution)

    def accuracy_per_problem(problem_prompts: list[list[int]], sample_seed: int) -> torch.Tensor:
        repeated = [p for p in problem_prompts for _ in range(samples)]
        outs = sample_completions(
            model, tokenizer, repeated, seed=sample_seed, temperature=temperature, max_new_tokens=max_new_tokens
        )
        graded = arithmetic_reward(
            None, tokenizer.batch_decode(outs, skip_special_tokens=True),
            [s for s in problem_solutions for _ in range(samples)],
        )
        return torch.tensor(graded).view(-1, samples).mean(dim=1)

    result: dict[str, Any] = {
        "prompts": len(rows),
        "group_size": group_size,
        "budget_tokens": budget_tokens,
        "template": template.name,
        "temperature": temperature,
        "group_accuracy": rewards.mean().item(),
        "mixed_groups": len(problem_solutions),
        "n_correct_scored": int(shift_correct.numel()),
        "n_incorrect_scored": int(shift_incorrect.numel()),
        "logp_shift_correct": shift_correct.mean().item() if shift_correct.numel() else None,
        "logp_shift_incorrect": shift_incorrect.mean().item() if shift_incorrect.numel() else None,
        "shift_correct": shift_summary(shift_correct, tokens[packed.conditioned & correct]),
        "shift_incorrect": shift_summary(shift_incorrect, tokens[packed.conditioned & ~correct]),
        "context_tokens_mean": packed.context_tokens[packed.conditioned].float().mean().item()
        if packed.conditioned.any() else 0.0,
        "samples_per_problem": samples,
        "accuracy_plain": None,
        "accuracy_wrong_context": None,
        "accuracy_delta": None,
        "accuracy_delta_se": None,
    }
    if problem_solutions:
        acc_plain = accuracy_per_problem(plain_prompts, seed + 1)
        acc_context = accuracy_per_problem(wrong_context_prompts, seed + 2)
        diff = acc_context - acc_plain
        result.update(
            accuracy_plain=acc_plain.mean().item(),
            accuracy_wrong_context=acc_context.mean().item(),
            accuracy_delta=diff.mean().item(),
            accuracy_delta_se=(diff.std().item() / len(diff) ** 0.5) if len(diff) > 1 else None,
        )
    return result


def shift_summary(shift: Any, tokens: Any) -> dict[str, Any] | None:
    """A log-prob shift over n completions, per sequence and per token, with intervals.

    ``shift``: per-sequence shifts in nats (sums over each completion's tokens);
    ``tokens``: each completion's token count. Per sequence: mean, its 95% normal interval
    (mean ± 1.96 standard errors), median. Per token: Σ shift / Σ tokens (a ratio of means),
    with the delta-method standard error of that ratio. None when n = 0.
    """
    n = int(shift.numel())
    if n == 0:
        return None
    shift, tokens = shift.double(), tokens.double()
    mean = shift.mean().item()
    se = shift.std().item() / n**0.5 if n > 1 else float("nan")
    per_token = (shift.sum() / tokens.sum()).item()
    residual = shift - per_token * tokens
    per_token_se = (
        (residual.pow(2).sum() / (n - 1)).sqrt().item() * n**0.5 / tokens.sum().item() if n > 1 else float("nan")
    )
    return {
        "n": n,
        "tokens": int(tokens.sum().item()),
        "per_sequence_mean": mean,
        "per_sequence_ci95": [mean - 1.96 * se, mean + 1.96 * se],
        "per_sequence_median": shift.median().item(),
        "per_token_mean": per_token,
        "per_token_ci95": [per_token - 1.96 * per_token_se, per_token + 1.96 * per_token_se],
    }


def describe_probe(probe: dict[str, Any]) -> str:
    """The probe as one log line."""

    def nats(value: float | None) -> str:
        return "n/a" if value is None else f"{value:+.2f}"

    def side(name: str) -> str:
        summary = probe.get(f"shift_{name}")
        if not summary:
            return f"{nats(probe[f'logp_shift_{name}'])} nats/seq (n={probe[f'n_{name}_scored']})"
        low, high = summary["per_sequence_ci95"]
        return (
            f"{nats(summary['per_sequence_mean'])} nats/seq [{low:+.2f}, {high:+.2f}], median "
            f"{nats(summary['per_sequence_median'])}, {nats(summary['per_token_mean'])} nats/token "
            f"(n={summary['n']} completions)"
        )

    line = (
        f"context probe ({probe['prompts']} prompts x {probe['group_size']} samples, "
        f"{probe['template']} template, {probe['budget_tokens']}-token budget): "
        f"logp shift of correct answers under wrong attempts {side('correct')}, "
        f"of wrong answers under correct attempts {side('incorrect')}"
    )
    if probe["accuracy_delta"] is not None:
        se = probe["accuracy_delta_se"]
        line += (
            f"; sampled accuracy {100 * probe['accuracy_plain']:.1f}% plain vs "
            f"{100 * probe['accuracy_wrong_context']:.1f}% with wrong attempts in the prompt "
            f"({probe['mixed_groups']} problems x {probe['samples_per_problem']} samples, "
            f"difference {100 * probe['accuracy_delta']:+.1f}"
            + (f" +- {100 * se:.1f}" if se is not None else "")
            + " points)"
        )
    return line
