"""Reliability (issue 19): bounded input, runs that train less than asked, torn checkpoints,
killed workers, finished runs that are never overwritten, and the small one-line errors.

Every test runs the user's command (the Typer app in-process, or a subprocess where a
worker or training is involved) and checks the one line it prints and its exit code.
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bicc_lab.cli.main import app

runner = CliRunner()

BASE = """\
name: t
model:
  name: tiny
  tiny: {layers: 2, hidden: 32, heads: 2, max_warmup_steps: 0}
train: {max_steps: 2, num_generations: 4, per_device_train_batch_size: 8, max_completion_length: 4}
eval: {enabled: false}
"""


def _write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


@pytest.fixture()
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BICC_LAB_DATA_DIR", raising=False)
    _write(tmp_path / "base.yaml", BASE)
    _write(tmp_path / "s.yaml", "base: base.yaml\ngrid:\n  seed: [0, 1]\n")
    return tmp_path


class _Result:
    def __init__(self, exit_code: int, output: str) -> None:
        self.exit_code, self.output = exit_code, output


def _cli(*args: str) -> _Result:
    """``bicc-lab ARGS`` in-process; a UserError that escapes the app becomes one line and
    exit 2, as the console script's ``main`` makes it."""
    result = runner.invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        from bicc_lab.errors import UserError

        if isinstance(result.exception, UserError):
            return _Result(2, result.output + f"error: {result.exception}\n")
        raise result.exception
    return _Result(result.exit_code, result.output)


def _one_line_exit_2(result) -> str:
    assert result.exit_code == 2, result.output
    text = result.output.strip()
    assert "\n" not in text and "Traceback" not in text, text
    return text


# --------------------------------------------------------------------------- bounded input


def test_nested_yaml_aliases_are_refused_before_they_expand(project):
    lines = ["base: base.yaml", "a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]
    (project / "laughs.yaml").write_text("\n".join(lines) + "\ngrid: {seed: [0]}\n")
    assert (project / "laughs.yaml").stat().st_size < 700  # 10^10 values once expanded
    text = _one_line_exit_2(_cli("sweep", "plan", "laughs.yaml"))
    assert text.startswith("error: YAML aliases expand this document to more than 100,000 values at laughs.yaml:")
    # merge keys repeating one another are counted the same way
    lines = ["base: base.yaml", "m0: &m0 {k: 1}"]
    lines += [f"m{i}: &m{i} {{<<: [" + ", ".join([f"*m{i - 1}"] * 10) + "]}" for i in range(1, 8)]
    (project / "merges.yaml").write_text("\n".join(lines) + "\ngrid: {seed: [0]}\n")
    text = _one_line_exit_2(_cli("sweep", "plan", "merges.yaml"))
    assert "YAML aliases expand this document" in text
    # a few aliases of ordinary size still load
    _write(project / "ok.yaml", "base: base.yaml\ngrid:\n  seed: &s [1, 2]\n  train.max_steps: *s\n")
    result = _cli("sweep", "plan", "ok.yaml", "--json")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.output)["cells"]) == 4


def test_a_grid_larger_than_max_cells_is_refused_before_expansion_and_set_raises_it(project):
    seeds = ", ".join(str(i) for i in range(200))
    rates = ", ".join(f"{(i + 1) * 1e-5:.5g}" for i in range(100))
    _write(project / "big.yaml", f"base: base.yaml\ngrid:\n  seed: [{seeds}]\n  train.learning_rate: [{rates}]\n")
    text = _one_line_exit_2(_cli("sweep", "plan", "big.yaml"))
    assert text == (
        "error: the grid has 20,000 cells (200 seed x 100 train.learning_rate), more than max_cells = 10,000 "
        "at big.yaml; shrink an axis, or raise the limit with --set max_cells=20000"
    )
    text = _one_line_exit_2(_cli("sweep", "plan", "s.yaml", "--set", "max_cells=1"))
    assert text == (
        "error: the grid has 2 cells (2 seed), more than max_cells = 1 at --set max_cells; "
        "shrink an axis, or raise the limit with --set max_cells=2"
    )
    result = _cli("sweep", "plan", "s.yaml", "--set", "max_cells=2", "--json")
    assert result.exit_code == 0, result.output


# --------------------------------------------------------------------------- small ones


def test_grace_must_be_a_non_negative_number_of_seconds(project):
    for command in (["sweep", "run", "s.yaml"], ["tune", "run", "s.yaml"]):
        for value in ("-5", "nan", "inf"):
            text = _one_line_exit_2(_cli(*command, "--grace", value))
            assert text.startswith("error: --grace must be a number of seconds >= 0, got "), text
    assert not (project / "runs").exists() and not (project / "mlflow.db").exists()


def test_a_symlink_loop_and_a_broken_link_are_named_as_such(project):
    os.symlink("loop2.yaml", project / "loop1.yaml")
    os.symlink("loop1.yaml", project / "loop2.yaml")
    os.symlink("/nonexistent/x.yaml", project / "dangling.yaml")
    assert _one_line_exit_2(_cli("sweep", "plan", "loop1.yaml")) == (
        "error: sweep file is a symlink loop: loop1.yaml"
    )
    assert _one_line_exit_2(_cli("sweep", "plan", "dangling.yaml")) == (
        "error: sweep file is a broken symlink (to /nonexistent/x.yaml): dangling.yaml"
    )
    assert _one_line_exit_2(_cli("train", "loop1.yaml")) == (
        "error: experiment file is a symlink loop: loop1.yaml"
    )
    _write(project / "via-loop.yaml", "base: loop1.yaml\ngrid: {seed: [0]}\n")
    assert _one_line_exit_2(_cli("sweep", "plan", "via-loop.yaml")) == (
        "error: base experiment file is a symlink loop: loop1.yaml at via-loop.yaml:1:7; "
        "'base' is relative to the sweep file"
    )


def test_a_set_file_mistake_names_the_file_and_line(project):
    _write(project / "best.yaml", "# from tune best\nrcc:\n  coef: 0.5\n  cof: 1\n")
    text = _one_line_exit_2(_cli("sweep", "run", "s.yaml", "--set-file", "best.yaml"))
    assert text == "error: unknown key 'rcc.cof' at best.yaml:4:3; did you mean 'rcc.coef'?"
    _write(project / "best.yaml", "train.max_steps: abc\n")
    text = _one_line_exit_2(_cli("sweep", "run", "s.yaml", "--set-file", "best.yaml"))
    assert "at best.yaml:1:1" in text and "--set" not in text, text
