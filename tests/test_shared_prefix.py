"""Shared-prefix conditioned forward: same log-probs and gradients as the plain forward,
fewer tokens; the trainer reuses π_old instead of recomputing it, and counts tokens."""

from __future__ import annotations

import contextlib
import json
import types
import warnings

import pytest
import torch
from conftest import assert_float32_sums_close

pytest.importorskip("trl")

from trl import GRPOTrainer  # noqa: E402
from trl.trainer.utils import add_fused_lm_head  # noqa: E402

from bicc_lab.algorithms import bicc as bicc_alg  # noqa: E402
from bicc_lab.backends.trl.shared_prefix import (  # noqa: E402
    distinct_rows,
    group_permutation,
    shared_prefix_logps,
    unsupported_reason,
)
from bicc_lab.models.tiny import build_tokenizer  # noqa: E402

G = 4
TEMPERATURE = 0.7
# TRL's own forward (the unshared path), without its profiling wrapper.
_PLAIN_FORWARD = GRPOTrainer._get_per_token_logps_and_entropies.__wrapped__
_NO_TRAINER = types.SimpleNamespace(accelerator=types.SimpleNamespace(autocast=contextlib.nullcontext))


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def random_model(family: str, vocab_size: int):
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
    )

    config_cls, model_cls = {
        "qwen2": (Qwen2Config, Qwen2ForCausalLM),
        "llama": (LlamaConfig, LlamaForCausalLM),
        "qwen3": (Qwen3Config, Qwen3ForCausalLM),
    }[family]
    config = config_cls(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=512)
    torch.manual_seed(0)
    model = model_cls(config).float()
    add_fused_lm_head(model, temperature=TEMPERATURE, outputs=("log_probs", "entropy"))
    return model


def conditioned_batch(tokenizer, template_name: str, chat: bool):
    """Three groups of G: mixed (2/2), degenerate (all wrong), single-trace (1 correct: the
    incorrect half sees one trace); prompts of different lengths, so rows are left-padded."""
    problems = ["7+8=", "12+34=", "5+5="]
    rewards = torch.tensor([1.0, 0, 1, 0] + [0.0] * 4 + [1.0, 0, 0, 0])
    generator = torch.Generator().manual_seed(1)
    prompts, completions = [], []
    for problem in problems:
        text = problem
        if chat:
            text = tokenizer.apply_chat_template([{"role": "user", "content": problem}], tokenize=False,
                                                 add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        for _ in range(G):
            prompts.append(ids)
            length = int(torch.randint(1, 6, (1,), generator=generator))
            digits = tokenizer("0123456789", add_special_tokens=False)["input_ids"]
            picks = torch.randint(0, 10, (length,), generator=generator).tolist()
            completions.append([digits[i] for i in picks] + [tokenizer.eos_token_id])

    def pad(rows, left):
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), tokenizer.pad_token_id)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            cols = slice(width - len(r), width) if left else slice(0, len(r))
            ids[i, cols], mask[i, cols] = torch.tensor(r), 1
        return ids, mask

    prompt_ids, prompt_mask = pad(prompts, left=True)
    completion_ids, completion_mask = pad(completions, left=False)
    template = bicc_alg.get_template(template_name, "\n")
    insert_positions = None
    if chat and template.placement == "before_answer":
        sentinel = "\u2063S\u2063"
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": sentinel}], tokenize=False,
                                                 add_generation_prompt=True)
        suffix = tokenizer(rendered.split(sentinel, 1)[1], add_special_tokens=False)["input_ids"]
        insert_positions = [len(p) - len(suffix) for p in prompts]
    packed = bicc_alg.pack_conditioned_prompts(
        prompt_ids, prompt_mask, completion_ids, completion_mask, rewards, G,
        tokenize=lambda text: tokenizer(text, add_special_tokens=False)["input_ids"],
        budget_tokens=150, pad_token_id=tokenizer.pad_token_id, template=template,
        insert_positions=insert_positions, strip_token_ids=[tokenizer.eos_token_id, tokenizer.pad_token_id],
    )
    assert packed.conditioned.tolist() == [True] * 4 + [False] * 4 + [True] * 4
    assert packed.num_traces[9:].tolist() == [1, 1, 1]  # the single-trace side
    return packed.prompt_ids, packed.prompt_mask, completion_ids, completion_mask


