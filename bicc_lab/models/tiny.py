"""The ``tiny`` model family, built entirely offline.

- Tokenizer: byte-level with no merges (so ASCII text is character-level and any
  text round-trips), specials ``<|endoftext|>`` (pad), ``<|im_start|>``,
  ``<|im_end|>`` (eos), and a ChatML chat template; saved as a
  ``PreTrainedTokenizerFast``.
- Model: a small Qwen2 (default 4 layers, hidden 128, ~0.8M parameters).
- Warm-start: supervised training on the synthetic arithmetic TRAIN split
  (``47+38=85<|im_end|>``, loss on the answer and eos) until the sampled accuracy
  (temperature 1.0) on a held-out slice of the train split reaches
  ``target_accuracy``; checked every ``eval_every`` steps, capped by
  ``max_warmup_steps`` and ``max_warmup_seconds``. The test split is never seen.
- Context literacy: a share ``context_prob`` of the warm-start prompts carry a block
  of 1-3 other attempts in front of the question, laid out by the BICC template the
  tiny config trains with (``84\n91\n47+38=85``): wrong answers (two mistakes per
  block, so they repeat as a model's own do) and, each with ``context_correct_prob``,
  the right one; the last one sometimes cut. So BICC's
  conditioned prompts are in-distribution at GRPO's start, as they are for an instruct
  model. After the warm-start a probe (``context_probe``) measures on the held-out slice
  how much a block of the model's own wrong answers moves log p(correct answer) and the
  sampled accuracy; the build prints it and ``warmstart.json`` records it.
- Reproducible: the build is a function of its config and of the library versions
  only. It runs in a child process with a pinned numeric environment
  (``BUILD_ENVIRONMENT``: one thread, ATen's AVX2 kernels, MKL's conditional numerical
  reproducibility), whatever the host has: float32 kernels of another instruction set
  round differently, and over ~1,000 warm-start steps that is another model (measured
  here: 150 steps with ATen at AVX2 instead of AVX-512, or MKL in its compatible mode,
  gave other weights; another machine of this kind built a model that needed 1,300
  steps instead of 975). ``weights_sha256`` in ``warmstart.json`` fingerprints the
  result, so two machines can compare builds.
- Cache: ``<cache root>/tiny/<hash of config and versions>/``, built in a temporary directory
  and moved into place with ``os.replace``; a file lock keeps parallel
  processes from building the same model twice. ``warmstart.json`` records
  steps, seconds and the accuracy reached.

torch / transformers are imported inside functions only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bicc_lab.spec.models import TINY_PRESETS, TinyModelConfig

log = logging.getLogger(__name__)

CACHE_ENV = "BICC_LAB_CACHE"
BUILD_VERSION = 4  # bump when the build recipe changes; part of the cache key
RECORD_FILE = "warmstart.json"
# Every tiny build runs at this many torch threads, so the weights do not depend on the
# host's core count. One, because every machine has it and it is the one count that never
# oversubscribes a busy machine (two OpenMP threads beside other work ran 4x slower here).
BUILD_THREADS = 1


def build_environment() -> dict[str, str]:
    """The environment the build's child process runs in. The kernel choices must be made
    before torch starts, hence a child. On x86-64: ATen's AVX2 kernels (every x86-64
    machine of the last decade has them; AVX-512 ones round otherwise), MKL's COMPATIBLE
    mode (the one MKL promises equal results in across Intel and other CPUs) and oneDNN
    capped at AVX2. Elsewhere only the thread count is pinned, and the cache key says so."""
    import platform

    env = {"OMP_NUM_THREADS": str(BUILD_THREADS), "MKL_NUM_THREADS": str(BUILD_THREADS)}
    if platform.machine().lower() in ("x86_64", "amd64"):
        env.update(ATEN_CPU_CAPABILITY="avx2", MKL_CBWR="COMPATIBLE", ONEDNN_MAX_CPU_ISA="AVX2")
    return env

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
EOS_TOKEN = "<|im_end|>"
SPECIAL_TOKENS = (PAD_TOKEN, IM_START, EOS_TOKEN)

CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def _library_versions() -> dict[str, str]:
    """The versions that decide the weights besides the config: torch's kernels and
    transformers' Qwen2 initialisation. Read from the installed metadata, not by import,
    so that a cache key costs no torch import."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for package in ("torch", "transformers"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "missing"
    return versions


