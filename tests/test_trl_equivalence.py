"""With BICC and RCC off, our trainer is stock TRL: same advantages, loss and gradients.

For each variant TRL also has (grpo, dr_grpo, dapo, and gspo as sequence-level
importance sampling) both trainers generate the same batch from the same seed, then
loss and gradients are compared on it, once on-policy and once with perturbed old
log-probs so that clipping is active.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("trl")

from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from bicc_lab.algorithms.variants import get_variant  # noqa: E402
from bicc_lab.backends.trl.trainer import BiccGRPOTrainer  # noqa: E402
from bicc_lab.spec.sections import BiccConfig, RccConfig  # noqa: E402

# The variants that TRL implements too: each must equal stock TRL run with the loss_type and
# importance-sampling level its spec declares (gmpo and aspo have no TRL counterpart).
TRL_EQUIVALENT = ("dapo", "dr_grpo", "grpo", "gspo")


def parity_reward(completions, **kwargs):
    # Deterministic and mixed within groups: reward the completions of even length.
    return [float(len(c) % 2 == 0) for c in completions]


def make_trainer(cls, model_dir, tmp_path, variant_name, **extra):
    from datasets import Dataset

    # TRL's loss_type "dapo" is DAPO's loss (clip-higher, token mean); DAPO's reward shaping
    # and dynamic sampling are extras of our arm, compared separately below.
    spec = get_variant(variant_name, overlong_buffer_fraction=None, dynamic_sampling=False)
    scale = "group" if spec.advantage_scale == "group_std" else "none"
    args = GRPOConfig(
        output_dir=str(tmp_path / cls.__name__),
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=6,
        learning_rate=1e-3,
        loss_type=spec.trl_loss_type,
        importance_sampling_level=spec.trl_importance_sampling_level,
        scale_rewards=scale,
        epsilon=spec.epsilon_low,
        epsilon_high=spec.epsilon_high,
        use_cpu=True,
        bf16=False,
        report_to="none",
        gradient_checkpointing=False,
        max_steps=1,
        seed=0,
    )
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dataset = Dataset.from_dict({"prompt": ["12+34=", "56+7="]})
    kwargs = dict(model=model, reward_funcs=parity_reward, args=args, train_dataset=dataset, processing_class=tokenizer)
    if cls is BiccGRPOTrainer:
        kwargs.update(variant=spec, bicc=BiccConfig(), rcc=RccConfig(), **extra)
    trainer = cls(**kwargs)
    trainer.model.train()
    # Set by Trainer.train(); these tests call the loss directly.
    trainer.current_gradient_accumulation_steps = args.gradient_accumulation_steps
    return trainer


def loss_and_grads(trainer, inputs):
    trainer.model.zero_grad()
    loss = trainer._compute_loss(trainer.model, inputs)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


@pytest.mark.slow
@pytest.mark.parametrize("variant_name", TRL_EQUIVALENT)
def test_off_arms_match_stock_trl(untrained_tiny_dir, tmp_path, variant_name):
    stock = make_trainer(GRPOTrainer, untrained_tiny_dir, tmp_path, variant_name)
    ours = make_trainer(BiccGRPOTrainer, untrained_tiny_dir, tmp_path, variant_name)
    batch = [{"prompt": "12+34="}] * 4 + [{"prompt": "56+7="}] * 4

    torch.manual_seed(1234)
    stock_out = stock._generate_and_score_completions([dict(x) for x in batch])
    torch.manual_seed(1234)
    ours_out = ours._generate_and_score_completions([dict(x) for x in batch])
    assert torch.equal(stock_out["completion_ids"], ours_out["completion_ids"])
    rewards = torch.tensor(parity_reward(stock.processing_class.batch_decode(
        stock_out["completion_ids"], skip_special_tokens=True)))
    assert 0 < rewards.sum() < 8, "the fixed batch should hold at least one mixed group"
    torch.testing.assert_close(ours_out["advantages"], stock_out["advantages"], atol=1e-6, rtol=0)

    stock_loss, stock_grads = loss_and_grads(stock, stock_out)
    ours_loss, ours_grads = loss_and_grads(ours, ours_out)
    torch.testing.assert_close(ours_loss, stock_loss, atol=1e-6, rtol=0)
    assert stock_grads.keys() == ours_grads.keys() and stock_grads
    for name in stock_grads:
        torch.testing.assert_close(ours_grads[name], stock_grads[name], atol=1e-6, rtol=1e-5, msg=name)

    # Off-policy: the same perturbed old log-probs in both, so the ratios leave the trust region.
    with torch.no_grad():
        logps, _, _ = stock._get_per_token_logps_and_entropies(
            stock.model,
            torch.cat([stock_out["prompt_ids"], stock_out["completion_ids"]], 1),
            torch.cat([stock_out["prompt_mask"], stock_out["completion_mask"]], 1),
            stock_out["completion_ids"].size(1),
        )
    generator = torch.Generator().manual_seed(0)
    old = logps + 0.4 * torch.randn(logps.shape, generator=generator)
    stock_loss, stock_grads = loss_and_grads(stock, {**stock_out, "old_per_token_logps": old})
    ours_loss, ours_grads = loss_and_grads(ours, {**ours_out, "old_per_token_logps": old})
    torch.testing.assert_close(ours_loss, stock_loss, atol=1e-6, rtol=0)
    for name in stock_grads:
        torch.testing.assert_close(ours_grads[name], stock_grads[name], atol=1e-6, rtol=1e-5, msg=name)
