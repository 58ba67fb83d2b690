"""The BICC/RCC trainer on a tiny model: every arm trains, BICC and RCC do what they claim."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("trl")

from bicc_lab.algorithms.rcc import rcc_advantages, sequence_delta  # noqa: E402
from bicc_lab.algorithms.registry import VARIANTS  # noqa: E402
from bicc_lab.backends.trl.run import build_trainer, train_run  # noqa: E402
from bicc_lab.spec import validate_experiment  # noqa: E402


def tiny_config(model_dir: Path, **overrides):
    raw = {
        "name": "t",
        "model": {"name": str(model_dir)},
        "data": {"train": "synthetic_arithmetic", "num_train": 64},
        "train": {
            "max_steps": 2,
            "learning_rate": 1e-3,
            "num_generations": 4,
            "per_device_train_batch_size": 8,
            "max_completion_length": 4,
            "max_prompt_length": 8,
            "logging_steps": 1,
            "save_steps": 100,
        },
        "bicc": {"template": "separator", "context_fraction": 0.5},
        "eval": {"enabled": False},
    }
    return config_with(raw, overrides)


def config_with(raw: dict, overrides: dict):
    """``raw`` with dotted-key ``overrides`` set, validated as an experiment."""
    for dotted, value in overrides.items():
        node = raw
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return validate_experiment(raw)


def mixed_batch(trainer, seed=0, uniform_group=True):
    """Generate until a batch has at least one mixed group and, with ``uniform_group``, one
    degenerate group too (tiny untrained model). Without it, a parity reward mixes a batch
    at the first try almost always (a group of 4 is uniform with p = 1/8): the real model's
    tests, where each generation costs seconds, ask only for a mixed group."""
    rows = [trainer.train_dataset[i] for i in range(2)]
    batch = [dict(rows[0]) for _ in range(4)] + [dict(rows[1]) for _ in range(4)]
    for attempt in range(50):
        torch.manual_seed(seed + attempt)
        out = trainer._generate_and_score_completions([dict(x) for x in batch])
        rewards = out["bicc_rewards"].view(-1, 4) > 0.5
        mixed = rewards.any(1) & ~rewards.all(1)
        if mixed.any() and (not uniform_group or not mixed.all()):
            return out
    pytest.fail(f"no batch with a mixed{' and a uniform' if uniform_group else ''} group in 50 tries")


def force_mixed_rewards(trainer):
    """The untrained model rarely answers right: reward completions whose character codes sum to an even number."""
    trainer.reward_funcs = [lambda completions, **kw: [float(sum(map(ord, c)) % 2 == 0) for c in completions]]
    trainer.reward_func_names = ["parity"]


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_arm_trains_two_steps(untrained_tiny_dir, tmp_path, variant):
    for bicc in (False, True):
        for rcc in (False, True):
            # The untrained model rarely mixes a group, so DAPO's refill would run to its bound
            # every step: 2 rounds keep the test short and still exercise the refill.
            rounds = {"train.dynamic_sampling_max_rounds": 2} if variant == "dapo" else {}
            config = tiny_config(untrained_tiny_dir, variant=variant,
                                 **{"bicc.enabled": bicc, "rcc.enabled": rcc, **rounds})
            out = tmp_path / f"{bicc}-{rcc}"
            result = train_run(config, out, progress=False)
            assert result.steps == 2
            lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
            assert [x["step"] for x in lines] == [1, 2]
            assert all(torch.isfinite(torch.tensor(x["loss"])) for x in lines)
            if bicc:
                assert "bicc/frac_conditioned_groups" in lines[0]
            if rcc:
                assert "rcc/cov_r_delta" in lines[0] and "rcc/baseline_shift" in lines[0]
            if variant == "dapo":  # refill stops early only with a full batch, else at the bound (2)
                assert all(1 <= x["dapo/gen_rounds"] <= 2 for x in lines)
                assert all(x["dapo/gen_rounds"] == 2 for x in lines if x["dapo/frac_batch_filled"] < 1)
            assert all(x["tokens/generation_per_step"] > 0 for x in lines)
            assert (out / "final" / "config.json").is_file()
            assert json.loads((out / "train_result.json").read_text())["steps"] == 2


@pytest.mark.slow
def test_bicc_changes_logps_of_mixed_groups_only_and_grads_flow_through_context(untrained_tiny_dir, tmp_path):
    # The unshared forward, whose embedding columns line up with [prompt ⊕ completion]; the
    # shared-prefix path gives the same gradients (tests/test_shared_prefix.py).
    config = tiny_config(untrained_tiny_dir, **{"bicc.enabled": True, "train.shared_prefix": False})
    trainer = build_trainer(config, tmp_path, progress=False)
    force_mixed_rewards(trainer)
    trainer.model.train()
    out = mixed_batch(trainer)
    conditioned = out["bicc_conditioned"]
    groups = out["bicc_rewards"].view(-1, 4) > 0.5
    mixed = (groups.any(1) & ~groups.all(1)).repeat_interleave(4)
    assert torch.equal(conditioned, mixed)  # every sample of a mixed group gets context, no other

    def logps(prompt_ids, prompt_mask):
        with torch.no_grad():
            return trainer._logps(trainer.model, prompt_ids, prompt_mask, out["completion_ids"], out["completion_mask"])

    original = logps(out["prompt_ids"], out["prompt_mask"])
    with_context = logps(out["bicc_prompt_ids"], out["bicc_prompt_mask"])
    mask = out["completion_mask"].bool()
    per_sample_change = ((with_context - original).abs() * mask).sum(1)
    assert (per_sample_change[conditioned] > 1e-4).all()
    torch.testing.assert_close(with_context[~conditioned], original[~conditioned], atol=1e-5, rtol=0)

    # Gradients reach the hidden states of the context tokens (not only the completion's).
    captured = {}

    def keep(module, args, output):
        output.retain_grad()
        captured["embeddings"] = output

    handle = trainer.model.get_input_embeddings().register_forward_hook(keep)
    trainer.current_gradient_accumulation_steps = 1
    loss = trainer._compute_loss(trainer.model, out)
    loss.backward()
    handle.remove()
    grad = captured["embeddings"].grad.abs().sum(-1)  # (B, P' + T)
    prompt_width = out["bicc_prompt_ids"].size(1)
    row = int(conditioned.nonzero()[0])
    context_columns = prompt_width - int(out["bicc_prompt_mask"][row].sum()) + int(out["prompt_mask"][row].sum())
    # The separator template appends the context after the prompt: those columns sit just before the completion.
    context_grad = grad[row, prompt_width - (prompt_width - context_columns) : prompt_width]
    assert context_grad.numel() > 0 and (context_grad > 0).any()


@pytest.mark.slow
def test_rcc_advantages_equal_the_algorithm_on_the_batch(untrained_tiny_dir, tmp_path):
    config = tiny_config(untrained_tiny_dir, **{"rcc.enabled": True, "rcc.coef": 3.0})
    trainer = build_trainer(config, tmp_path, progress=False)
    force_mixed_rewards(trainer)
    assert trainer.ref_model is not None  # loaded for RCC although beta = 0
    with torch.no_grad():  # move the policy away from the reference so that δ is not 0
        for p in trainer.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    trainer.model.train()
    out = mixed_batch(trainer)
    rewards = out["bicc_rewards"]
    policy = trainer._logps(trainer.model, out["prompt_ids"], out["prompt_mask"], out["completion_ids"], out["completion_mask"])
    reference = trainer._logps(trainer.ref_model, out["prompt_ids"], out["prompt_mask"], out["completion_ids"], out["completion_mask"])
    delta = sequence_delta(policy, reference, out["completion_mask"], reduction="sum")
    assert delta.abs().max() > 1e-3
    expected = rcc_advantages(rewards, delta, 4, coef=3.0, scale="group_std", std="unbiased")
    torch.testing.assert_close(out["advantages"], expected.advantages, atol=1e-5, rtol=1e-5)
    assert expected.baseline_shift.abs().max() > 0


KILL_SCRIPT = """
import os, signal, sys
from transformers import TrainerCallback
from bicc_lab.spec import load_experiment
from bicc_lab.backends.trl import run

