"""Offline tiny model family: tokenizer, chat template, warm-start, cache, loading."""

from __future__ import annotations

import json
import os
import time

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pathlib import Path  # noqa: E402

from bicc_lab.models import tiny as T  # noqa: E402
from bicc_lab.models import tiny_probe as P  # noqa: E402
from bicc_lab.models import tiny_warmstart as W  # noqa: E402
from bicc_lab.models.loading import (  # noqa: E402
    ModelNotFoundError,
    check_model_reference,
    load_model_and_tokenizer,
    resolve_model_path,
)

ROOT = Path(__file__).resolve().parents[1]

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
    max_warmup_steps=1500,
    # no wall-clock cap: the step cap decides, so a busy machine builds the same model
    warmup_lr=3e-3,
    batch_size=32,
    lr_warmup_steps=5,
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
    assert T.cache_key(base) == T.cache_key(T.TinyModelConfig())
    assert len(T.cache_key(base)) == 16
    keys = {T.cache_key(base)}
    for change in (
        {"seed": 1},
        {"warmup_lr": 1e-3},
        {"target_accuracy": 0.5},
        {"digits": 3},
        {"layers": 2},
    ):
        keys.add(T.cache_key(T.TinyModelConfig(**change)))
    assert len(keys) == 6


def test_cache_root_env(monkeypatch, tmp_path):
    monkeypatch.setenv("BICC_LAB_CACHE", str(tmp_path))
    assert T.cache_root() == tmp_path
    assert T.tiny_model_dir(FAST) == tmp_path / "tiny" / T.cache_key(FAST)
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
    assert record["steps"] % FAST.eval_every == 0 and 0 < record["steps"] < FAST.max_warmup_steps
    assert record["history"][-1]["accuracy"] == record["accuracy"]
    assert all(h["accuracy"] < FAST.target_accuracy for h in record["history"][:-1])
    assert record["config"] == FAST.to_dict() and record["cache_key"] == T.cache_key(FAST)


def test_saved_dir_layout_and_atomic_build(fast_model_dir):
    root, path, _ = fast_model_dir
    assert path == root / "tiny" / T.cache_key(FAST)
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

    monkeypatch.setattr(W, "warm_start", boom)
    t0 = time.perf_counter()
    again = T.build_tiny_model(FAST, root, progress=False)
    assert again == path
    assert time.perf_counter() - t0 < 0.5
    assert (path / "warmstart.json").stat().st_mtime_ns == mtime


def test_warm_start_is_deterministic():
    import torch

    tok = T.build_tokenizer()
    cfg = T.TinyModelConfig(**{**FAST.to_dict(), "target_accuracy": 1.0, "max_warmup_steps": 30})
    states, records = [], []
    for _ in range(2):
        model = T.build_untrained_model(cfg, tok)
        records.append(W.warm_start(model, tok, cfg, progress=False))
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


def test_failed_build_leaves_no_directory(tmp_path):
    """A warm-start that stops below its target fails in the build's child process; the
    caller gets the child's reason and nothing is cached."""
    hopeless = FAST.replace(target_accuracy=1.0, max_warmup_steps=10, eval_every=5)
    with pytest.raises(T.TinyWarmStartError, match="stopped by max_warmup_steps after 10 steps"):
        T.build_tiny_model(hopeless, tmp_path, progress=False)
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

    assert P.sampled_accuracy(Oracle(), tok, rows) == 1.0


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
    unreachable = FAST.replace(target_accuracy=1.0, max_warmup_steps=3, eval_every=3)
    with pytest.raises(T.TinyWarmStartError, match="below|< target"):
        T.build_tiny_model(unreachable, tmp_path, progress=False)
    assert not T.is_built(T.tiny_model_dir(unreachable, tmp_path))


# ------------------------------------------------------------------ context-literate warm-start

# The default config's cache key before the context recipe (BUILD_VERSION 1, no context
# block): a model built by the old recipe must never be picked up by the new one.
OLD_DEFAULT_KEY = "ee0d19d779d6270a"
OLD_QUICKSTART_KEY = "92828b6bdbf39bf1"  # experiments/tiny.yaml's model before the recipe


def test_cache_key_changes_with_the_context_recipe():
    from bicc_lab.spec import load_experiment

    base = T.TinyModelConfig()
    assert base.context_prob == 0.5 and base.context_templates == ("compact",)
    assert T.cache_key(base) != OLD_DEFAULT_KEY
    quickstart = load_experiment(ROOT / "experiments" / "tiny.yaml", []).model.tiny
    assert T.cache_key(quickstart) != OLD_QUICKSTART_KEY
    keys = {T.cache_key(base)}
    for change in (
        {"context_prob": 0.0},
        {"context_templates": ("separator",)},
        {"context_templates": ("compact", "default")},
        {"context_separator": " | "},
        {"context_correct_prob": 0.5},
        {"context_cut_prob": 0.0},
        {"context_max_attempts": 2},
    ):
        keys.add(T.cache_key(base.replace(**change)))
    assert len(keys) == 8


