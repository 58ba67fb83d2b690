"""`bicc-lab train` under `torchrun --nproc_per_node 2` (CPU, gloo) against one process.

Both runs train the same tiny config with BICC and RCC on for two optimizer steps (two
generation batches of 64 = 8 prompts x 8 completions), the 2-process run with half the
per-device batch, so the global batch, the prompts and their order are the same. Sampling
draws from each process's RNG over its own rows, so the 1-process run replays the
2-process run's completions (``BICC_LAB_ROLLOUT_REPLAY``); everything computed from them
must then agree:

- batch 0: rewards, advantages, RCC's δ/covariance/baseline shift, BICC's partition and
  conditioned prompts, and each rank keeps exactly its slice of them;
- batch 1, after one optimizer step: δ is no longer 0 (policy moved away from the
  reference), so it checks the gathered δ and RCC's covariance for real, and that the
  2-process gradient step (DDP average of token-normalised losses) equals the 1-process
  one up to float rounding.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import subprocess_env

pytestmark = pytest.mark.slow

EXPERIMENT = """
name: mp
seed: 0
variant: grpo
model:
  name: tiny
  dtype: float32
  tiny: {layers: 2, hidden: 64, heads: 2, digits: 2, target_accuracy: 0.1}  # ~1 min to warm-start
data: {train: synthetic_arithmetic, digits: 2}
train:
  max_steps: 2
  learning_rate: 1.0e-3
  num_generations: 8
  per_device_train_batch_size: 32
  gradient_accumulation_steps: 2
  max_completion_length: 4
  max_prompt_length: 16
  temperature: 1.0
  logging_steps: 1
  save_steps: 1000
