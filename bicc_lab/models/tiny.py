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
  ``max_steps`` and ``max_seconds``. The test split is never seen.
- Cache: ``<cache root>/tiny/<hash of config>/``, built in a temporary directory
  and moved into place with ``os.replace``; a file lock keeps parallel
  processes from building the same model twice. ``warmstart.json`` records
  steps, seconds and the accuracy reached.

torch / transformers are imported inside functions only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CACHE_ENV = "BICC_LAB_CACHE"
BUILD_VERSION = 1  # bump when the build recipe changes; part of the cache key
RECORD_FILE = "warmstart.json"

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


@dataclass(frozen=True)
class TinyModelConfig:
    """Everything that determines a tiny model; its hash is the cache key."""

    # architecture (Qwen2)
    layers: int = 4
    hidden: int = 128
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 384
    max_positions: int = 1024
    # warm-start task: synthetic arithmetic train split (never the test split)
    digits: int = 2
    ops: str = "+"
    prompt_format: str = "plain"  # "plain": 47+38=85<eos>; "chat": ChatML user/assistant
    # Share of warm-start prompts followed by 1-3 other answers in BICC's separator layout
    # ("47+38=\n84\n91\n85"), to make conditioned prompts in-distribution. Off by default:
    # at 0.5 the held-out accuracy was still 10% after 2,578 steps (plain prompts: 38% at
    # 1,350), so the warm-start no longer fits a quickstart.
    context_prob: float = 0.0
    n_train: int = 5000
    n_test: int = 500  # must match the arithmetic test split the benchmarks use
    n_val: int = 200  # held-out slice at the end of the train split
    data_seed: int = 0
    # warm-start schedule
    target_accuracy: float = 0.35
    eval_every: int = 25
    max_steps: int = 4000
    # The warm-start is deterministic in its steps, so the step cap decides the outcome; a
    # wall-clock cap only turns a busy machine into a failed build. None: no wall-clock cap.
    max_seconds: float | None = None
    lr: float = 2e-3
    batch_size: int = 64
    warmup_steps: int = 20
    weight_decay: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.prompt_format not in ("plain", "chat"):
            raise ValueError(
                f"tiny: prompt_format must be 'plain' or 'chat', got {self.prompt_format!r}"
            )
        if self.hidden % self.heads or self.heads % self.kv_heads:
            raise ValueError("tiny: hidden must divide by heads, heads by kv_heads")
        if not 0.0 <= self.target_accuracy <= 1.0:
            raise ValueError("tiny: target_accuracy must be in [0, 1]")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def cache_key(self) -> str:
        payload = json.dumps({"build_version": BUILD_VERSION, **self.to_dict()}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


TINY_VARIANTS: dict[str, TinyModelConfig] = {
    "default": TinyModelConfig(),
    "chat": TinyModelConfig(prompt_format="chat"),
    "nano": TinyModelConfig(layers=2, hidden=64, heads=2, kv_heads=1, intermediate=192),
    "untrained": TinyModelConfig(target_accuracy=0.0),
}


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
    return cache_root(cache_dir) / "tiny" / config.cache_key()


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


def with_distractor_context(prompt: str, solution: str, rng: random.Random, separator: str = "\n") -> str:
    """``47+38=`` -> ``47+38=\n84\n91\n``: the prompt followed by 1-3 other answers, laid out
    like BICC's ``separator`` template, so that conditioned prompts are in-distribution."""
    answer = int(solution)
    others = []
    for _ in range(rng.randint(1, 3)):
        offset = rng.choice([d for d in range(-10, 11) if d])
        others.append(str(max(0, answer + offset)))
    return prompt + "".join(separator + other for other in others) + separator


def _encode_examples(
    tokenizer: Any,
    rows: list[dict[str, str]],
    prompt_format: str,
    *,
    context_prob: float = 0.0,
    seed: int = 0,
):
    rng = random.Random(seed)
    out = []
    for r in rows:
        prompt = r["prompt"]
        # Plain prompts only: chat prompts get BICC's natural-language block, which a
        # byte-level model this small cannot be taught to read in a short warm-start.
        if prompt_format == "plain" and context_prob > 0 and rng.random() < context_prob:
            prompt = with_distractor_context(prompt, r["solution"], rng)
        p = tokenizer.encode(_render_prompt(tokenizer, prompt, prompt_format), add_special_tokens=False)
        a = tokenizer.encode(r["solution"], add_special_tokens=False) + [tokenizer.eos_token_id]
        out.append((p, a))
    return out


def _batch(examples, idx, pad_id: int):
    import torch

    seqs = [examples[i] for i in idx]
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
    import torch

    from bicc_lab.tasks.rewards import arithmetic_reward

    if not rows:
        return 0.0
    if max_new_tokens is None:
        max_new_tokens = max(len(r["solution"]) for r in rows) + 2
    was_training = model.training
    model.eval()
    correct = 0.0
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed)
            for start in range(0, len(rows), batch_size):
                chunk = rows[start : start + batch_size]
                texts = [_render_prompt(tokenizer, r["prompt"], prompt_format) for r in chunk]
                enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
                out = model.generate(
                    **enc,
                    do_sample=True,
                    temperature=temperature,
                    top_k=0,
                    top_p=1.0,
                    max_new_tokens=max_new_tokens,
                    eos_token_id=tokenizer.eos_token_id,
                    pad_token_id=tokenizer.pad_token_id,
                )
                completions = tokenizer.batch_decode(
                    out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True
                )
                correct += sum(arithmetic_reward(None, completions, [r["solution"] for r in chunk]))
    finally:
        model.train(was_training)
    return correct / len(rows)


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


def warm_start(
    model: Any, tokenizer: Any, config: TinyModelConfig, *, progress: bool = True
) -> dict[str, Any]:
    """Supervised warm-start on the arithmetic train split until the held-out sampled
    accuracy reaches ``config.target_accuracy`` (or a cap). Returns the record."""
    import torch

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
    val_rows, fit_rows = train_rows[-n_val:], train_rows[:-n_val]
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

    examples = _encode_examples(
        tokenizer, fit_rows, config.prompt_format, context_prob=config.context_prob, seed=config.seed
    )
    gen = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, config.warmup_steps))
    )
    model.train()
    bar = _Progress(progress, config.max_steps, config.target_accuracy)
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
                or step >= config.max_steps
                or (config.max_seconds is not None and elapsed >= config.max_seconds)
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
                elif step >= config.max_steps:
                    stop = "max_steps"
                elif config.max_seconds is not None and elapsed >= config.max_seconds:
                    stop = "max_seconds"
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
            _build_into(tmp, config, progress=progress)
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
    (DESIGN.md measured 5% -> 5.3% in 200 steps), so reusing it would silently turn every
    later ablation into noise.
    """


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
    record.update(
        config=config.to_dict(),
        cache_key=config.cache_key(),
        build_version=BUILD_VERSION,
        parameters=sum(p.numel() for p in model.parameters()),
        torch_version=torch.__version__,
        transformers_version=transformers.__version__,
        built_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
