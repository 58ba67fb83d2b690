"""Offline tiny model family: tokenizer, chat template, warm-start, cache, loading."""

from __future__ import annotations

import json
import os
import time

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from bicc_lab.models import tiny as T  # noqa: E402
from bicc_lab.models.loading import (  # noqa: E402
    ModelNotFoundError,
    check_model_reference,
    load_model_and_tokenizer,
    resolve_model_path,
)

# A config that warm-starts in about a second: 1-digit addition, 1 layer.
FAST = T.TinyModelConfig(
    layers=1,
    hidden=32,
    heads=2,
    kv_heads=1,
    intermediate=64,
    max_positions=64,
    digits=1,
    n_test=20,
    n_val=20,
    target_accuracy=0.2,
    eval_every=10,
    max_steps=1500,
    max_seconds=60,
    lr=3e-3,
    batch_size=32,
    warmup_steps=5,
)


@pytest.fixture(scope="module")
def tokenizer():
    return T.build_tokenizer()


@pytest.fixture(scope="module")
def fast_model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    t0 = time.perf_counter()
    path = T.build_tiny_model(FAST, root, progress=False)
    return root, path, time.perf_counter() - t0


# ------------------------------------------------------------------ tokenizer


def test_tokenizer_specials_and_ids(tokenizer):
    assert tokenizer.convert_ids_to_tokens([0, 1, 2]) == [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
    ]
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == 2
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.pad_token_id == 0
    assert len(tokenizer) == 259  # 3 specials + 256 bytes


@pytest.mark.parametrize(
    "text", ["47+38=85", "  spaced  out\n\tnew line", "\\boxed{\\frac{1}{2}}", "héllo ∑ 数学", ""]
)
def test_tokenizer_round_trip(tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text


def test_tokenizer_is_character_level_for_ascii(tokenizer):
    ids = tokenizer.encode("47+38=", add_special_tokens=False)
    assert len(ids) == 6
    assert tokenizer.convert_ids_to_tokens(ids) == list("47+38=")
    # special tokens in text are single tokens; skip_special_tokens drops them
    ids = tokenizer.encode("85<|im_end|>", add_special_tokens=False)
    assert ids[-1] == tokenizer.eos_token_id and len(ids) == 3
    assert tokenizer.decode(ids, skip_special_tokens=True) == "85"


def test_chat_template_renders_chatml(tokenizer):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "47+38="}]
    text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\n47+38=<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    full = tokenizer.apply_chat_template(
        msgs + [{"role": "assistant", "content": "85"}], tokenize=False
    )
    assert full.endswith("<|im_start|>assistant\n85<|im_end|>\n")


# ------------------------------------------------------------------ config / cache key


def test_default_config_matches_design():
    cfg = T.TinyModelConfig()
    tok = T.build_tokenizer()
    model = T.build_untrained_model(cfg, tok)
    n = sum(p.numel() for p in model.parameters())
    assert (cfg.layers, cfg.hidden) == (4, 128)
    assert 0.7e6 < n < 0.9e6  # "0.8M parameters"
    assert model.generation_config.eos_token_id == tok.eos_token_id
    assert model.generation_config.pad_token_id == tok.pad_token_id


def test_cache_key_depends_on_every_field():
    base = T.TinyModelConfig()
    assert base.cache_key() == T.TinyModelConfig().cache_key()
    assert len(base.cache_key()) == 16
    keys = {base.cache_key()}
    for change in (
        {"seed": 1},
        {"lr": 1e-3},
        {"target_accuracy": 0.5},
        {"digits": 3},
        {"layers": 2},
    ):
        keys.add(T.TinyModelConfig(**change).cache_key())
    assert len(keys) == 6


