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

Here: tokenizer, model, cache key, cache and the build's child process. The warm-start
and its data are in :mod:`bicc_lab.models.tiny_warmstart`; sampling, sampled accuracy and
the context probe in :mod:`bicc_lab.models.tiny_probe`.

torch / transformers are imported inside functions only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bicc_lab.spec.sections import TINY_PRESETS, TinyModelConfig

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

    from bicc_lab.models.tiny_probe import context_probe, describe_probe
    from bicc_lab.models.tiny_warmstart import (
        max_answer,
        probe_template,
        warm_start,
        warm_start_rows,
    )

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