def test_quickstart_trains_bicc_with_the_layout_the_model_was_warm_started_on():
    from bicc_lab.spec import load_experiment

    config = load_experiment(ROOT / "experiments" / "tiny.yaml", [])
    tiny = config.model.tiny
    assert tiny.context_prob == 0.5
    assert (config.bicc.template, config.bicc.separator) == (tiny.context_templates[0], tiny.context_separator)


def _draw(config, n, rows=None):
    tok = T.build_tokenizer()
    rows = rows or [{"prompt": "47+38=", "solution": "85"}]
    examples = W._WarmStartPrompts(tok, rows, config)
    return [(tok.decode(p), tok.decode(a)) for p, a in (examples.example(i % len(rows)) for i in range(n))]


def test_warm_start_prompts_carry_blocks_in_front_of_the_question():
    drawn = _draw(T.TinyModelConfig(), 2000)
    assert all(answer == "85<|im_end|>" for _, answer in drawn)
    bare = [p for p, _ in drawn if p == "47+38="]
    blocks = [p[: -len("47+38=")] for p, _ in drawn if p != "47+38="]
    # every prompt ends with the question, so the question still leads into the answer
    assert all(p.endswith("47+38=") for p, _ in drawn)
    assert 0.45 < len(blocks) / len(drawn) < 0.55 and len(bare) + len(blocks) == len(drawn)
    attempts = [b.split("\n")[:-1] for b in blocks]  # compact: every attempt ends with "\n"
    assert all(b.endswith("\n") for b in blocks)
    assert {len(a) for a in attempts} == {1, 2, 3}
    flat = [x for a in attempts for x in a]
    assert all(x.isdigit() for x in flat)
    right = sum(x == "85" for x in flat) / len(flat)
    assert 0.25 < right < 0.35  # each attempt is the right answer with probability 0.3
    # both outcomes: blocks with and without the right answer
    assert any("85" in a for a in attempts) and any("85" not in a for a in attempts)
    # With only right answers, a cut attempt is "8": a proper prefix, as BICC's cut packing
    # leaves a trace, and only in last place.
    only_right = T.TinyModelConfig().replace(context_prob=1.0, context_correct_prob=1.0)
    attempts = [p[: -len("47+38=")].split("\n")[:-1] for p, _ in _draw(only_right, 1000)]
    assert all(a[:-1] == ["85"] * (len(a) - 1) and a[-1] in ("85", "8") for a in attempts)
    assert 0.2 < sum(a[-1] == "8" for a in attempts) / len(attempts) < 0.3
    only_wrong = only_right.replace(context_correct_prob=0.0, context_cut_prob=0.0)
    wrong_blocks = [p[: -len("47+38=")].split("\n")[:-1] for p, _ in _draw(only_wrong, 600)]
    assert not any("85" in a for a in wrong_blocks)
    # Wrong attempts repeat, as a model's own mistakes do, so a repeated answer is no sign
    # of the right one: at most two distinct mistakes per block, often the same one twice.
    longer = [a for a in wrong_blocks if len(a) >= 2]
    assert all(len(set(a)) <= 2 for a in wrong_blocks)
    assert 0.3 < sum(len(set(a)) < len(a) for a in longer) / len(longer) < 0.9


def test_header_templates_show_one_outcome_and_say_which():
    config = T.TinyModelConfig().replace(context_prob=1.0, context_templates=("default",))
    drawn = [p for p, _ in _draw(config, 300)]
    header = "\nFor reference, here are other attempts at this problem that were {}:\n"
    for prompt in drawn:
        assert prompt.endswith("\n47+38=")
        shown = "correct" if prompt.startswith(header.format("correct")) else "incorrect"
        assert prompt.startswith(header.format(shown))
        answers = [line.split(": ", 1)[1] for line in prompt.split("\n") if line.startswith("Attempt ")]
        whole = answers[:-1]
        assert all((x == "85") == (shown == "correct") for x in whole)
    assert any(p.startswith(header.format("correct")) for p in drawn)


def test_chat_prompts_stay_bare():
    config = T.TinyModelConfig().replace(prompt_format="chat", context_prob=1.0)
    assert all(p.endswith("<|im_start|>user\n47+38=<|im_end|>\n<|im_start|>assistant\n") and "Attempt" not in p
               and p.count("<|im_start|>") == 2 for p, _ in _draw(config, 20))


