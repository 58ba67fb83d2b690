"""The tiny model's warm-start: supervised training on the synthetic arithmetic TRAIN split,
with context-literacy blocks of other attempts in front of a share of the prompts, until
the held-out sampled accuracy reaches the target (see :mod:`bicc_lab.models.tiny`).

The recipe's numerics are part of what ``BUILD_VERSION`` (in :mod:`bicc_lab.models.tiny`)
stands for: change them and bump it. torch is imported inside functions only.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any

from bicc_lab.models.tiny_probe import _render_prompt, sampled_accuracy
from bicc_lab.spec.sections import TinyModelConfig

log = logging.getLogger(__name__)


def wrong_answer(answer: int, rng: random.Random) -> int:
    """A plausible wrong answer: off by a little, one digit changed, or off by a carry."""
    while True:
        kind = rng.random()
        if kind < 0.5:
            guess = answer + rng.choice([d for d in range(-10, 11) if d])
        elif kind < 0.8:
            digits = list(str(answer))
            k = rng.randrange(len(digits))
            digits[k] = rng.choice([d for d in "0123456789" if d != digits[k]])
            guess = int("".join(digits))
        else:
            guess = answer + rng.choice([-100, -10, 10, 100])
        if guess >= 0 and guess != answer:
            return guess


def context_block(solution: str, rng: random.Random, config: TinyModelConfig) -> tuple[str, Any]:
    """A block of 1..``context_max_attempts`` other attempts at a problem, laid out by one of
    ``config.context_templates``; returns ``(block text, template)``.

    Templates without an outcome header (compact, separator) mix wrong attempts with right
    ones (each right with ``context_correct_prob``), so the block never tells the answer for
    sure. A template whose header names the outcome shown (default: "... that were
    incorrect:") gets a block of one outcome, as BICC shows it, so its header never lies.
    Wrong attempts come from two mistakes per block, so they repeat as a model's own wrong
    samples do ("124\n124\n"): with distinct wrong attempts only the right answer repeated,
    and the model learned to copy any repeated answer (a block of its own repeated mistake
    then cost 20 points of accuracy at context_prob 0.9).
    With ``context_cut_prob`` the last attempt is cut short, as BICC's ``cut`` packing does.
    """
    from bicc_lab.algorithms.bicc import get_template, layout_block

    template = get_template(rng.choice(config.context_templates), config.context_separator)
    answer = int(solution)
    count = rng.randint(1, config.context_max_attempts)
    mistakes = [wrong_answer(answer, rng), wrong_answer(answer, rng)]
    if "{shown}" in template.header:
        right = rng.random() < config.context_correct_prob
        attempts = [answer if right else rng.choice(mistakes) for _ in range(count)]
        shown = "correct" if right else "incorrect"
    else:
        attempts = [answer if rng.random() < config.context_correct_prob else rng.choice(mistakes)
                    for _ in range(count)]
        shown = "incorrect"
    traces = [str(a) for a in attempts]
    if len(traces[-1]) > 1 and rng.random() < config.context_cut_prob:
        traces[-1] = traces[-1][: rng.randint(1, len(traces[-1]) - 1)]
    return layout_block(traces, template, shown), template


class _WarmStartPrompts:
    """Warm-start examples as token ids. A plain prompt draws a fresh context block each
    time it is sampled (with ``context_prob``), so the model sees many blocks per problem
    instead of memorising one. Chat prompts stay bare: BICC puts their block inside the
    user turn, a layout this byte-level model is not taught."""

    def __init__(self, tokenizer: Any, rows: list[dict[str, str]], config: TinyModelConfig) -> None:
        self.tokenizer = tokenizer
        self.rows = rows
        self.config = config
        self.rng = random.Random(config.seed)
        self.prompts = [
            tokenizer.encode(_render_prompt(tokenizer, r["prompt"], config.prompt_format), add_special_tokens=False)
            for r in rows
        ]
        self.answers = [
            tokenizer.encode(r["solution"], add_special_tokens=False) + [tokenizer.eos_token_id] for r in rows
        ]
        self.with_context = config.prompt_format == "plain" and config.context_prob > 0

    def __len__(self) -> int:
        return len(self.rows)

    def example(self, i: int) -> tuple[list[int], list[int]]:
        if self.with_context and self.rng.random() < self.config.context_prob:
            from bicc_lab.algorithms.bicc import place_block

            row = self.rows[i]
            block, template = context_block(row["solution"], self.rng, self.config)
            text = place_block(row["prompt"], block, template)
            return self.tokenizer.encode(text, add_special_tokens=False), self.answers[i]
        return self.prompts[i], self.answers[i]


def _batch(examples: _WarmStartPrompts, idx, pad_id: int):
    import torch

    seqs = [examples.example(i) for i in idx]
    width = max(len(p) + len(a) for p, a in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    labels = torch.full((len(seqs), width), -100, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, (p, a) in enumerate(seqs):
        n = len(p) + len(a)
        ids[row, :n] = torch.tensor(p + a)
        labels[row, len(p) : n] = torch.tensor(a)
        mask[row, :n] = 1
    return ids, mask, labels


class _Progress:
    """The warm-start's progress: steps, and the held-out accuracy against the target."""

    def __init__(self, enabled: bool, total: int, target: float) -> None:
        from bicc_lab.progress import StepProgress

        self.target = target
        self._p = StepProgress("tiny warm-start", total, fields={"acc": f"target {target:.2f}"}, enabled=enabled)

    def update(self, step: int, acc: float | None = None) -> None:
        fields = {"acc": f"{acc:.2f} / target {self.target:.2f}"} if acc is not None else {}
        self._p.update(step, **fields)

    def close(self) -> None:
        self._p.close()


def warm_start_rows(config: TinyModelConfig) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """``(fit, held-out)`` rows of the arithmetic train split; the test split is never used."""
    from bicc_lab.tasks.arithmetic import make_splits

    splits = make_splits(
        config.digits,
        config.ops,
        n_train=config.n_train,
        n_test=config.n_test,
        seed=config.data_seed,
    )
    train_rows = splits.train
    n_val = min(config.n_val, max(1, len(train_rows) // 5))
    return train_rows[:-n_val], train_rows[-n_val:]


def probe_template(config: TinyModelConfig) -> Any:
    """The BICC template the warm-start lays its blocks out with (the first one listed)."""
    from bicc_lab.algorithms.bicc import get_template

    return get_template(config.context_templates[0] if config.context_templates else "compact",
                        config.context_separator)


def warm_start(
    model: Any, tokenizer: Any, config: TinyModelConfig, *, progress: bool = True
) -> dict[str, Any]:
    """Supervised warm-start on the arithmetic train split until the held-out sampled
    accuracy reaches ``config.target_accuracy`` (or a cap). Returns the record."""
    import torch

    fit_rows, val_rows = warm_start_rows(config)
    record: dict[str, Any] = {
        "steps": 0,
        "seconds": 0.0,
        "accuracy": None,
        "target_accuracy": config.target_accuracy,
        "reached_target": config.target_accuracy <= 0.0,
        "stopped_by": "target" if config.target_accuracy <= 0.0 else None,
        "history": [],
        "n_fit": len(fit_rows),
        "n_val": len(val_rows),
        "num_threads": torch.get_num_threads(),
    }
    if config.target_accuracy <= 0.0:
        return record

    examples = _WarmStartPrompts(tokenizer, fit_rows, config)
    gen = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=config.warmup_lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, config.lr_warmup_steps))
    )
    model.train()
    bar = _Progress(progress, config.max_warmup_steps, config.target_accuracy)
    t0 = time.perf_counter()
    step = 0
    try:
        while True:
            idx = torch.randint(len(examples), (config.batch_size,), generator=gen).tolist()
            ids, mask, labels = _batch(examples, idx, tokenizer.pad_token_id)
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            elapsed = time.perf_counter() - t0
            stop = None
            if (
                step % config.eval_every == 0
                or step >= config.max_warmup_steps
                or (config.max_warmup_seconds is not None and elapsed >= config.max_warmup_seconds)
            ):
                acc = sampled_accuracy(
                    model,
                    tokenizer,
                    val_rows,
                    prompt_format=config.prompt_format,
                    seed=config.seed * 1_000_003 + step,
                )
                elapsed = time.perf_counter() - t0
                record["history"].append(
                    {
                        "step": step,
                        "seconds": round(elapsed, 3),
                        "accuracy": acc,
                        "loss": round(loss.item(), 4),
                    }
                )
                record["accuracy"] = acc
                bar.update(step, acc)
                if acc >= config.target_accuracy:
                    stop = "target"
                elif step >= config.max_warmup_steps:
                    stop = "max_warmup_steps"
                elif config.max_warmup_seconds is not None and elapsed >= config.max_warmup_seconds:
                    stop = "max_warmup_seconds"
            else:
                bar.update(step)
            if stop:
                record.update(
                    steps=step,
                    seconds=round(elapsed, 3),
                    stopped_by=stop,
                    reached_target=stop == "target",
                )
                break
    finally:
        bar.close()
    if not record["reached_target"]:
        log.warning(
            "tiny warm-start stopped by %s at accuracy %.3f (target %.2f)",
            record["stopped_by"],
            record["accuracy"],
            config.target_accuracy,
        )
    return record


def max_answer(config: TinyModelConfig) -> int:
    """The largest answer of the warm-start task (sizes the probe's completions)."""
    largest = 10**config.digits - 1
    return largest * largest if "*" in config.ops else 2 * largest