def logps_and_grads(model, forward):
    model.zero_grad()
    logps, entropies, mask = forward()
    weights = torch.linspace(-1.0, 2.0, logps.numel()).view_as(logps)  # no symmetry hides a wrong row
    (logps * weights * mask).sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return logps.detach(), entropies.detach(), grads


CASES = [  # every layout on the tiny model's family; the chat layout on the others
    (family, template, chat, checkpointing)
    for family, layouts in {
        "qwen2": [("default", True), ("separator", False), ("default", False), ("separator", True)],
        "llama": [("default", True)],
        "qwen3": [("default", True)],
    }.items()
    for template, chat in layouts
    for checkpointing in (False, True)
]


@pytest.mark.parametrize("batch_size", [None, 5])  # 5: completion calls that split groups
@pytest.mark.parametrize(
    "family,template,chat,checkpointing", CASES,
    ids=[f"{f}-{t}-{'chat' if c else 'plain'}-{'ckpt' if k else 'no-ckpt'}" for f, t, c, k in CASES],
)
def test_shared_prefix_equals_the_plain_forward(tokenizer, family, template, chat, checkpointing, batch_size):
    model = random_model(family, len(tokenizer))
    model.train()
    if checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        assert unsupported_reason(model) is None
    prompt_ids, prompt_mask, completion_ids, completion_mask = conditioned_batch(tokenizer, template, chat)
    width = completion_ids.size(1)

    def plain():
        logps, entropies, _ = _PLAIN_FORWARD(
            _NO_TRAINER, model, torch.cat([prompt_ids, completion_ids], 1), torch.cat([prompt_mask, completion_mask], 1),
            width, compute_entropy=True)
        return logps, entropies, completion_mask

    def shared():
        out = shared_prefix_logps(model, prompt_ids, prompt_mask, completion_ids, completion_mask,
                                  num_layers=2, temperature=TEMPERATURE, compute_entropy=True, batch_size=batch_size)
        # 12 rows, 5 distinct prompts: the mixed group's two sides, the degenerate group's q,
        # the single-trace group's two sides.
        assert out.distinct_prompts == 5
        return out.logps, out.entropies, completion_mask

    plain_logps, plain_entropy, plain_grads = logps_and_grads(model, plain)
    shared_logps, shared_entropy, shared_grads = logps_and_grads(model, shared)
    torch.testing.assert_close(shared_logps, plain_logps, atol=1e-5, rtol=0)
    torch.testing.assert_close(shared_entropy, plain_entropy, atol=1e-5, rtol=0)
    assert shared_grads.keys() == plain_grads.keys()
    # A parameter's gradient sums one term per token position of the batch.
    positions = int(torch.cat([prompt_mask, completion_mask], 1).numel())
    for name, grad in plain_grads.items():
        assert_float32_sums_close(shared_grads[name], grad, positions, name)
    # The prompt-side gradient is really there (the context tokens' hidden states get one).
    assert plain_grads["model.embed_tokens.weight"].abs().sum() > 0


def test_token_counts_are_distinct_prompts_plus_completions(tokenizer):
    model = random_model("qwen2", len(tokenizer))
    prompt_ids, prompt_mask, completion_ids, completion_mask = conditioned_batch(tokenizer, "separator", False)
    out = shared_prefix_logps(model, prompt_ids, prompt_mask, completion_ids, completion_mask, num_layers=2,
                              temperature=TEMPERATURE)
    distinct = {tuple(row[m.bool()].tolist()) for row, m in zip(prompt_ids, prompt_mask, strict=True)}
    # Each distinct prompt once, each completion once: the limit for these groups.
    assert out.prompt_tokens == sum(len(p) for p in distinct)
    assert out.completion_tokens == int(completion_mask.sum())
    assert out.prompt_tokens < int(prompt_mask.sum())