def test_wrong_answers_are_wrong_and_nonnegative():
    import random

    rng = random.Random(0)
    for answer in (0, 5, 85, 100, 198):
        guesses = [W.wrong_answer(answer, rng) for _ in range(200)]
        assert all(g != answer and g >= 0 for g in guesses)
        assert len(set(guesses)) > 5


def test_warm_start_layout_is_the_layout_bicc_packs():
    """The block the warm-start writes as text is, token for token, the block BICC's packer
    splices into a conditioned prompt, for every template."""
    import torch

    from bicc_lab.algorithms.bicc import (
        get_template,
        layout_block,
        pack_conditioned_prompts,
        place_block,
    )

    tok = T.build_tokenizer()

    def ids(text):
        return tok.encode(text, add_special_tokens=False)

    prompt = ids("47+38=")
    completions = [ids("84") + [2], ids("85") + [2], ids("91") + [2], ids("85") + [2]]
    width = max(map(len, completions))
    completion_ids = torch.tensor([c + [0] * (width - len(c)) for c in completions])
    completion_mask = torch.tensor([[1] * len(c) + [0] * (width - len(c)) for c in completions])
    rewards = torch.tensor([0.0, 1.0, 0.0, 1.0])
    for name in ("compact", "separator", "default"):
        template = get_template(name, "\n")
        packed = pack_conditioned_prompts(
            torch.tensor([prompt] * 4), torch.ones(4, len(prompt), dtype=torch.long),
            completion_ids, completion_mask, rewards, 4,
            tokenize=ids, budget_tokens=200, pad_token_id=0, template=template, strip_token_ids=[0, 2], seed=0,
        )
        for i in range(4):
            got = tok.decode(packed.prompt_ids[i][packed.prompt_mask[i].bool()].tolist())
            shown_traces = ["85", "85"] if rewards[i] == 0 else ["84", "91"]
            shown = "incorrect" if rewards[i] == 1 else "correct"
            candidates = {place_block("47+38=", layout_block(order, template, shown), template)
                          for order in (shown_traces, shown_traces[::-1])}
            assert got in candidates, (name, got)
    assert place_block("47+38=", layout_block(["84", "9"], get_template("compact"), "incorrect"),
                       get_template("compact")) == "84\n9\n47+38="


def test_sequence_logps_ignore_padding():
    """Summed completion log-probs from a padded batch equal those of each sequence alone."""
    import torch

    tok = T.build_tokenizer()
    cfg = T.TinyModelConfig(layers=1, hidden=32, heads=2, kv_heads=1, intermediate=64)
    model = T.build_untrained_model(cfg, tok)
    prompts = [tok.encode(t, add_special_tokens=False) for t in ("47+38=", "84\n91\n47+38=")]
    completions = [tok.encode("85", add_special_tokens=False) + [2], tok.encode("7", add_special_tokens=False) + [2]]
    p_ids, p_mask = P._left_pad(prompts, 0)
    c_ids, c_mask = P._right_pad(completions, 0)
    batched = P.sequence_logps(model, p_ids, p_mask, c_ids, c_mask)
    for k in range(2):
        seq = torch.tensor([prompts[k] + completions[k]])
        with torch.no_grad():
            logps = torch.log_softmax(model(input_ids=seq).logits[0, :-1], -1)
        n = len(completions[k])
        expected = sum(logps[len(prompts[k]) - 1 + j, completions[k][j]].item() for j in range(n))
        assert abs(batched[k].item() - expected) < 1e-4


def test_build_records_the_context_probe(fast_model_dir):
    _, path, _ = fast_model_dir
    probe = T.read_record(path)["context_probe"]
    held_out = W.warm_start_rows(FAST)[1]  # the probe reads the held-out slice, never the test split
    assert probe["prompts"] == len(held_out) and probe["group_size"] == FAST.probe_group_size
    assert probe["template"] == "compact" and probe["budget_tokens"] == FAST.probe_budget_tokens
    assert probe["n_correct_scored"] + probe["n_incorrect_scored"] > 0
    assert probe["mixed_groups"] <= FAST.n_val
    for key in ("logp_shift_correct", "logp_shift_incorrect", "accuracy_plain", "accuracy_wrong_context"):
        assert isinstance(probe[key], float)
    assert abs(probe["accuracy_delta"] - (probe["accuracy_wrong_context"] - probe["accuracy_plain"])) < 1e-6
    assert "logp shift of correct answers under wrong attempts" in P.describe_probe(probe)
    for side in ("correct", "incorrect"):
        summary = probe[f"shift_{side}"]
        if summary is not None:
            assert summary["n"] == probe[f"n_{side}_scored"]
            assert summary["per_sequence_mean"] == pytest.approx(probe[f"logp_shift_{side}"], abs=1e-6)
            assert "nats/token" in P.describe_probe(probe)