bicc: {enabled: true, context_fraction: 0.4, template: separator, separator: "\\n"}
rcc: {enabled: true, coef: 1.0}
eval: {enabled: false}
"""


def _train(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 600) -> None:
    proc = subprocess.run(args, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


@pytest.fixture(scope="module")
def dumps(tmp_path_factory):
    torch = pytest.importorskip("torch")
    root = tmp_path_factory.mktemp("multiprocess")
    (root / "mp.yaml").write_text(textwrap.dedent(EXPERIMENT).lstrip())
    env = subprocess_env(root / "cache")
    bicc_lab = shutil.which("bicc-lab", path=str(Path(sys.executable).parent))
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert bicc_lab and torchrun, "bicc-lab and torchrun must be installed beside this Python"
    common = ["train", "mp.yaml", "--no-eval", "--no-tracking"]
    # Build the tiny model once, before two processes would race for its cache.
    _train([bicc_lab, *common, "--set", "train.max_steps=1", "--output-dir", "warm"], env, root)
    env2 = {**env, "BICC_LAB_ROLLOUT_DUMP": str(root / "two")}
    _train(
        [torchrun, "--nproc_per_node", "2", "--master_port", str(29500 + os.getpid() % 1000),
         "--no-python", bicc_lab, *common,
         "--set", "train.per_device_train_batch_size=16", "--output-dir", "out2"],
        env2, root,
    )
    env1 = {**env, "BICC_LAB_ROLLOUT_DUMP": str(root / "one"), "BICC_LAB_ROLLOUT_REPLAY": str(root / "two")}
    _train([bicc_lab, *common, "--output-dir", "out1"], env1, root)

    def load(name: str) -> dict:
        return torch.load(root / name, weights_only=True)

    return {
        batch: {
            "one": load(f"one/batch{batch}-rank0.pt"),
            "two": [load(f"two/batch{batch}-rank{rank}.pt") for rank in (0, 1)],
        }
        for batch in (0, 1)
    }


# Tolerances. The two runs compute the same float32 numbers over batches of another shape
# (16 vs 32 rows a forward), so matmuls and sums may round in another order. Per token, a
# log-prob then differs by a few ulps of its logits: measured up to ~1e-5 nats, and one
# host summed that to 3.6e-5 over a 4-token δ, past the old flat 1e-5. A wrong gather or
# slice moves a log-prob by the gap between two different samples' log-probs (≥ 0.01
# nats here, usually ≥ 0.1), so 1e-4 per token keeps three orders of magnitude between
# rounding and a real bug. Everything summed from log-probs is then bounded by
# propagating the measured per-token differences, not by another flat constant.
TOKEN_ATOL = 1e-4
FLOAT32_EPS = 2.0**-24  # unit roundoff of float32


def _rows_close(a, b, tol, what: str, failures: list[str]) -> None:
    """Record a failure where |a - b| exceeds ``tol`` (a scalar or one bound per entry)."""
    import torch

    if a.shape != b.shape:
        failures.append(f"{what}: shapes {tuple(a.shape)} vs {tuple(b.shape)}")
        return
    gap = (a.double() - b.double()).abs()
    bound = torch.as_tensor(tol, dtype=torch.float64).expand_as(gap)
    if (gap > bound).any():
        worst = int((gap - bound).argmax())
        failures.append(
            f"{what}: |diff| {gap.flatten()[worst].item():.3g} > tolerance "
            f"{bound.flatten()[worst].item():.3g} at entry {worst}"
        )


def _delta_tolerance(one: dict, other: dict, failures: list[str]):
    """Per-sequence bound on |δ_one - δ_other|: the per-token log-prob differences (each
    checked against TOKEN_ATOL first) plus float32 rounding of the sum over the tokens."""
    policy_one, policy_other = one["rcc_policy_logps"].double(), other["rcc_policy_logps"].double()
    ref_one, ref_other = one["rcc_reference_logps"].double(), other["rcc_reference_logps"].double()
    _rows_close(policy_one, policy_other, TOKEN_ATOL, "rcc policy log-probs per token", failures)
    _rows_close(ref_one, ref_other, TOKEN_ATOL, "rcc reference log-probs per token", failures)
    if policy_one.shape != policy_other.shape or ref_one.shape != ref_other.shape:
        return None
    # Tokens past TOKEN_ATOL already failed above; they must not widen δ's bound too.
    token_gaps = ((policy_one - policy_other).abs().clamp(max=TOKEN_ATOL)
                  + (ref_one - ref_other).abs().clamp(max=TOKEN_ATOL))
    magnitude = policy_one.abs() + ref_one.abs()
    n_tokens = (magnitude > 0).sum(-1).clamp(min=1)
    # Each float32 sum of n terms is off by at most n·u·Σ|terms| (two runs: twice that).
    summation = 2 * n_tokens * FLOAT32_EPS * magnitude.sum(-1)
    return token_gaps.sum(-1) + summation + 1e-7


def _group_stat_tolerances(one: dict, delta_gap, group_size: int, coef: float):
    """Bounds on RCC's covariance, baseline shift and advantages given |Δδ| per sequence.

    cov_g = mean_j (r_j - r̄)(δ_j - δ̄), so |Δcov_g| ≤ 2·mean_j |r_j - r̄|·max_j |Δδ_j|;
    the shift is 2λ·cov (a clamp only shrinks it), and A_j = (r_j - r̄ - shift)/(σ + ε)
    moves by |Δshift|/(σ + ε)."""
    rewards = one["rewards"].double().view(-1, group_size)
    spread = (rewards - rewards.mean(-1, keepdim=True)).abs().mean(-1)
    max_gap = delta_gap.view(-1, group_size).max(-1).values
    cov_tol = 2 * spread * max_gap + 1e-9
    shift_tol = 2 * coef * cov_tol + 1e-9
    sigma = rewards.std(-1, correction=0)
    advantage_tol = (shift_tol / (sigma + 1e-4)).clamp(max=1e3).repeat_interleave(group_size) + 1e-6
    return cov_tol, shift_tol, advantage_tol


def agreement_failures(one: dict, two: list[dict], group_size: int = 8, coef: float = 1.0) -> list[str]:
    """What a 2-process dump disagrees on with the 1-process dump of the same batch, with
    tolerances derived from the float32 arithmetic in between (empty: they agree)."""
    import torch

    failures: list[str] = []
    rows_per_rank = one["local_rows"] // len(two)
    for index, rank in enumerate(two):  # every rank sees the whole (gathered) batch, in order
        where = f"rank {index}"
        if rank["prompts"] != one["prompts"]:
            failures.append(f"{where}: gathered prompts differ")
        if rank["completions"] != one["completions"]:
            failures.append(f"{where}: gathered completions differ")
        if not torch.equal(rank["rewards"], one["rewards"]):
            failures.append(f"{where}: rewards differ")
        delta_tol = _delta_tolerance(one, rank, failures)
        if delta_tol is None:
            continue
        _rows_close(rank["rcc_delta"], one["rcc_delta"], delta_tol, f"{where} rcc_delta", failures)
        delta_gap = (rank["rcc_delta"].double() - one["rcc_delta"].double()).abs()
        cov_tol, shift_tol, advantage_tol = _group_stat_tolerances(
            one, torch.minimum(delta_gap, delta_tol), group_size, coef
        )
        _rows_close(rank["rcc_cov"], one["rcc_cov"], cov_tol, f"{where} rcc_cov", failures)
        _rows_close(rank["rcc_baseline_shift"], one["rcc_baseline_shift"], shift_tol,
                    f"{where} rcc_baseline_shift", failures)
        _rows_close(rank["advantages"], one["advantages"], advantage_tol, f"{where} advantages", failures)
        if not torch.equal(rank["bicc_conditioned"], one["bicc_conditioned"]):
            failures.append(f"{where}: BICC partition differs")
        if not torch.equal(rank["bicc_context_tokens"], one["bicc_context_tokens"]):
            failures.append(f"{where}: BICC context token counts differ")
        if rank["bicc_prompts"] != one["bicc_prompts"]:
            failures.append(f"{where}: BICC conditioned prompts differ")
        # ... and keeps its own contiguous slice of the batch
        rows = slice(rows_per_rank * index, rows_per_rank * (index + 1))
        _rows_close(rank["local_advantages"], one["advantages"][rows], advantage_tol[rows],
                    f"{where} local advantages", failures)
        if rank["local_bicc_prompts"] != one["bicc_prompts"][rows]:
            failures.append(f"{where}: local BICC prompts are not this rank's slice")
        if not torch.equal(rank["local_bicc_conditioned"].bool(), one["bicc_conditioned"][rows]):
            failures.append(f"{where}: local BICC partition is not this rank's slice")
    return failures


@pytest.mark.parametrize("batch", [0, 1])
def test_two_processes_compute_what_one_process_computes(dumps, batch):
    one, two = dumps[batch]["one"], dumps[batch]["two"]
    assert one["num_processes"] == 1 and [r["num_processes"] for r in two] == [2, 2]
    assert one["local_rows"] == 64 and [r["local_rows"] for r in two] == [32, 32]
    assert agreement_failures(one, two) == []
    # The comparison is not vacuous: mixed groups, conditioned prompts, non-zero advantages.
    rewards = one["rewards"].view(-1, 8)
    assert (rewards.max(1).values > rewards.min(1).values).sum() >= 1, rewards
    assert one["bicc_conditioned"].sum() >= 8
    assert one["advantages"].abs().max() > 0.1


def _wrongly_gathered(rank: dict) -> dict:
    """A rank's dump as a gather that swapped the two ranks' halves would leave it."""
    import torch

    def swap(value):
        if isinstance(value, list):
            return value[len(value) // 2:] + value[: len(value) // 2]
        return torch.cat([value[value.shape[0] // 2:], value[: value.shape[0] // 2]])

    gathered = ("prompts", "completions", "rewards", "advantages", "rcc_delta", "rcc_policy_logps",
                "rcc_reference_logps", "bicc_conditioned", "bicc_context_tokens", "bicc_prompts")
    return {key: swap(value) if key in gathered else value for key, value in rank.items()}


def _wrong_logps_only(rank: dict) -> dict:
    """A dump whose δ came from log-probs gathered one row off (prompts and completions
    right): only the derived tolerances stand between this and a pass."""
    import torch

    shifted = {key: rank[key] for key in rank}
    for key in ("rcc_policy_logps", "rcc_reference_logps", "rcc_delta"):
        shifted[key] = torch.roll(rank[key], 1, dims=0)
    return shifted


def test_a_wrong_gather_is_caught(dumps):
    """The tolerances above are loose enough for rounding on any host, and still far too
    tight for a real bug: the batch after one step, gathered wrongly, fails."""
    one, two = dumps[1]["one"], dumps[1]["two"]
    assert agreement_failures(one, two) == []
    assert agreement_failures(one, [_wrongly_gathered(two[0]), two[1]])
    failures = agreement_failures(one, [_wrong_logps_only(two[0]), two[1]])
    assert any("log-probs per token" in f for f in failures), failures
    assert any("rcc_delta" in f for f in failures), failures


def test_after_one_step_delta_is_live_and_still_agrees(dumps):
    """Batch 1 comes after one optimizer step: δ (policy vs reference) is non-zero, so the
    agreement above covered the DDP gradient step and RCC's covariance on real values."""
    one0, one1 = dumps[0]["one"], dumps[1]["one"]
    # The policy is the reference before any step: δ is float rounding only. Not bitwise 0:
    # the shared path scores a completion's first token from the prefix call's last logits
    # through the model's own LM head, and on a CPU the frozen copy's head (weights without
    # requires_grad) ran another linear kernel than the trainable policy's: equal weights,
    # logits 1.4e-6 apart on the same hidden states, bitwise equal once both weights are
    # detached (checked 2026-12-02 on this config). The later tokens go through TRL's fused
    # head and stay bitwise equal. The bound is a tenth of batch 1's floor below.
    assert one0["rcc_delta"].abs().max() <= 1e-5
    assert one1["rcc_delta"].abs().max() > 1e-4
    assert one1["rcc_cov"].abs().max() > 0