def test_one_token_completions_are_scored_from_the_prefix_call(tokenizer):
    # Width 1: no completion call at all; the first (only) token comes from the prompt's logits.
    model = random_model("qwen2", len(tokenizer))
    prompt_ids, prompt_mask, completion_ids, completion_mask = conditioned_batch(tokenizer, "default", True)
    completion_ids, completion_mask = completion_ids[:, :1], completion_mask[:, :1]
    completion_mask[3, 0] = 0  # a masked row scores 0, as TRL's forward
    plain, plain_entropy, _ = _PLAIN_FORWARD(
        _NO_TRAINER, model, torch.cat([prompt_ids, completion_ids], 1), torch.cat([prompt_mask, completion_mask], 1),
        1, compute_entropy=True)
    out = shared_prefix_logps(model, prompt_ids, prompt_mask, completion_ids, completion_mask, num_layers=2,
                              temperature=TEMPERATURE, compute_entropy=True)
    torch.testing.assert_close(out.logps, plain, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.entropies, plain_entropy, atol=1e-5, rtol=0)
    assert out.logps[3, 0] == 0


def test_distinct_rows_keys_on_real_tokens_only():
    ids = torch.tensor([[0, 5, 6], [9, 5, 6], [5, 6, 7], [0, 0, 8]])
    mask = torch.tensor([[0, 1, 1], [0, 1, 1], [1, 1, 1], [0, 0, 1]])
    unique, unique_mask, inverse = distinct_rows(ids, mask)
    assert unique.size(0) == 3 and inverse[0] == inverse[1]  # a different pad id is still the same prompt
    for row in range(4):
        assert unique[inverse[row]][unique_mask[inverse[row]].bool()].tolist() == ids[row][mask[row].bool()].tolist()


def test_group_permutation_keeps_groups_together():
    torch.manual_seed(3)
    group_index = torch.tensor([4, 4, 4, 5, 5, 5, 6, 6, 6, 7, 7, 7])
    orders = set()
    for _ in range(20):
        permutation = group_permutation(group_index)
        assert sorted(permutation.tolist()) == list(range(12))
        permuted = group_index[permutation].view(-1, 3)
        assert (permuted == permuted[:, :1]).all()  # each group's rows stay adjacent
        orders.add(tuple(permuted[:, 0].tolist()))
    assert len(orders) > 1  # the group order is random


def test_group_permutation_draws_what_trls_sample_shuffle_draws():
    # The sampler's generator ends in the same state on both paths, so later rollouts match.
    from trl.trainer.utils import shuffle_sequence_dict

    group_index = torch.tensor([0, 0, 1, 1, 2, 2])
    torch.manual_seed(11)
    shuffle_sequence_dict({"rows": group_index})
    after_trl = torch.rand(3)
    torch.manual_seed(11)
    permutation = group_permutation(group_index)
    assert torch.equal(torch.rand(3), after_trl)
    # By hand: randperm(6) under seed 11, groups ranked by their first row's position in it.
    torch.manual_seed(11)
    sample_order = torch.randperm(6).tolist()
    group_order = list(dict.fromkeys(group_index[sample_order].tolist()))
    assert group_index[permutation].tolist() == [g for g in group_order for _ in range(2)]


def test_unsupported_settings_are_named(tokenizer):
    from transformers import MistralConfig, MistralForCausalLM

    model = random_model("qwen2", len(tokenizer))
    assert unsupported_reason(model) is None
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": True})
    assert "reentrant" in unsupported_reason(model)
    windowed = random_model("qwen2", len(tokenizer))
    windowed.config.layer_types = ["sliding_attention", "full_attention"]
    assert "sliding-window" in unsupported_reason(windowed)
    other = MistralForCausalLM(MistralConfig(vocab_size=16, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, num_key_value_heads=1))
    assert "mistral" in unsupported_reason(other)


# ----------------------------------------------------------------------------- in the trainer