def test_probe_with_no_room_for_a_trace_conditions_nothing(fast_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bicc_lab.algorithms.bicc import get_template

    _, path, _ = fast_model_dir
    model, tok = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    rows = W.warm_start_rows(FAST)[1][:10]
    probe = P.context_probe(model, tok, rows, template=get_template("compact"), budget_tokens=1,
                            group_size=4, samples=2)
    # one token of budget holds the separator or one digit, never a trace + separator
    assert probe["n_correct_scored"] == probe["n_incorrect_scored"] == probe["mixed_groups"] == 0
    assert probe["logp_shift_correct"] is None and probe["accuracy_delta"] is None


# ------------------------------------------------------------------ reproducible build


def test_shift_summary_hand_computed():
    import torch

    # shifts -1, -2, -6 nats over 1, 2, 3 tokens
    summary = P.shift_summary(torch.tensor([-1.0, -2.0, -6.0]), torch.tensor([1.0, 2.0, 3.0]))
    assert summary["n"] == 3 and summary["tokens"] == 6
    assert summary["per_sequence_mean"] == pytest.approx(-3.0)
    assert summary["per_sequence_median"] == pytest.approx(-2.0)
    se = (((-1 + 3) ** 2 + (-2 + 3) ** 2 + (-6 + 3) ** 2) / 2) ** 0.5 / 3**0.5  # sd sqrt(7), n 3
    assert summary["per_sequence_ci95"] == pytest.approx([-3 - 1.96 * se, -3 + 1.96 * se])
    assert summary["per_token_mean"] == pytest.approx(-9 / 6)
    # delta method: residuals s - r n = (0.5, 1, -1.5), sd sqrt(3.5/2), se = sd sqrt(3) / 6
    per_token_se = (3.5 / 2) ** 0.5 * 3**0.5 / 6
    assert summary["per_token_ci95"] == pytest.approx([-1.5 - 1.96 * per_token_se, -1.5 + 1.96 * per_token_se])
    assert P.shift_summary(torch.tensor([]), torch.tensor([])) is None


def test_cache_key_covers_threads_and_library_versions(monkeypatch):
    base = T.cache_key(FAST)
    monkeypatch.setattr(T, "BUILD_THREADS", T.BUILD_THREADS + 1)
    assert T.cache_key(FAST) != base
    monkeypatch.undo()
    real = T._library_versions()
    monkeypatch.setattr(T, "_library_versions", lambda: {**real, "torch": "0.0.1"})
    assert T.cache_key(FAST) != base
    monkeypatch.setattr(T, "_library_versions", lambda: {**real, "transformers": "0.0.1"})
    assert T.cache_key(FAST) != base


def test_build_records_its_fixed_threads_and_weights_hash(fast_model_dir):
    from transformers import AutoModelForCausalLM

    _, path, _ = fast_model_dir
    record = T.read_record(path)
    assert record["build_threads"] == record["num_threads"] == T.BUILD_THREADS
    # the recorded hash is the saved weights' hash (reloading changes nothing)
    assert record["weights_sha256"] == T.weights_sha256(AutoModelForCausalLM.from_pretrained(path))


HOSTS = {
    "one thread": {"OMP_NUM_THREADS": "1"},
    "two threads, ATen's generic kernels": {"OMP_NUM_THREADS": "2", "ATEN_CPU_CAPABILITY": "default",
                                            "MKL_CBWR": "AUTO"},
}


@pytest.mark.slow
@pytest.mark.parametrize("host", list(HOSTS))
def test_build_does_not_depend_on_the_host(host, fast_model_dir, tmp_path):
    """The same config gives the same weights whatever threads and kernels the calling
    process runs with: the build pins its own in a child process."""
    import subprocess
    import sys

    _, reference, _ = fast_model_dir
    code = (
        "import sys; from bicc_lab.models import tiny as T; "
        "from bicc_lab.spec.sections import TinyModelConfig; "
        f"T.build_tiny_model(TinyModelConfig.model_validate_json({FAST.model_dump_json()!r}), sys.argv[1], progress=False)"
    )
    env = {**os.environ, **HOSTS[host]}
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = T.read_record(T.tiny_model_dir(FAST, tmp_path))
    assert record["num_threads"] == T.BUILD_THREADS
    assert record["build_environment"] == T.build_environment()
    assert record["weights_sha256"] == T.read_record(reference)["weights_sha256"]
    assert record["steps"] == T.read_record(reference)["steps"]
