"""`sweep run` of a sweep with a seeds: block, end to end on an untrained tiny model: it
adds a batch of seeds to the open row, stops by itself at seeds.max, and a second run
(resume) starts nothing; `sweep status` says where the row stands."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import subprocess_env

pytestmark = pytest.mark.slow


def _cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bicc_lab.cli.main", *args], capture_output=True, text=True, env=env, cwd=cwd,
        timeout=900,
    )


def test_sweep_run_adds_seeds_batch_by_batch_and_stops_by_itself(tmp_path, untrained_tiny_dir):
    (tmp_path / "base.yaml").write_text(textwrap.dedent(f"""
        name: t
        model: {{name: {untrained_tiny_dir}}}
        train: {{max_steps: 1, num_generations: 4, per_device_train_batch_size: 8, max_completion_length: 4}}
        eval: {{enabled: true, benchmarks: [arith_test], samples: 2, limit: 2, max_new_tokens: 4}}
        """))
    (tmp_path / "s.yaml").write_text(textwrap.dedent("""
        name: adaptive
        base: base.yaml
        grid:
          rcc.enabled: [false, true]
          seed: [0, 1]
        seeds: {max: 4, batch: 2, half_width: 0.001}
        max_parallel: 2
        """))
    env = subprocess_env(tmp_path / "cache")
    common = ["--runs-dir", str(tmp_path / "runs"), "--set", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"]
    first = _cli(["sweep", "run", "s.yaml", *common], env, tmp_path)
    out = first.stdout + first.stderr
    assert first.returncode == 0, out[-3000:]
    # round 1: seeds 0 and 1 (4 cells); two seeds give no finite interval, so round 2 adds
    # seeds 2 and 3 (4 more cells); then the row is at seeds.max and the sweep stops
    assert "4/4 finished (4 now, 0 before)" in out, out[-3000:]
    assert "8/8 finished (4 now, 4 before)" in out, out[-3000:]
    assert ": 4 seeds, at max" in out or ": 4 seeds, resolved" in out, out[-3000:]
    # a second run finds every needed cell finished and starts nothing
    again = _cli(["sweep", "run", "s.yaml", *common], env, tmp_path)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert "0 now, 8 before" in again.stdout, again.stdout[-3000:]
    status = _cli(["sweep", "status", "s.yaml", *common], env, tmp_path)
    assert status.returncode == 0 and "seed policy: 2 to 4 seeds per row" in status.stdout
    assert ": 4 seeds, " in status.stdout