def _trainer(untrained_tiny_dir, tmp_path, **overrides):
    from test_trl_trainer import force_mixed_rewards, tiny_config

    from bicc_lab.backends.trl.run import build_trainer

    config = tiny_config(untrained_tiny_dir, **{"bicc.enabled": True, **overrides})
    trainer = build_trainer(config, tmp_path, progress=False)
    force_mixed_rewards(trainer)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    return trainer


def _plain_logps(trainer, prompt_ids, prompt_mask, out):
    with torch.no_grad():
        logps, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, torch.cat([prompt_ids, out["completion_ids"]], 1),
            torch.cat([prompt_mask, out["completion_mask"]], 1), out["completion_ids"].size(1))
    return logps


def _loss_and_grads(trainer, inputs):
    trainer.model.zero_grad()
    loss = trainer._compute_loss(trainer.model, dict(inputs))
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in trainer.model.parameters() if p.grad is not None]


@pytest.mark.slow
def test_trainer_shared_and_unshared_paths_give_the_same_loss_and_gradients(untrained_tiny_dir, tmp_path):
    from test_trl_trainer import mixed_batch

    trainer = _trainer(untrained_tiny_dir, tmp_path, **{"rcc.enabled": True})
    out = mixed_batch(trainer)
    assert trainer._shared_prefix_usable()
    shared_loss, shared_grads = _loss_and_grads(trainer, out)
    trainer.shared_prefix = False
    assert not trainer._shared_prefix_usable()
    plain_loss, plain_grads = _loss_and_grads(trainer, out)
    torch.testing.assert_close(shared_loss, plain_loss, atol=1e-6, rtol=1e-5)
    for a, b in zip(shared_grads, plain_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # RCC's π_old(o|q) came from the shared no-grad pass: the same numbers as a fresh plain forward.
    fresh = _plain_logps(trainer, out["prompt_ids"], out["prompt_mask"], out)
    torch.testing.assert_close(out["bicc_rollout_logps"], fresh, atol=1e-5, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("rcc", [False, True])
def test_rollout_logps_come_from_the_sampler_and_equal_a_fresh_forward(untrained_tiny_dir, tmp_path, rcc):
    from test_trl_trainer import mixed_batch

    trainer = _trainer(untrained_tiny_dir, tmp_path, **{"rcc.enabled": rcc})
    out = mixed_batch(trainer)
    assert "bicc_rollout_rows" not in out
    fresh = _plain_logps(trainer, out["prompt_ids"], out["prompt_mask"], out)
    torch.testing.assert_close(out["bicc_rollout_logps"], fresh, atol=1e-5, rtol=0)
    assert trainer._token_totals["nograd_policy"] == 0  # no policy pass ran


@pytest.mark.slow
def test_without_sampler_logps_bicc_alone_runs_the_pass_on_conditioned_rows_only(untrained_tiny_dir, tmp_path):
    from test_trl_trainer import mixed_batch

    trainer = _trainer(untrained_tiny_dir, tmp_path)
    # TRL's own generation, as under continuous batching or tools: no sampler log-probs.
    trainer._generate = types.MethodType(GRPOTrainer._generate, trainer)
    out = mixed_batch(trainer)
    conditioned = out["bicc_conditioned"]
    assert torch.equal(out["bicc_rollout_rows"], conditioned)
    fresh = _plain_logps(trainer, out["prompt_ids"], out["prompt_mask"], out)
    torch.testing.assert_close(out["bicc_rollout_logps"][conditioned], fresh[conditioned], atol=1e-5, rtol=0)
    # The other rows take the loss forward's own detached log-probs: the loss equals the one
    # with a full rollout pass.
    reused_loss, reused_grads = _loss_and_grads(trainer, out)
    full = {k: v for k, v in out.items() if k != "bicc_rollout_rows"}
    full["bicc_rollout_logps"] = full["old_per_token_logps"] = fresh
    full_loss, full_grads = _loss_and_grads(trainer, full)
    torch.testing.assert_close(reused_loss, full_loss, atol=1e-6, rtol=1e-5)
    for a, b in zip(reused_grads, full_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_sampler_capture_matches_a_forward_and_refuses_other_completions(tokenizer):
    from transformers import GenerationConfig

    from bicc_lab.backends.trl.sampler_logps import SamplerLogpCapture

    model = random_model("qwen2", len(tokenizer))
    model.eval()
    prompts = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in ["7+8=", "12+34=", "5+5="]]
    width = max(map(len, prompts))
    ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in prompts])
    mask = (torch.arange(width) >= torch.tensor([width - len(p) for p in prompts]).unsqueeze(1)).long()
    config = GenerationConfig(do_sample=True, temperature=TEMPERATURE, top_k=0, max_new_tokens=7,
                              eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    with torch.no_grad(), SamplerLogpCapture(model, TEMPERATURE) as capture:
        generated = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)[:, width:]
    completions = []
    for row in generated.tolist():  # up to and including the first EOS, as TRL keeps them
        cut = row.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in row else len(row)
        completions.append(row[:cut])
    captured = capture.logps(completions, torch.device("cpu"))
    completion_ids = torch.zeros_like(captured, dtype=torch.long)
    completion_mask = torch.zeros_like(completion_ids)
    for i, c in enumerate(completions):
        completion_ids[i, :len(c)], completion_mask[i, :len(c)] = torch.tensor(c), 1
    fresh, _, _ = _PLAIN_FORWARD(_NO_TRAINER, model, torch.cat([ids, completion_ids], 1),
                                 torch.cat([mask, completion_mask], 1), completion_ids.size(1))
    torch.testing.assert_close(captured * completion_mask, fresh.detach(), atol=1e-5, rtol=0)
    edited = [list(c) for c in completions]
    edited[1][0] = (edited[1][0] + 1) % len(tokenizer)
    assert capture.logps(edited, torch.device("cpu")) is None  # not what was sampled
    assert capture.logps([c + [5] * 10 for c in completions], torch.device("cpu")) is None  # longer than sampled


