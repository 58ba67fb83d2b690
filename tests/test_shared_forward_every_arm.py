"""Every arm on the shared-prefix path (``train.shared_prefix``): the same loss, per-token
log-probs and parameter gradients as the per-sequence path, for every variant with and
without BICC, with groups split across micro-batches, left-padded prompts, the chat
template and gradient checkpointing on and off; the same rollouts for the same seed
whichever path a run takes; and gradient tokens per step at the limit (each distinct
prompt once, each completion once), counted by hand."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_float32_sums_close

pytest.importorskip("trl")

from bicc_lab.algorithms.registry import VARIANTS  # noqa: E402

G = 4


def _parity(completions, **kwargs) -> list[float]:
    """Mixes the untrained model's groups: 1 when the completion's character codes sum to an
    even number (plain text, or a chat completion's message contents)."""
    texts = [c if isinstance(c, str) else "".join(m["content"] for m in c) for c in completions]
    return [float(sum(map(ord, t)) % 2 == 0) for t in texts]


def _trainer(untrained_tiny_dir, tmp_path, **overrides):
    from test_trl_trainer import tiny_config

    from bicc_lab.backends.trl.run import build_trainer

    config = tiny_config(untrained_tiny_dir, **{"train.dynamic_sampling_max_rounds": 2, **overrides})
    trainer = build_trainer(config, tmp_path, progress=False)
    trainer.reward_funcs, trainer.reward_func_names = [_parity], ["parity"]
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 2
    return trainer


def _left_padded_batch(trainer):
    """Two groups whose prompts differ in length (so one is left-padded), one mixed (BICC
    conditions it) and one uniform (BICC leaves it on q)."""
    first = dict(trainer.train_dataset[0])
    short = dict(first, solution="15")  # the parity reward of force_mixed_rewards ignores it
    if isinstance(first["prompt"], str):
        short["prompt"] = "7+8="
    else:
        short["prompt"] = [{**first["prompt"][0], "content": "7+8="}]
    rows = [first, short]
    batch = [dict(rows[0]) for _ in range(G)] + [dict(rows[1]) for _ in range(G)]
    for attempt in range(50):
        torch.manual_seed(attempt)
        out = trainer._generate_and_score_completions([dict(x) for x in batch])
        rewards = out["bicc_rewards"].view(-1, G) > 0.5
        mixed = rewards.any(1) & ~rewards.all(1)
        if mixed.any() and not mixed.all():
            assert (out["prompt_mask"] == 0).any()  # left padding
            return out
    pytest.fail("no batch with a mixed and a uniform group in 50 tries")


def _micro_batch(out, rows: slice):
    """Rows of a generation batch, as TRL's split gives a micro-batch (scalars kept)."""
    n = out["completion_ids"].size(0)
    return {k: v[rows] if isinstance(v, torch.Tensor) and v.dim() > 0 and v.size(0) == n else v
            for k, v in out.items()}


def _step(trainer, micro_batches):
    """Losses of the micro-batches and the gradient they accumulate, as one optimizer step."""
    trainer.model.zero_grad()
    losses = []
    for inputs in micro_batches:
        loss = trainer._compute_loss(trainer.model, dict(inputs))
        loss.backward()
        losses.append(loss.detach())
    return torch.stack(losses), {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}


def _set_path(trainer, shared: bool, checkpointing: bool):
    model = trainer.model
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()
    model.train()
    trainer.shared_prefix = shared
    trainer._shared_prefix_checked = False  # checked again under this checkpointing setting
    assert trainer._shared_prefix_usable() is shared


ARMS = [(variant, bicc) for variant in VARIANTS for bicc in (False, True)]


@pytest.mark.slow
@pytest.mark.parametrize("variant,bicc", ARMS, ids=[f"{v}-{'bicc' if b else 'plain'}" for v, b in ARMS])
def test_shared_and_per_sequence_paths_give_the_same_step(untrained_tiny_dir, tmp_path, variant, bicc):
    chat = list(VARIANTS).index(variant) % 2 == 0  # half the variants on the chat template
    trainer = _trainer(untrained_tiny_dir, tmp_path, **{
        "variant": variant, "bicc.enabled": bicc, "data.chat": chat, "rcc.enabled": variant == "grpo"})
    out = _left_padded_batch(trainer)
    if bicc:
        assert out["bicc_conditioned"].any() and not out["bicc_conditioned"].all()
    # 3 + 5 rows: both groups of 4 are split between the two micro-batches.
    micro_batches = [_micro_batch(out, slice(0, 3)), _micro_batch(out, slice(3, 2 * G))]
    prompt_ids = out.get("bicc_prompt_ids", out["prompt_ids"])
    positions = prompt_ids.numel() + out["completion_ids"].numel()
    for checkpointing in (False, True):
        _set_path(trainer, shared=False, checkpointing=checkpointing)
        plain_losses, plain_grads = _step(trainer, micro_batches)
        plain_logps = trainer._logps(trainer.model, out["prompt_ids"], out["prompt_mask"],
                                     out["completion_ids"], out["completion_mask"])
        _set_path(trainer, shared=True, checkpointing=checkpointing)
        shared_losses, shared_grads = _step(trainer, micro_batches)
        shared_logps = trainer._logps(trainer.model, out["prompt_ids"], out["prompt_mask"],
                                      out["completion_ids"], out["completion_mask"])
        torch.testing.assert_close(shared_logps, plain_logps, atol=1e-5, rtol=0)
        torch.testing.assert_close(shared_losses, plain_losses, atol=1e-5, rtol=1e-5)
        assert shared_grads.keys() == plain_grads.keys() and plain_grads
        for name, grad in plain_grads.items():
            assert_float32_sums_close(shared_grads[name], grad, positions, f"{name} (checkpointing={checkpointing})")
        assert any(g.abs().sum() > 0 for g in plain_grads.values())


def _distinct_tokens(prompt_ids, prompt_mask, completion_mask) -> int:
    """By hand: each distinct prompt's real tokens once, each completion's real tokens once."""
    prompts = {tuple(row[m.bool()].tolist()) for row, m in zip(prompt_ids, prompt_mask, strict=True)}
    return sum(len(p) for p in prompts) + int(completion_mask.sum())


@pytest.mark.slow
@pytest.mark.parametrize("bicc", [False, True])
def test_gradient_tokens_are_the_distinct_tokens_of_the_groups(untrained_tiny_dir, tmp_path, bicc):
    trainer = _trainer(untrained_tiny_dir, tmp_path, **{"bicc.enabled": bicc, "data.chat": True})
    out = _left_padded_batch(trainer)
    prompt_ids = out.get("bicc_prompt_ids", out["prompt_ids"])
    prompt_mask = out.get("bicc_prompt_mask", out["prompt_mask"])
    expected = 0
    trainer._token_totals.clear()
    for rows in (slice(0, G), slice(G, 2 * G)):  # micro-batches of whole groups
        trainer._compute_loss(trainer.model, _micro_batch(out, rows))
        expected += _distinct_tokens(prompt_ids[rows], prompt_mask[rows], out["completion_mask"][rows])
    assert trainer._token_totals["grad"] == expected
    # The per-sequence path runs every prompt once per completion.
    trainer.shared_prefix = False
    trainer._token_totals.clear()
    trainer._compute_loss(trainer.model, dict(out))
    assert trainer._token_totals["grad"] == int(prompt_mask.sum() + out["completion_mask"].sum()) > expected


@pytest.mark.slow
def test_same_seed_same_rollouts_whichever_path(untrained_tiny_dir, tmp_path):
    """Three optimizer steps of two micro-batches each, shared and per-sequence: the same
    completions at every step (the group shuffle draws what TRL's sample shuffle draws)."""
    from test_trl_trainer import tiny_config

    from bicc_lab.backends.trl import rollout_record
    from bicc_lab.backends.trl.run import train_run

    completions = {}
    for shared in (True, False):
        config = tiny_config(untrained_tiny_dir, **{
            "train.max_steps": 3, "train.gradient_accumulation_steps": 2, "train.per_device_train_batch_size": 4,
            "train.shared_prefix": shared, "bicc.enabled": True})
        dump = tmp_path / f"dump-{shared}"
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv(rollout_record.DUMP_ENV, str(dump))
            train_run(config, tmp_path / f"run-{shared}", progress=False)
        records = sorted(dump.rglob("*"))
        completions[shared] = [torch.load(f, weights_only=False)["completions"] for f in records if f.is_file()]
    assert len(completions[True]) == 3
    assert completions[True] == completions[False]
