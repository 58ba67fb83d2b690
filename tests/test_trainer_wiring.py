"""Wiring of the trainer: what reaches the loss is what the algorithms are given.

The pure functions (``bicc_lab.algorithms``) have their own hand-computed tests; these check
the seams between them and TRL on a trainer step of the tiny model, each against a value
computed outside the trainer: which π_old the BICC ratio divides by, which context the KL
reference is scored under, Dr.GRPO's normaliser, the division by the gradient-accumulation
steps, and where the BICC block sits in a chat prompt. Each was a mutation that no other
test caught (``benchmarks/mutation.md``).
"""

from __future__ import annotations

import types

import pytest
import torch

pytest.importorskip("trl")

from trl import GRPOTrainer  # noqa: E402

from bicc_lab.algorithms import bicc as bicc_alg  # noqa: E402
from bicc_lab.algorithms.variants import policy_loss  # noqa: E402
from bicc_lab.backends.trl.run import build_trainer  # noqa: E402

G = 4  # tiny_config's num_generations


def make_trainer(untrained_tiny_dir, tmp_path, **overrides):
    from test_trl_trainer import force_mixed_rewards, tiny_config

    trainer = build_trainer(tiny_config(untrained_tiny_dir, **overrides), tmp_path, progress=False)
    force_mixed_rewards(trainer)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train(); these tests call the loss
    return trainer


def logps_under(trainer, model, prompt_ids, prompt_mask, out):
    """Per-token log-probs of the batch's completions after ``prompt_ids``: TRL's plain forward."""
    with torch.no_grad():
        logps, _, _ = trainer._get_per_token_logps_and_entropies(
            model, torch.cat([prompt_ids, out["completion_ids"]], 1),
            torch.cat([prompt_mask, out["completion_mask"]], 1), out["completion_ids"].size(1))
    return logps