def cache_key(config: TinyModelConfig) -> str:
    """16 hex characters of the hash of everything that decides the weights: the build
    recipe's version, its pinned numeric environment, the torch and transformers versions,
    and every config field."""
    payload = json.dumps(
        {"build_version": BUILD_VERSION, "build_environment": build_environment(), **_library_versions(),
         **config.to_dict()},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def weights_sha256(model: Any) -> str:
    """sha256 over the parameters' names, dtypes, shapes and bytes, in name order: the same
    number for the same weights on any machine, whatever the file format."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{data.dtype}:{tuple(data.shape)}".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


TINY_VARIANTS: dict[str, TinyModelConfig] = {name: TinyModelConfig(**fields) for name, fields in TINY_PRESETS.items()}


def tiny_variant(variant: str | None) -> TinyModelConfig:
    name = variant or "default"
    try:
        return TINY_VARIANTS[name]
    except KeyError:
        raise ValueError(
            f"unknown tiny model variant {name!r}: expected one of {sorted(TINY_VARIANTS)}"
        ) from None


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """``cache_dir``, else ``$BICC_LAB_CACHE``, else ``~/.cache/bicc_lab``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "bicc_lab"


def tiny_model_dir(
    config: TinyModelConfig, cache_dir: str | os.PathLike[str] | None = None
) -> Path:
    return cache_root(cache_dir) / "tiny" / cache_key(config)


def is_built(path: Path) -> bool:
    return (path / RECORD_FILE).is_file() and (path / "config.json").is_file()


def read_record(path: str | os.PathLike[str]) -> dict[str, Any]:
    return json.loads((Path(path) / RECORD_FILE).read_text())


# ------------------------------------------------------------------ tokenizer


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (what ByteLevel uses)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def build_tokenizer() -> Any:
    """Byte-level tokenizer with no merges: one token per byte (per character for
    ASCII), ids 0-2 are the special tokens. Returns a ``PreTrainedTokenizerFast``."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    table = _bytes_to_unicode()
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for b in range(256):
        vocab[table[b]] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        padding_side="left",
        model_max_length=1024,
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


# ------------------------------------------------------------------ model


def build_untrained_model(config: TinyModelConfig, tokenizer: Any) -> Any:
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    qcfg = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden,
        intermediate_size=config.intermediate,
        num_hidden_layers=config.layers,
        num_attention_heads=config.heads,
        num_key_value_heads=config.kv_heads,
        max_position_embeddings=config.max_positions,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(config.seed)
    model = Qwen2ForCausalLM(qcfg)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    return model


def _render_prompt(tokenizer: Any, prompt: str, prompt_format: str) -> str:
    if prompt_format == "chat":
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    return prompt


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


def build_tiny_model(
    config: TinyModelConfig | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    progress: bool = True,
    force: bool = False,
) -> Path:
    """Build (or reuse from the cache) the tiny model; returns its directory, which
    loads with ``AutoModelForCausalLM`` / ``AutoTokenizer.from_pretrained``."""
    config = config or TinyModelConfig()
    final = tiny_model_dir(config, cache_dir)
    if is_built(final) and not force:
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    from filelock import FileLock

    with FileLock(str(final) + ".lock"):
        if is_built(final) and not force:  # another process built it while we waited
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
        try:
            _build_in_child(tmp, config, progress=progress)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


class TinyWarmStartError(RuntimeError):
    """The warm-start hit its step or time cap below the target accuracy.

    Such a model is not cached: GRPO from a near-0% start has almost no mixed groups
    (measured: 5% -> 5.3% in 200 steps), so reusing it would silently turn every
    later ablation into noise.
    """


def max_answer(config: TinyModelConfig) -> int:
    """The largest answer of the warm-start task (sizes the probe's completions)."""
    largest = 10**config.digits - 1
    return largest * largest if "*" in config.ops else 2 * largest


BUILD_ERROR_FILE = "build-error.txt"  # the child's one-line reason, read by the parent


def _build_in_child(out: Path, config: TinyModelConfig, *, progress: bool) -> None:
    """Run :func:`_build_into` in a child process with :func:`build_environment`.

    The child's progress goes to this process's stderr. A warm-start below its target
    comes back as :class:`TinyWarmStartError` with the child's message; Ctrl-C or a
    signal here stops the child before the caller cleans up."""
    import subprocess

    env = {**os.environ, **build_environment()}
    args = [sys.executable, "-m", "bicc_lab.models.tiny_build", json.dumps(config.to_dict()), str(out)]
    if progress:
        args.append("--progress")
    child = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL)
    try:
        code = child.wait()
    except BaseException:
        child.terminate()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        raise
    error_file = out / BUILD_ERROR_FILE
    if error_file.is_file():
        raise TinyWarmStartError(error_file.read_text().strip())
    if code != 0 or not is_built(out):
        raise RuntimeError(
            f"building the tiny model failed in its build process (exit code {code}); its output is above"
        )


def _child_main(argv: list[str]) -> int:
    """``python -m bicc_lab.models.tiny_build CONFIG_JSON OUT_DIR [--progress]``: the build's child."""
    import torch

    config = TinyModelConfig.model_validate(json.loads(argv[0]))
    out = Path(argv[1])
    torch.set_num_threads(BUILD_THREADS)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        _build_into(out, config, progress="--progress" in argv[2:])
    except TinyWarmStartError as exc:
        (out / BUILD_ERROR_FILE).write_text(f"{exc}\n")
        return 3
    return 0


def _build_into(out: Path, config: TinyModelConfig, *, progress: bool) -> None:
    import torch
    import transformers

    tokenizer = build_tokenizer()
    model = build_untrained_model(config, tokenizer)
    record = warm_start(model, tokenizer, config, progress=progress)
    if not record["reached_target"]:
        raise TinyWarmStartError(
            f"tiny warm-start stopped by {record['stopped_by']} after {record['steps']} steps "
            f"({record['seconds']:.0f} s) at held-out accuracy {record['accuracy']:.3f} < target "
            f"{config.target_accuracy:.2f}; the machine may be busy: raise model.tiny.max_warmup_seconds "
            "or lower model.tiny.target_accuracy (nothing was cached)"
        )
    if config.prompt_format == "plain" and config.probe_group_size > 1:
        t0 = time.perf_counter()
        probe = context_probe(
            model, tokenizer, warm_start_rows(config)[1],
            template=probe_template(config),
            budget_tokens=config.probe_budget_tokens,
            group_size=config.probe_group_size,
            samples=config.probe_samples,
            seed=config.seed,
            max_new_tokens=len(str(max_answer(config))) + 3,
        )
        probe["seconds"] = round(time.perf_counter() - t0, 3)
        record["context_probe"] = probe
        line = f"tiny warm-start: {describe_probe(probe)}"
        log.info(line)
        if progress:
            print(line, file=sys.stderr, flush=True)
    record.update(
        config=config.to_dict(),
        cache_key=cache_key(config),
        build_version=BUILD_VERSION,
        build_threads=torch.get_num_threads(),
        build_environment={k: os.environ.get(k) for k in build_environment()},
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
        weights_sha256=weights_sha256(model),
        parameters=sum(p.numel() for p in model.parameters()),
        torch_version=torch.__version__,
        transformers_version=transformers.__version__,
        built_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