def test_cache_root_env(monkeypatch, tmp_path):
    monkeypatch.setenv("BICC_LAB_CACHE", str(tmp_path))
    assert T.cache_root() == tmp_path
    assert T.tiny_model_dir(FAST) == tmp_path / "tiny" / FAST.cache_key()
    assert T.cache_root(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("BICC_LAB_CACHE")
    assert T.cache_root() == T.Path.home() / ".cache" / "bicc_lab"


def test_bad_config_rejected():
    with pytest.raises(ValueError, match="prompt_format"):
        T.TinyModelConfig(prompt_format="xml")
    with pytest.raises(ValueError, match="unknown tiny model variant"):
        T.tiny_variant("huge")


# ------------------------------------------------------------------ warm-start + cache


def test_warm_start_reaches_low_target(fast_model_dir):
    _, path, seconds = fast_model_dir
    record = json.loads((path / "warmstart.json").read_text())
    assert record["reached_target"] is True and record["stopped_by"] == "target"
    assert record["accuracy"] >= FAST.target_accuracy
    assert record["steps"] % FAST.eval_every == 0 and 0 < record["steps"] < FAST.max_steps
    assert record["history"][-1]["accuracy"] == record["accuracy"]
    assert all(h["accuracy"] < FAST.target_accuracy for h in record["history"][:-1])
    assert record["config"] == FAST.to_dict() and record["cache_key"] == FAST.cache_key()
    assert seconds < 60


def test_saved_dir_layout_and_atomic_build(fast_model_dir):
    root, path, _ = fast_model_dir
    assert path == root / "tiny" / FAST.cache_key()
    names = {p.name for p in path.iterdir()}
    assert {
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "warmstart.json",
    } <= names
    assert any(n.endswith(".safetensors") for n in names)
    # no temporary build directories left behind
    assert [p.name for p in (root / "tiny").iterdir() if p.name.startswith(".tmp")] == []


def test_saved_dir_loads_with_auto_classes_and_generates(fast_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, path, _ = fast_model_dir
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.model_type == "qwen2"
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert tok.chat_template == T.CHATML_TEMPLATE
    assert model.generation_config.eos_token_id == tok.eos_token_id
    enc = tok(["3+4=", "5+2="], return_tensors="pt", add_special_tokens=False)
    torch.manual_seed(0)
    out = model.generate(**enc, do_sample=True, max_new_tokens=4)
    assert out.shape[0] == 2 and 6 >= out.shape[1] - enc["input_ids"].shape[1] >= 1
    texts = tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    assert all(isinstance(t, str) for t in texts)


def test_cache_hit_returns_same_dir_without_training(fast_model_dir, monkeypatch):
    root, path, _ = fast_model_dir
    mtime = (path / "warmstart.json").stat().st_mtime_ns

    def boom(*a, **k):
        raise AssertionError("cache hit must not retrain")

    monkeypatch.setattr(T, "warm_start", boom)
    t0 = time.perf_counter()
    again = T.build_tiny_model(FAST, root, progress=False)
    assert again == path
    assert time.perf_counter() - t0 < 0.5
    assert (path / "warmstart.json").stat().st_mtime_ns == mtime


def test_warm_start_is_deterministic():
    import torch

    tok = T.build_tokenizer()
    cfg = T.TinyModelConfig(**{**FAST.to_dict(), "target_accuracy": 1.0, "max_steps": 30})
    states, records = [], []
    for _ in range(2):
        model = T.build_untrained_model(cfg, tok)
        records.append(T.warm_start(model, tok, cfg, progress=False))
        states.append({k: v.clone() for k, v in model.state_dict().items()})
    assert records[0]["history"] == [
        {**h, "seconds": records[0]["history"][i]["seconds"]}
        for i, h in enumerate(records[1]["history"])
    ]
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_untrained_variant_skips_warm_start(tmp_path):
    cfg = T.TinyModelConfig(**{**FAST.to_dict(), "target_accuracy": 0.0})
    path = T.build_tiny_model(cfg, tmp_path, progress=False)
    rec = T.read_record(path)
    assert rec["steps"] == 0 and rec["history"] == [] and rec["reached_target"] is True


def test_failed_build_leaves_no_directory(tmp_path, monkeypatch):
    def fail(*a, **k):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(T, "warm_start", fail)
    with pytest.raises(RuntimeError):
        T.build_tiny_model(FAST, tmp_path, progress=False)
    assert [p.name for p in (tmp_path / "tiny").iterdir() if not p.name.endswith(".lock")] == []


def test_sampled_accuracy_counts_exact_answers():
    """A model that always emits the right digits scores 1.0; ``sampled_accuracy`` parses
    the leading integer of each sample."""
    import torch

    tok = T.build_tokenizer()
    rows = [{"prompt": "3+4=", "solution": "7"}, {"prompt": "5+1=", "solution": "6"}]

    class Oracle(torch.nn.Module):
        training = False

        def generate(self, input_ids, attention_mask, **kw):
            outs = []
            for r in rows:
                ids = tok.encode(r["prompt"] + r["solution"], add_special_tokens=False) + [
                    tok.eos_token_id
                ]
                outs.append(ids)
            return torch.tensor(outs)

    assert T.sampled_accuracy(Oracle(), tok, rows) == 1.0


# ------------------------------------------------------------------ loading


def test_check_model_reference_kinds(tmp_path, fast_model_dir):
    _, path, _ = fast_model_dir
    assert check_model_reference("tiny").kind == "tiny"
    ref = check_model_reference("tiny:nano")
    assert (ref.kind, ref.variant) == ("tiny", "nano")
    assert check_model_reference(str(path)).kind == "local"
    assert check_model_reference("Qwen/Qwen3-4B-Instruct-2507").kind == "hub"
    assert check_model_reference("gpt2").kind == "hub"
    with pytest.raises(ValueError, match="unknown tiny model variant"):
        check_model_reference("tiny:huge")


@pytest.mark.parametrize(
    "name",
    [
        "/nonexistent/model",
        "./missing-model",
        "~/no/such/model",
        "runs/exp1/checkpoint-100",
        "../up",
    ],
)
def test_missing_local_path_is_model_not_found(name):
    with pytest.raises(ModelNotFoundError) as info:
        check_model_reference(name)
    msg = str(info.value)
    assert name in msg and "\n" not in msg
    assert isinstance(info.value, ValueError)


def test_not_a_model_directory(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        check_model_reference(str(tmp_path))
    f = tmp_path / "weights.bin"
    f.write_text("x")
    with pytest.raises(ModelNotFoundError, match="is a file"):
        check_model_reference(str(f))


def test_load_missing_path_raises_before_any_hub_call(monkeypatch):
    import transformers

    def no_hub(*a, **k):
        raise AssertionError("must not reach from_pretrained")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_hub)
    with pytest.raises(ModelNotFoundError, match="no such model directory"):
        load_model_and_tokenizer("/definitely/not/here")


def test_load_local_dir_and_tiny_reference(fast_model_dir):
    import torch

    root, path, _ = fast_model_dir
    model, tok = load_model_and_tokenizer(str(path))
    assert model.dtype == torch.float32 and tok.pad_token_id == 0
    model, tok = load_model_and_tokenizer(
        "tiny", tiny_config=FAST, cache_dir=root, dtype="bfloat16"
    )
    assert model.dtype == torch.bfloat16
    assert model.generation_config.pad_token_id == tok.pad_token_id
    assert resolve_model_path("tiny", tiny_config=FAST, cache_dir=root) == str(path)
    assert resolve_model_path("org/model") == "org/model"


def test_warm_start_below_target_is_an_error_and_not_cached(tmp_path):
    import dataclasses

    unreachable = dataclasses.replace(FAST, target_accuracy=1.0, max_steps=3, eval_every=3)
    with pytest.raises(T.TinyWarmStartError, match="below|< target"):
        T.build_tiny_model(unreachable, tmp_path, progress=False)
    assert not T.is_built(T.tiny_model_dir(unreachable, tmp_path))


def test_distractor_context_matches_bicc_separator_layout():
    import random

    from bicc_lab.algorithms.bicc import separator_template

    rng = random.Random(0)
    text = T.with_distractor_context("47+38=", "85", rng)
    assert text.startswith("47+38=\n") and text.endswith("\n")
    others = text[len("47+38=") :].strip("\n").split("\n")
    assert 1 <= len(others) <= 3 and all(o.isdigit() and o != "85" for o in others)
    # The same characters BICC's separator template inserts: prefix "\n" per trace, footer "\n".
    template = separator_template("\n")
    assert template.trace_prefix == "\n" and template.footer == "\n" and template.placement == "append"