@pytest.mark.slow
def test_trl_old_logps_are_reused_not_recomputed(untrained_tiny_dir, tmp_path):
    # Two updates per generation batch: TRL computes old log-probs itself, and nothing else
    # may run a policy pass (RCC's δ and BICC's denominator take TRL's).
    trainer = _trainer(untrained_tiny_dir, tmp_path, **{"rcc.enabled": True, "train.num_iterations": 2})
    rows = [trainer.train_dataset[i] for i in range(2)]
    out = trainer._generate_and_score_completions([dict(rows[i // G]) for i in range(2 * G)])
    assert "bicc_rollout_rows" not in out
    fresh = _plain_logps(trainer, out["prompt_ids"], out["prompt_mask"], out)
    torch.testing.assert_close(out["bicc_rollout_logps"], fresh, atol=1e-5, rtol=0)
    assert trainer._token_totals["nograd_policy"] == float(out["prompt_mask"].sum() + out["completion_mask"].sum())


@pytest.mark.slow
def test_lagged_reference_is_one_copy_updated_in_place(untrained_tiny_dir, tmp_path):
    trainer = _trainer(untrained_tiny_dir, tmp_path, **{"bicc.enabled": False, "rcc.enabled": True,
                                                        "rcc.reference": "old"})
    rows = [trainer.train_dataset[i] for i in range(2)]
    batch = [dict(rows[0]) for _ in range(4)] + [dict(rows[1]) for _ in range(4)]
    trainer._generate_and_score_completions([dict(x) for x in batch])
    lagged = trainer._lagged_reference
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(0.01)
    trainer._generate_and_score_completions([dict(x) for x in batch])
    assert trainer._lagged_reference is lagged
    for a, b in zip(lagged.parameters(), trainer.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
        assert a.data_ptr() != b.data_ptr() and not a.requires_grad


@pytest.mark.slow
def test_reentrant_checkpointing_falls_back_with_one_warning(untrained_tiny_dir, tmp_path):
    from test_trl_trainer import mixed_batch

    trainer = _trainer(untrained_tiny_dir, tmp_path)
    # TRL re-enables checkpointing with these kwargs after each generation.
    trainer.args.gradient_checkpointing_kwargs = {"use_reentrant": True}
    trainer.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": True})
    out = mixed_batch(trainer)
    with pytest.warns(UserWarning, match="train.shared_prefix: gradient checkpointing is reentrant"):
        first = trainer._compute_loss(trainer.model, dict(out))
    with warnings.catch_warnings(record=True) as later:
        warnings.simplefilter("always")
        assert not trainer._shared_prefix_usable()
        second = trainer._compute_loss(trainer.model, dict(out))
    assert not [w for w in later if "shared_prefix" in str(w.message)]  # warned once, not per call
    assert torch.isfinite(first) and torch.equal(first, second)


@pytest.mark.slow
def test_training_logs_token_counts_per_step(untrained_tiny_dir, tmp_path):
    from test_trl_trainer import tiny_config

    from bicc_lab.backends.trl.run import train_run

    logged = {}
    for arm, overrides in {"base": {}, "bicc": {"bicc.enabled": True}, "plain": {"bicc.enabled": True, "train.shared_prefix": False},
                           "rcc": {"rcc.enabled": True}, "rcc-plain": {"rcc.enabled": True, "train.shared_prefix": False},
                           }.items():
        config = tiny_config(untrained_tiny_dir, **overrides)
        train_run(config, tmp_path / arm, progress=False)
        lines = [json.loads(x) for x in (tmp_path / arm / "metrics.jsonl").read_text().splitlines()]
        logged[arm] = lines[-1]
    assert logged["base"]["tokens/grad_per_step"] > 0 and "tokens/nograd_policy_per_step" not in logged["base"]
    # RCC: one reference pass over the plain batch; π_old came from the sampler, no policy pass.
    rcc, plain = logged["rcc"], logged["rcc-plain"]
    assert plain["tokens/nograd_reference_per_step"] == pytest.approx(plain["tokens/grad_per_step"])
    # ... and on the shared path the reference pass and the loss forward both run each
    # group's prompt once: the same count, below the per-sequence path's.
    assert rcc["tokens/nograd_reference_per_step"] == pytest.approx(rcc["tokens/grad_per_step"])
    assert 0 < rcc["tokens/grad_per_step"] < plain["tokens/grad_per_step"]
    # The process's peak memory is logged with the costs (here a CPU: its peak resident set).
    assert all(x["perf/peak_memory_mib"] > 0 for x in logged.values())
    assert "tokens/nograd_policy_per_step" not in logged["rcc"] and "tokens/nograd_policy_per_step" not in logged["bicc"]
    # The shared path runs each group's prompt once; the plain one once per completion.
    assert logged["bicc"]["tokens/grad_per_step"] < logged["plain"]["tokens/grad_per_step"]
    assert logged["bicc"]["tokens/conditioned_prefix_per_step"] < logged["plain"]["tokens/conditioned_prefix_per_step"]


@pytest.mark.slow
def test_rcc_with_beta_takes_trls_reference_logps(untrained_tiny_dir, tmp_path):
    # beta > 0: TRL computes reference log-probs itself; RCC's δ must use them, not run its own pass.
    trainer = _trainer(untrained_tiny_dir, tmp_path, **{"bicc.enabled": False, "rcc.enabled": True, "train.beta": 0.04})
    rows = [trainer.train_dataset[i] for i in range(2)]
    out = trainer._generate_and_score_completions([dict(rows[i // G]) for i in range(2 * G)])
    plain_tokens = float(out["prompt_mask"].sum() + out["completion_mask"].sum())
    assert trainer._token_totals["nograd_reference"] == plain_tokens  # TRL's one pass, counted once
    assert trainer._token_totals["nograd_policy"] == 0  # π_old from the sampler
    with torch.no_grad():
        reference, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.ref_model, torch.cat([out["prompt_ids"], out["completion_ids"]], 1),
            torch.cat([out["prompt_mask"], out["completion_mask"]], 1), out["completion_ids"].size(1))
    torch.testing.assert_close(out["ref_per_token_logps"], reference, atol=1e-5, rtol=0)