class KillAt(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 3:
            os.kill(os.getpid(), signal.SIGKILL)

config = load_experiment(sys.argv[1])
run.train_run(config, sys.argv[2], progress=False, callbacks=[KillAt()])
"""


@pytest.mark.slow
def test_resume_after_kill_continues_from_checkpoint(untrained_tiny_dir, tmp_path):
    import yaml

    config = tiny_config(untrained_tiny_dir, **{"train.max_steps": 4, "train.save_steps": 2, "bicc.enabled": True})
    config_file = tmp_path / "c.yaml"
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    killed_dir = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(config_file), str(killed_dir)], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert (killed_dir / "checkpoint-2").is_dir() and not (killed_dir / "train_result.json").exists()

    resumed = train_run(config, killed_dir, progress=False)
    assert resumed.resumed_from.endswith("checkpoint-2") and resumed.steps == 4
    steps = [json.loads(x)["step"] for x in (killed_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # step 3 of the killed run is not counted twice

    straight = train_run(config, tmp_path / "straight", progress=False)
    from safetensors.torch import load_file

    a = load_file(str(killed_dir / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "straight" / "final" / "model.safetensors"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=1e-5, msg=name)
    assert straight.resumed_from is None



@pytest.mark.slow
def test_dapo_dynamic_sampling_and_overlong_shaping(untrained_tiny_dir, tmp_path):
    from bicc_lab.algorithms.variants import get_variant, group_advantages, overlong_penalty

    config = tiny_config(untrained_tiny_dir, variant="dapo", **{"train.dynamic_sampling_max_rounds": 1})
    trainer = build_trainer(config, tmp_path, progress=False)
    force_mixed_rewards(trainer)
    trainer.model.train()
    out = mixed_batch(trainer)  # one round (no refill): the uniform groups stay, masked
    rewards = out["bicc_rewards"]
    grouped = rewards.view(-1, 4)
    informative = (grouped.max(1).values > grouped.min(1).values).repeat_interleave(4)
    assert (~informative).any() and informative.any()
    # Uniform groups leave the loss and its token count.
    assert (out["completion_mask"][~informative] == 0).all()
    assert int(out["num_items_in_batch"]) == int(out["completion_mask"].sum())
    # Advantages see the task reward plus DAPO's soft overlong punishment.
    buffer = get_variant("dapo").overlong_buffer_tokens(4)
    lengths = (out["completion_ids"] != trainer.processing_class.pad_token_id).sum(1)
    shaped = rewards + overlong_penalty(lengths, 4, buffer)
    expected = group_advantages(shaped, 4, scale="group_std", std="unbiased")
    torch.testing.assert_close(out["advantages"], expected, atol=1e-6, rtol=0)


class ScriptedReward:
    """A reward function whose n-th call (one per generation round) returns the n-th row of
    ``script`` (the last row after that), recording the prompts and completions it scored."""

    def __init__(self, script, name="grader"):
        self.script = script
        self.calls = []
        self.__name__ = name

    def __call__(self, prompts, completions, completion_ids, **kw):
        self.calls.append({"prompts": list(prompts), "completion_ids": [list(c) for c in completion_ids]})
        return [float(x) for x in self.script[min(len(self.calls), len(self.script)) - 1]]


def use_rewards(trainer, *functions):
    trainer.reward_funcs = list(functions)
    trainer.reward_func_names = [f.__name__ for f in functions]
    trainer.reward_processing_classes = [None] * len(functions)
    trainer.reward_weights = torch.ones(len(functions))


def two_prompt_batch(trainer):
    return [dict(trainer.train_dataset[0]) for _ in range(4)] + [dict(trainer.train_dataset[1]) for _ in range(4)]


def unpadded(ids, mask):
    from bicc_lab.backends.trl.rollout_record import rows

    return rows(ids, mask)


@pytest.mark.slow
def test_dynamic_sampling_refills_uniform_groups_with_fresh_prompts_and_counts_the_extra_generation(
    untrained_tiny_dir, tmp_path
):
    from bicc_lab.algorithms.variants import get_variant, group_advantages, overlong_penalty
    from bicc_lab.backends.trl.trainer import refill_prompt_indices

    config = tiny_config(untrained_tiny_dir, variant="dapo")
    trainer = build_trainer(config, tmp_path, progress=False)
    # Round 1: group 0 mixed, group 1 all wrong. Round 2 (fresh prompts): group 0 all right, group 1 mixed.
    grader = ScriptedReward([[1, 0, 0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 0, 1, 0, 0]])
    use_rewards(trainer, grader)
    trainer.model.train()
    torch.manual_seed(0)
    out = trainer._generate_and_score_completions(two_prompt_batch(trainer))

    assert len(grader.calls) == 2  # full after the second round: no third
    first, second = grader.calls
    # The batch: round 1's group 0, then round 2's group 1, each with its own prompt and completions.
    assert unpadded(out["completion_ids"], out["completion_mask"]) == first["completion_ids"][:4] + second["completion_ids"][4:]
    drawn = refill_prompt_indices(len(trainer.train_dataset), 2, seed=config.seed, step=0, round_number=1)
    assert second["prompts"][4] == trainer.train_dataset[drawn[1]]["prompt"]
    assert first["prompts"][0] == trainer.train_dataset[0]["prompt"]
    prompt_ids = trainer._tokenize_prompts(first["prompts"][:4] + second["prompts"][4:])[0]
    assert unpadded(out["prompt_ids"], out["prompt_mask"]) == [list(p) for p in prompt_ids]
    assert out["bicc_rewards"].tolist() == [1, 0, 0, 0, 0, 1, 0, 0]
    # Every row is trained on, and the loss normaliser counts them all.
    assert (out["completion_mask"].sum(1) > 0).all()
    assert int(out["num_items_in_batch"]) == int(out["completion_mask"].sum())
    # Advantages are those of the selected rollouts (task reward + DAPO's overlong shaping).
    lengths = out["completion_mask"].sum(1)
    shaped = out["bicc_rewards"] + overlong_penalty(lengths, 4, get_variant("dapo").overlong_buffer_tokens(4))
    torch.testing.assert_close(out["advantages"], group_advantages(shaped, 4, scale="group_std"), atol=1e-6, rtol=0)

    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items() if k.startswith("dapo/")}
    assert metrics["dapo/gen_rounds"] == 2
    assert metrics["dapo/frac_groups_kept"] == 0.5  # 2 mixed of 4 generated
    assert metrics["dapo/frac_batch_filled"] == 1.0
    assert metrics["dapo/generated_per_trained"] == 2.0
    # The cost counts both rounds: every sampled prompt and completion token.
    all_prompts = trainer._tokenize_prompts(first["prompts"] + second["prompts"])[0]
    sampled = sum(map(len, all_prompts)) + sum(len(c) for call in grader.calls for c in call["completion_ids"])
    assert trainer._token_totals["generation"] == sampled


@pytest.mark.slow
def test_dynamic_sampling_stops_at_the_round_bound_and_trains_on_what_it_kept(untrained_tiny_dir, tmp_path):
    config = tiny_config(untrained_tiny_dir, variant="dapo", **{"train.dynamic_sampling_max_rounds": 3})
    trainer = build_trainer(config, tmp_path, progress=False)
    # Only round 1 has a mixed group (group 1); rounds 2 and 3 are all wrong.
    grader = ScriptedReward([[0, 0, 0, 0, 0, 1, 1, 0], [0] * 8])
    use_rewards(trainer, grader)
    trainer.model.train()
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="did not fill the batch"):
        out = trainer._generate_and_score_completions(two_prompt_batch(trainer))
    assert len(grader.calls) == 3
    first = grader.calls[0]["completion_ids"]
    # Slot 0: the mixed group; slot 1: the earliest uniform group (round 1's group 0), out of the loss.
    assert unpadded(out["completion_ids"], out["completion_ids"] != trainer.processing_class.pad_token_id)[:4] == first[4:]
    assert (out["completion_mask"][:4].sum(1) > 0).all() and (out["completion_mask"][4:] == 0).all()
    assert int(out["num_items_in_batch"]) == int(out["completion_mask"].sum())
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items() if k.startswith("dapo/")}
    assert metrics["dapo/gen_rounds"] == 3
    assert metrics["dapo/frac_batch_filled"] == 0.5
    assert metrics["dapo/generated_per_trained"] == 6.0  # 6 groups generated for 1 trained
    assert metrics["dapo/frac_groups_kept"] == pytest.approx(1 / 6)


@pytest.mark.slow
def test_the_outcome_is_the_graders_reward_not_the_sum_of_rewards(untrained_tiny_dir, tmp_path):
    config = tiny_config(untrained_tiny_dir, variant="dapo", **{"train.dynamic_sampling_max_rounds": 1,
                                                               "bicc.enabled": True})
    trainer = build_trainer(config, tmp_path, progress=False)
    assert trainer.outcome_reward == "arithmetic_reward"  # the task's grader, named by the backend
    # Group 1 is all wrong by the grader, but a second reward makes half of its sums exceed 0.5.
    grader = ScriptedReward([[1, 0, 0, 0, 0, 0, 0, 0]], name="arithmetic_reward")
    style = ScriptedReward([[0, 0, 0, 0, 1, 0, 1, 0]], name="style")
    use_rewards(trainer, style, grader)
    trainer.model.train()
    torch.manual_seed(0)
    out = trainer._generate_and_score_completions(two_prompt_batch(trainer))
    assert out["bicc_rewards"].tolist() == [1, 0, 0, 0, 0, 0, 0, 0]
    assert (out["completion_mask"][:4].sum(1) > 0).all() and (out["completion_mask"][4:] == 0).all()
    assert trainer._metrics["train"]["dapo/frac_groups_kept"][-1] == 0.5
    # BICC partitions by the same outcome: group 1 is uniform, so it is not conditioned.
    assert out["bicc_conditioned"].tolist() == [True] * 4 + [False] * 4

    trainer.outcome_reward = "missing"
    with pytest.raises(ValueError, match="task grader 'missing' is not one of them"):
        trainer._generate_and_score_completions(two_prompt_batch(trainer))


@pytest.mark.slow
def test_gradient_variance_is_logged_across_micro_batches(untrained_tiny_dir, tmp_path):
    from bicc_lab.backends.trl.callbacks import MetricsFileCallback

    config = tiny_config(
        untrained_tiny_dir,
        **{"train.gradient_accumulation_steps": 2, "diagnostics.grad_variance": True, "rcc.enabled": True},
    )
    metrics_file = MetricsFileCallback(tmp_path / "metrics.jsonl")
    trainer = build_trainer(config, tmp_path, progress=False, callbacks=[metrics_file])
    force_mixed_rewards(trainer)  # the untrained model earns no reward: no gradient to measure
    trainer.train()
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    values = [x["diagnostics/grad_variance"] for x in lines if "diagnostics/grad_variance" in x]
    assert len(values) == 2 and all(v > 0 for v in values)


def unscorable_rewards(trainer):
    """Parity rewards, except that completions whose character codes sum to a multiple of 3 are
    unscorable: the reward function returns None for them, which TRL turns into NaN."""

    def reward(completions, **kw):
        return [None if sum(map(ord, c)) % 3 == 0 else float(sum(map(ord, c)) % 2 == 0) for c in completions]

    trainer.reward_funcs = [reward]
    trainer.reward_func_names = ["parity_or_none"]


@pytest.mark.slow
def test_unscorable_completions_stay_out_of_their_group_and_get_advantage_zero(untrained_tiny_dir, tmp_path):
    config = tiny_config(untrained_tiny_dir, **{"rcc.enabled": True, "rcc.coef": 3.0, "bicc.enabled": True})
    trainer = build_trainer(config, tmp_path, progress=False)
    unscorable_rewards(trainer)
    with torch.no_grad():  # move the policy away from the reference so that δ is not 0
        for p in trainer.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    trainer.model.train()
    batch = [dict(trainer.train_dataset[0]) for _ in range(4)] + [dict(trainer.train_dataset[1]) for _ in range(4)]
    for attempt in range(50):
        torch.manual_seed(attempt)
        out = trainer._generate_and_score_completions([dict(x) for x in batch])
        rewards = out["bicc_rewards"]
        unscored = torch.isnan(rewards)
        # Wanted: a group with an unscorable completion and both outcomes among the others.
        wanted = [
            g for g in range(2)
            if unscored[4 * g : 4 * g + 4].any()
            and (rewards[4 * g : 4 * g + 4] > 0.5).any() and (rewards[4 * g : 4 * g + 4] <= 0.5).any()
        ]
        if wanted:
            break
    else:
        pytest.fail("no group with an unscorable and both scored outcomes in 50 tries")
    advantages = out["advantages"]
    assert torch.isfinite(advantages).all()
    assert (advantages[unscored] == 0).all()
    # Each group's advantages equal RCC on its scored members alone.
    policy = trainer._logps(trainer.model, out["prompt_ids"], out["prompt_mask"], out["completion_ids"], out["completion_mask"])
    reference = trainer._logps(trainer.ref_model, out["prompt_ids"], out["prompt_mask"], out["completion_ids"], out["completion_mask"])
    delta = sequence_delta(policy, reference, out["completion_mask"], reduction="sum")
    for g in wanted:
        members = torch.arange(4 * g, 4 * g + 4)
        scored = members[~unscored[members]]
        expected = rcc_advantages(rewards[scored], delta[scored], scored.numel(), coef=3.0)
        torch.testing.assert_close(advantages[scored], expected.advantages, atol=1e-5, rtol=1e-5)
    # BICC: an unscorable completion is neither shown nor conditioned.
    assert not out["bicc_conditioned"][unscored].any()


@pytest.mark.slow
def test_dapo_dynamic_sampling_decides_by_task_outcome_not_reward_value(untrained_tiny_dir, tmp_path):
    config = tiny_config(untrained_tiny_dir, variant="dapo")
    trainer = build_trainer(config, tmp_path, progress=False)
    # Every answer is wrong (reward <= 0.5), but the rewards differ within groups.
    trainer.reward_funcs = [lambda completions, **kw: [0.3 * (sum(map(ord, c)) % 2) for c in completions]]
    trainer.reward_func_names = ["wrong_but_varied"]
    trainer.model.train()
    batch = [dict(trainer.train_dataset[0]) for _ in range(4)] + [dict(trainer.train_dataset[1]) for _ in range(4)]
    torch.manual_seed(0)
    out = trainer._generate_and_score_completions(batch)
    assert (out["bicc_rewards"].view(-1, 4).std(1) > 0).any()  # the values alone would look informative
    assert int(out["completion_mask"].sum()) == 0 and int(out["num_items_in_batch"]) == 0
    assert trainer._metrics["train"]["dapo/frac_groups_kept"][-1] == 0.0


@pytest.mark.slow
def test_logp_shift_is_logged_per_side(untrained_tiny_dir, tmp_path):
    from bicc_lab.backends.trl.callbacks import MetricsFileCallback

    config = tiny_config(untrained_tiny_dir, **{"bicc.enabled": True})
    metrics_file = MetricsFileCallback(tmp_path / "metrics.jsonl")
    trainer = build_trainer(config, tmp_path, progress=False, callbacks=[metrics_file])
    force_mixed_rewards(trainer)
    trainer.train()
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    both = [x for x in lines if "bicc/logp_shift_correct" in x and "bicc/logp_shift_incorrect" in x]
    assert both
    for x in both:
        # The overall shift is a count-weighted mean of the two sides, so it lies between them.
        low, high = sorted((x["bicc/logp_shift_correct"], x["bicc/logp_shift_incorrect"]))
        assert low - 1e-6 <= x["bicc/logp_shift"] <= high + 1e-6
        # ... and per token a token-weighted mean, with the number of completions behind it.
        low, high = sorted((x["bicc/logp_shift_per_token_correct"], x["bicc/logp_shift_per_token_incorrect"]))
        assert low - 1e-6 <= x["bicc/logp_shift_per_token"] <= high + 1e-6
        n_correct, n_incorrect = x["bicc/logp_shift_n_correct"], x["bicc/logp_shift_n_incorrect"]
        assert n_correct >= 1 and n_incorrect >= 1 and n_correct == int(n_correct)
        assert x["bicc/logp_shift_n"] == n_correct + n_incorrect


# ---------------------------------------------------------------- transfer diagnostics

TRANSFER_KEYS = ("transfer/grad_cosine", "transfer/plain_logp_gain_correct", "transfer/plain_logp_gain_incorrect")


def train_and_read_metrics(config, tmp_path):
    from bicc_lab.backends.trl.callbacks import MetricsFileCallback

    metrics_file = MetricsFileCallback(tmp_path / "metrics.jsonl")
    trainer = build_trainer(config, tmp_path, progress=False, callbacks=[metrics_file])
    force_mixed_rewards(trainer)
    trainer.train()
    return [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_bicc_with_an_empty_context_is_plain_grpo_cosine_one(untrained_tiny_dir, tmp_path):
    # A budget of int(0.01 x (8 + 4)) = 0 tokens: no trace fits, every prompt stays q, so the
    # BICC update is the plain GRPO update. Probed on steps 0 and 2 of 3 (every 2nd, first included).
    config = tiny_config(
        untrained_tiny_dir,
        **{"bicc.enabled": True, "bicc.context_fraction": 0.01, "diagnostics.transfer_every": 2,
           "train.max_steps": 3},
    )
    lines = train_and_read_metrics(config, tmp_path)
    probed = [x for x in lines if "transfer/grad_cosine" in x]
    assert [x["step"] for x in probed] == [1, 3]
    for x in probed:
        assert x["transfer/grad_cosine"] == pytest.approx(1.0, abs=1e-5)
        assert "transfer/plain_logp_gain_correct" in x and "transfer/plain_logp_gain_incorrect" in x


@pytest.mark.slow
def test_gain_is_the_first_order_change_of_plain_logps_and_context_bends_the_gradient(untrained_tiny_dir, tmp_path):
    config = tiny_config(untrained_tiny_dir, **{"bicc.enabled": True, "diagnostics.transfer_every": 1})
    trainer = build_trainer(config, tmp_path, progress=False)
    force_mixed_rewards(trainer)
    probe = trainer.transfer_probe
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    out = mixed_batch(trainer)
    assert out["bicc_conditioned"].any()
    rewards = out["bicc_rewards"]

    def mean_plain_logp(rows):
        with torch.no_grad():
            logps = trainer._logps(trainer.model, out["prompt_ids"], out["prompt_mask"],
                                   out["completion_ids"], out["completion_mask"])
        return (logps * out["completion_mask"]).sum(-1)[rows].mean().item()

    correct, incorrect = rewards > 0.5, rewards <= 0.5
    before = mean_plain_logp(correct), mean_plain_logp(incorrect)
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, out)  # the BICC loss; the probe takes the plain side
    loss.backward()
    probe.on_pre_optimizer_step(None, None, None)
    lr = 1e-3  # plain SGD on the BICC gradient: small enough for first order to hold
    with torch.no_grad():
        for p in trainer.model.parameters():
            if p.grad is not None:
                p.add_(p.grad, alpha=-lr)
    probe.on_optimizer_step(None, None, None)
    after = mean_plain_logp(correct), mean_plain_logp(incorrect)
    metrics = {key: trainer._metrics["train"][key][-1] for key in TRANSFER_KEYS}
    for (b, a), key in zip(zip(before, after, strict=True), TRANSFER_KEYS[1:], strict=True):
        assert abs(metrics[key]) > 1e-5
        assert metrics[key] == pytest.approx(a - b, rel=0.05)
    # The context changes the gradient: not the plain one (cosine 1 would make the probe moot).
    assert metrics["transfer/grad_cosine"] < 0.999
