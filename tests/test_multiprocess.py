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


def _close(a, b, atol=1e-5) -> None:
    import torch

    assert a.shape == b.shape
    assert torch.allclose(a.double(), b.double(), atol=atol, rtol=1e-4), (a - b).abs().max().item()


@pytest.mark.parametrize("batch", [0, 1])
def test_two_processes_compute_what_one_process_computes(dumps, batch):
    import torch

    one, two = dumps[batch]["one"], dumps[batch]["two"]
    assert one["num_processes"] == 1 and [r["num_processes"] for r in two] == [2, 2]
    assert one["local_rows"] == 64 and [r["local_rows"] for r in two] == [32, 32]
    for rank in two:  # every rank sees the whole (gathered) batch, in the same order
        assert rank["prompts"] == one["prompts"]
        assert rank["completions"] == one["completions"]
        assert torch.equal(rank["rewards"], one["rewards"])
        _close(rank["advantages"], one["advantages"])
        _close(rank["rcc_delta"], one["rcc_delta"])
        _close(rank["rcc_cov"], one["rcc_cov"], atol=1e-6)
        _close(rank["rcc_baseline_shift"], one["rcc_baseline_shift"], atol=1e-6)
        assert torch.equal(rank["bicc_conditioned"], one["bicc_conditioned"])
        assert torch.equal(rank["bicc_context_tokens"], one["bicc_context_tokens"])
        assert rank["bicc_prompts"] == one["bicc_prompts"]
    for r, rank in enumerate(two):  # ... and keeps its own contiguous slice of it
        rows = slice(32 * r, 32 * (r + 1))
        _close(rank["local_advantages"], one["advantages"][rows])
        assert rank["local_bicc_prompts"] == one["bicc_prompts"][rows]
        assert torch.equal(rank["local_bicc_conditioned"].bool(), one["bicc_conditioned"][rows])
    # The comparison is not vacuous: mixed groups, conditioned prompts, non-zero advantages.
    rewards = one["rewards"].view(-1, 8)
    assert (rewards.max(1).values > rewards.min(1).values).sum() >= 1, rewards
    assert one["bicc_conditioned"].sum() >= 8
    assert one["advantages"].abs().max() > 0.1


def test_after_one_step_delta_is_live_and_still_agrees(dumps):
    """Batch 1 comes after one optimizer step: δ (policy vs reference) is non-zero, so the
    agreement above covered the DDP gradient step and RCC's covariance on real values."""
    one0, one1 = dumps[0]["one"], dumps[1]["one"]
    assert one0["rcc_delta"].abs().max() == 0  # the policy is the reference before any step
    assert one1["rcc_delta"].abs().max() > 1e-4
    assert one1["rcc_cov"].abs().max() > 0