def perturb(model, scale=0.05, seed=0):
    """Move a policy away from its reference (the same step for every model built from one dir)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator))


# ----------------------------------------------------------------------- BICC's importance ratio

@pytest.mark.parametrize("ratio", ["paper", "conditioned"])
@pytest.mark.parametrize("sampler_logps", [True, False], ids=["sampler-logps", "own-rollout-pass"])
def test_bicc_ratio_divides_by_the_old_policy_its_setting_names(untrained_tiny_dir, tmp_path, ratio, sampler_logps):
    """paper: π_θ(o|q⊕ctx) / π_old(o|q); conditioned: π_θ(o|q⊕ctx) / π_old(o|q⊕ctx) (= 1 on-policy).

    The loss of one on-policy step equals ``policy_loss`` given those two log-probs, computed
    here by plain forwards. Without π_old(o|q) in the batch TRL falls back to the loss
    forward's own detached log-probs, i.e. the conditioned ratio: the paper case fails then.
    Both ways π_old(o|q) reaches the batch are covered: read off the sampler, or the
    trainer's own no-grad pass on the conditioned rows (TRL's generation, no sampler hook).
    """
    from test_trl_trainer import mixed_batch

    trainer = make_trainer(untrained_tiny_dir, tmp_path, **{"bicc.enabled": True, "bicc.ratio": ratio})
    if not sampler_logps:
        trainer._generate = types.MethodType(GRPOTrainer._generate, trainer)
    out = mixed_batch(trainer)
    assert ("bicc_rollout_rows" in out) != sampler_logps  # the path this case is about
    # A non-zero advantage on every row, so that the unconditioned rows (advantage 0 in a
    # uniform group) count too: their π_old is the loss forward's own under q.
    out["advantages"] = torch.linspace(-1.0, 1.0, out["advantages"].numel())
    conditioned = out["bicc_conditioned"].bool()
    mask = out["completion_mask"]
    plain = logps_under(trainer, trainer.model, out["prompt_ids"], out["prompt_mask"], out)
    with_context = logps_under(trainer, trainer.model, out["bicc_prompt_ids"], out["bicc_prompt_mask"], out)

    def expected_loss(old):
        loss, _ = policy_loss(trainer.variant, with_context, old, out["advantages"], mask,
                              max_completion_length=trainer.max_completion_length)
        return loss

    paper, on_policy = expected_loss(plain), expected_loss(with_context)
    # Not vacuous: the context moves the log-probs of the conditioned rows, and with them the loss.
    assert (((with_context - plain).abs() * mask).sum(1)[conditioned] > 1e-3).all()
    assert (paper - on_policy).abs() > 1e-3
    loss = trainer._compute_loss(trainer.model, dict(out))
    torch.testing.assert_close(loss.detach(), paper if ratio == "paper" else on_policy, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------- KL reference under BICC

def test_bicc_kl_reference_is_scored_under_the_conditioned_prompt(untrained_tiny_dir, tmp_path):
    """With beta > 0 the KL term compares π_θ(o|q⊕ctx) with π_ref(o|q⊕ctx), not π_ref(o|q).

    At step 0 the policy is the reference, so under one context the per-token KL is 0 on every
    row; scoring the reference under q leaves the context's own effect as a "KL" on every
    conditioned row (the tiny model's log-probs move by nats under a context).
    """
    from test_trl_trainer import mixed_batch

    trainer = make_trainer(untrained_tiny_dir, tmp_path, **{"bicc.enabled": True, "train.beta": 0.04})
    assert trainer.ref_model is not None
    out = mixed_batch(trainer)
    conditioned = out["bicc_conditioned"].bool()
    mask = out["completion_mask"].bool()
    reference_conditioned = logps_under(trainer, trainer.ref_model, out["bicc_prompt_ids"], out["bicc_prompt_mask"], out)
    reference_plain = logps_under(trainer, trainer.ref_model, out["prompt_ids"], out["prompt_mask"], out)
    assert (((reference_conditioned - reference_plain).abs() * mask).sum(1)[conditioned] > 1e-3).all()
    torch.testing.assert_close(out["ref_per_token_logps"] * mask, reference_conditioned * mask, atol=1e-5, rtol=0)

    trainer._compute_loss(trainer.model, dict(out))
    assert trainer._metrics["train"]["kl"][-1] == pytest.approx(0.0, abs=1e-6)


# ----------------------------------------------------------------------- Dr.GRPO's normaliser

def test_dr_grpo_divides_by_max_completion_length_not_the_batch_width(untrained_tiny_dir, tmp_path):
    """Dr.GRPO: loss = Σ token losses / (B · max_completion_length), the configured budget.

    The batch is cut to completions of at most 2 tokens (as if every one had ended early), so
    its width (2) is not the budget (4). On-policy every ratio is 1: the policy term is
    -Σ_i A_i |o_i| / (B · 4); with beta > 0 and a perturbed policy the KL term adds
    beta · Σ k3 / (B · 4), k3 = exp(ref - logp) - (ref - logp) - 1.
    """
    trainer = make_trainer(untrained_tiny_dir, tmp_path, variant="dr_grpo", **{"train.beta": 0.04})
    assert trainer.max_completion_length == 4
    perturb(trainer.model)
    rows = [trainer.train_dataset[i] for i in range(2)]
    torch.manual_seed(0)
    out = trainer._generate_and_score_completions([dict(rows[i // G]) for i in range(2 * G)])
    # Hand-chosen advantages with a non-zero sum: a group's own advantages sum to 0, so with
    # completions of equal length the policy term would be 0 whatever it is divided by.
    out["advantages"] = torch.linspace(-1.0, 2.0, 2 * G)
    width = 2
    out = {**out, "completion_ids": out["completion_ids"][:, :width], "completion_mask": out["completion_mask"][:, :width],
           "ref_per_token_logps": out["ref_per_token_logps"][:, :width]}
    mask = out["completion_mask"].float()
    assert mask.sum() > 0
    batch = mask.size(0)
    policy_term = -(out["advantages"] * mask.sum(1)).sum() / (batch * 4)
    policy = logps_under(trainer, trainer.model, out["prompt_ids"], out["prompt_mask"], out)
    log_ratio = out["ref_per_token_logps"] - policy
    k3 = torch.exp(log_ratio) - log_ratio - 1
    kl_term = (k3 * mask).sum() / (batch * 4)
    assert policy_term.abs() > 1e-3 and kl_term > 1e-4  # both terms live, so both normalisers count
    loss = trainer._compute_loss(trainer.model, dict(out))
    torch.testing.assert_close(loss.detach(), policy_term + 0.04 * kl_term, atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------- gradient accumulation

def accumulated_gradient(trainer, prompts, micro_steps):
    """The gradient that ``micro_steps`` calls of ``training_step`` (Trainer's own loop body:
    generation, the loss, its scaling, backward) leave on the parameters for one optimizer step."""
    trainer.model.zero_grad()
    trainer.current_gradient_accumulation_steps = micro_steps
    torch.manual_seed(0)  # the same completions in both trainers
    for _ in range(micro_steps):
        trainer.training_step(trainer.model, [dict(p) for p in prompts], None)
    return {name: p.grad.clone() for name, p in trainer.model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("variant", ["grpo", "dapo"])
def test_two_accumulated_micro_batches_give_the_one_batch_gradient(untrained_tiny_dir, tmp_path, variant):
    """One generation batch of 8, trained as one micro-batch of 8 or two of 4 (gradient
    accumulation 2): the optimizer sees the same gradient. TRL tells Trainer that the loss is
    already scaled for accumulation, so a loss not divided by the accumulation steps doubles it.
    beta > 0 on a perturbed policy, so the KL term's division counts too; ``dapo`` divides by
    the generation batch's token count instead (``token_mean``)."""
    common = {"variant": variant, "train.beta": 0.04}
    whole = make_trainer(untrained_tiny_dir, tmp_path / "whole", **common)
    split = make_trainer(untrained_tiny_dir, tmp_path / "split", **{
        **common, "train.per_device_train_batch_size": 4, "train.gradient_accumulation_steps": 2})
    assert split.args.steps_per_generation == 2  # one generation batch of 4 x 2 rows
    for trainer in (whole, split):
        perturb(trainer.model)
    prompts = [whole.train_dataset[i // G] for i in range(2 * G)]
    expected = accumulated_gradient(whole, prompts, micro_steps=1)
    got = accumulated_gradient(split, prompts, micro_steps=2)
    # Same completions, rewards and advantages on both sides, in whatever order the micro-batches took.
    one = whole._buffered_inputs[0]
    two = split._buffered_inputs
    assert sorted(map(tuple, one["completion_ids"].tolist())) == sorted(
        map(tuple, torch.cat([b["completion_ids"] for b in two]).tolist()))
    assert one["advantages"].abs().max() > 0.1
    assert expected.keys() == got.keys() and expected
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-6, rtol=1e-4, msg=name)


# ----------------------------------------------------------------------- BICC block in a chat prompt

def test_bicc_block_goes_inside_the_user_turn_of_a_chat_prompt(untrained_tiny_dir, tmp_path):
    """Chat prompt ``head + q + tail`` (tail: end of the user turn and the assistant header):
    the conditioned prompt is ``head + q + block + tail``, the block being the default
    template's header, every opposite-outcome completion of the group as "Attempt k: ...",
    and its footer. After the assistant header the block would read as the answer's start."""
    from itertools import permutations

    from test_trl_trainer import mixed_batch

    from bicc_lab.tasks.grading import completion_text

    trainer = make_trainer(untrained_tiny_dir, tmp_path, **{
        "data.chat": True, "bicc.enabled": True, "bicc.template": "default",
        "train.max_prompt_length": 256})  # a budget of 130 tokens: every opposite trace fits whole
    assert isinstance(trainer.train_dataset[0]["prompt"], list)
    # force_mixed_rewards' parity, on the text of chat completions (lists of messages).
    trainer.reward_funcs = [lambda completions, **kw: [
        float(sum(map(ord, completion_text(c))) % 2 == 0) for c in completions]]
    tokenizer = trainer.processing_class

    def ids(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    sentinel = "\u2063S\u2063"
    head, tail = tokenizer.apply_chat_template(
        [{"role": "user", "content": sentinel}], tokenize=False, add_generation_prompt=True).split(sentinel)
    out = mixed_batch(trainer)
    rewards = out["bicc_rewards"]
    strip = {tokenizer.eos_token_id, tokenizer.pad_token_id}
    traces = [[t for t in row[m.bool()].tolist() if t not in strip]
              for row, m in zip(out["completion_ids"], out["completion_mask"], strict=True)]
    conditioned = out["bicc_conditioned"].bool()
    assert conditioned.any()
    for i in conditioned.nonzero().flatten().tolist():
        prompt = out["prompt_ids"][i][out["prompt_mask"][i].bool()].tolist()
        question = trainer.train_dataset[i // G]["prompt"][-1]["content"]
        assert prompt == ids(head + question + tail)  # the plain chat prompt, for reference
        correct = bool(rewards[i] > 0.5)
        group = range(G * (i // G), G * (i // G + 1))
        opposite = [traces[j] for j in group if bool(rewards[j] > 0.5) != correct]
        header = ids(bicc_alg.DEFAULT_TEMPLATE.header.format(shown="incorrect" if correct else "correct"))
        footer = ids(bicc_alg.DEFAULT_TEMPLATE.footer)

        def block(order, header=header, footer=footer):
            body = []
            for k, trace in enumerate(order, start=1):
                body += ids(bicc_alg.DEFAULT_TEMPLATE.trace_prefix.format(index=k)) + trace
                body += ids(bicc_alg.DEFAULT_TEMPLATE.trace_suffix)
            return header + body + footer

        got = out["bicc_prompt_ids"][i][out["bicc_prompt_mask"][i].bool()].tolist()
        # The packer shows the traces in a seeded random order: any order of them is right.
        expected = [ids(head + question) + block(order) + ids(tail) for order in permutations(opposite)]
        assert got in expected, tokenizer.decode(got)

    # A chat prompt that does not end with that tail (another rendering) takes the block at
    # its end: rows whose last token is one below and one above the tail's.
    prompt = out["prompt_ids"][0][out["prompt_mask"][0].bool()]
    rows = torch.stack([prompt, torch.cat([prompt[:-1], prompt[-1:] - 1]), torch.cat([prompt[:-1], prompt[-1:] + 1])])
    width = rows.size(1)
    assert trainer._insert_positions(rows, torch.ones_like(rows), chat=True) == [width - len(ids(tail)), width, width]


# ----------------------------------------------------------------------- two optimizer steps per generation

def test_a_generation_batch_over_two_optimizer_steps_halves_dapos_token_count(untrained_tiny_dir, tmp_path):
    """DAPO (token_mean) with steps_per_generation = 2 and no accumulation: the generation
    batch's N active tokens are shared by two optimizer steps, so each step's loss is
    Σ token losses / (N · accumulation / steps_per_generation) = Σ / (N / 2), as TRL 1.16.
    On-policy every ratio is 1: the loss of the first micro-batch is -Σ_i A_i |o_i| / (N / 2)."""
    from trl.trainer.utils import split_tensor_dict

    trainer = make_trainer(untrained_tiny_dir, tmp_path, variant="dapo", **{
        "train.per_device_train_batch_size": 4, "train.steps_per_generation": 2})
    assert (trainer.args.gradient_accumulation_steps, trainer.args.steps_per_generation) == (1, 2)
    rows = [trainer.train_dataset[i] for i in range(2)]
    torch.manual_seed(0)
    out = trainer._generate_and_score_completions([dict(rows[i // G]) for i in range(2 * G)])
    out["advantages"] = torch.linspace(-1.0, 2.0, 2 * G)  # non-zero sum (see the Dr.GRPO test)
    out["completion_mask"] = torch.ones_like(out["completion_mask"])  # every row counts (no dynamic sampling)
    out["num_items_in_batch"] = out["completion_mask"].sum()
    first = split_tensor_dict(out, 2)[0]
    tokens = float(out["num_items_in_batch"])
    expected = -(first["advantages"] * first["completion_mask"].sum(1)).sum() / (tokens / 2)
    loss = trainer._compute_loss(trainer.model, dict(first))
    torch.testing.assert_close(loss.detach(), expected, atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------- RCC's δ

def initial_weights_logps(model_dir, out, temperature):
    """log π_ref(o|q) from a fresh load of the initial weights: plain logits / temperature."""
    from transformers import AutoModelForCausalLM

    fresh = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = torch.cat([out["prompt_ids"], out["completion_ids"]], 1)
    mask = torch.cat([out["prompt_mask"], out["completion_mask"]], 1)
    with torch.no_grad():
        logits = fresh(input_ids=ids, attention_mask=mask).logits[:, out["prompt_ids"].size(1) - 1 : -1]
    logps = torch.log_softmax(logits.float() / temperature, -1)
    return logps.gather(-1, out["completion_ids"].unsqueeze(-1)).squeeze(-1) * out["completion_mask"]


@pytest.mark.parametrize("sampler_logps", [True, False], ids=["sampler-logps", "own-rollout-pass"])
def test_rcc_delta_is_the_policy_against_the_initial_weights(untrained_tiny_dir, tmp_path, sampler_logps):
    """δ = log π_θ(o|q) - log π_ref(o|q) with π_ref the initial weights, loaded afresh here,
    and the advantages are RCC's on that δ. The reference is a deep copy of the policy; TRL's
    fused LM head once left the copy's plain forward running the policy, so the shared-prefix
    pass scored the prompt with the policy and the completion with the reference. Without
    sampler log-probs (TRL's generation: continuous batching, tools) RCC runs π_old(o|q) itself."""
    from bicc_lab.algorithms.rcc import rcc_advantages, sequence_delta

    trainer = make_trainer(untrained_tiny_dir, tmp_path, **{"rcc.enabled": True, "rcc.coef": 3.0})
    if not sampler_logps:
        trainer._generate = types.MethodType(GRPOTrainer._generate, trainer)
    perturb(trainer.model)
    rows = [trainer.train_dataset[i] for i in range(2)]
    torch.manual_seed(0)
    out = trainer._generate_and_score_completions([dict(rows[i // G]) for i in range(2 * G)])
    assert (trainer._token_totals["nograd_policy"] > 0) != sampler_logps  # who computed π_old(o|q)
    policy = logps_under(trainer, trainer.model, out["prompt_ids"], out["prompt_mask"], out)
    reference = initial_weights_logps(untrained_tiny_dir, out, trainer.temperature)
    delta = sequence_delta(policy, reference, out["completion_mask"], reduction="sum")
    assert delta.abs().max() > 1e-3
    expected = rcc_advantages(out["bicc_rewards"], delta, G, coef=3.0, scale="group_std", std="unbiased")
    torch.testing.assert_close(out["advantages"], expected.advantages, atol=1e-5, rtol=1e-5)
