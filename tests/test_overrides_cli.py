"""Hydra-style overrides: `bicc-lab train tiny.yaml train.max_steps=3` is `--set train.max_steps=3`.

Every command that takes a config and --set takes positional KEY=VALUE after the config, with
the same parser and the same errors; a word without '=' there is one line pointing to both
spellings, exit 2, before anything loads.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from bicc_lab.cli.main import app, main

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()

BASE = """\
name: t
model:
  name: tiny
  tiny: {layers: 2, hidden: 32, heads: 2, max_warmup_steps: 0, target_accuracy: 0.0}
train: {max_steps: 2, num_generations: 4, per_device_train_batch_size: 8, max_completion_length: 4}
eval: {enabled: false}
"""

STUDY = """\
base: base.yaml
search:
  params:
    rcc.coef: {type: log-float, low: 0.1, high: 10}
  objective: eval/arith/avg@4
  n_trials: 2
"""


@pytest.fixture()
def files(tmp_path):
    (tmp_path / "base.yaml").write_text(BASE)
    (tmp_path / "s.yaml").write_text("base: base.yaml\ngrid: {seed: [0, 1]}\n")
    return tmp_path


def _one_line_exit_2(capsys, args: list[str]) -> str:
    """Run the console script's entry (which maps a library's UserError to exit 2 as typer's
    app alone does not) and return its one line."""
    with pytest.raises(SystemExit) as exited:
        main(args)
    captured = capsys.readouterr()
    text = (captured.out + captured.err).strip()
    assert exited.value.code == 2, text
    assert "\n" not in text and "Traceback" not in text, text
    return text


def test_sweep_plan_applies_positional_overrides_as_set_does(files):
    def plan(*extra: str) -> list[dict]:
        result = runner.invoke(
            app, ["sweep", "plan", str(files / "s.yaml"), *extra, "--runs-dir", str(files / "runs"), "--json"]
        )
        assert result.exit_code == 0, result.output
        return json.loads(result.output)["cells"]

    hydra = plan("train.max_steps=7", "variant=dapo")
    assert [c["max_steps"] for c in hydra] == [7, 7]
    assert all("/dapo/" in c["name"] for c in hydra)
    # The same cells (ids included) as with --set; --set given too wins over the positional one.
    assert hydra == plan("--set", "train.max_steps=7", "--set", "variant=dapo")
    assert [c["max_steps"] for c in plan("train.max_steps=7", "--set", "train.max_steps=9")] == [9, 9]


@pytest.mark.parametrize(
    ("command", "target"),
    [
        (["sweep", "plan"], "s.yaml"),
        (["sweep", "run"], "s.yaml"),
        (["sweep", "status"], "s.yaml"),
        (["train"], "base.yaml"),
        (["tune", "status"], "study.yaml"),
        (["tune", "run"], "study.yaml"),
        (["tune", "best"], "study.yaml"),
    ],
)
def test_bad_positional_override_gets_the_set_error_and_a_stray_word_points_to_set(files, capsys, command, target):
    (files / "study.yaml").write_text(STUDY)
    path = str(files / target)
    runs = ["--runs-dir", str(files / "runs")] if command[0] != "train" else ["--no-tracking"]

    as_set = _one_line_exit_2(capsys, [*command, path, "--set", "train.max_stepz=3", *runs])
    positional = _one_line_exit_2(capsys, [*command, path, "train.max_stepz=3", *runs])
    assert positional == as_set
    assert "did you mean 'train.max_steps'" in positional

    stray = _one_line_exit_2(capsys, [*command, path, "max_steps", *runs])
    assert "'max_steps'" in stray and "KEY=VALUE" in stray and "--set" in stray
    assert not (files / "runs").exists()  # nothing started


def test_train_with_a_positional_override_trains_that_many_steps(files):
    # The user's command as written (a fresh process, as the console script runs it).
    out = files / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "bicc_lab.cli.main", "train", "base.yaml", "train.max_steps=3",
         "--no-tracking", "--output-dir", str(out)],
        capture_output=True, text=True, cwd=files,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "trained 3 steps" in proc.stdout
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["max_steps"] == 3
