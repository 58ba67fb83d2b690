"""README.md's "Command reference" is every command's --help, the same on every machine.

Fast: the CLI's help needs typer and the command modules only (no torch, mlflow, lm-eval).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bicc_lab.cli import reference

ROOT = Path(__file__).resolve().parents[1]


def test_readme_command_reference_is_the_current_help():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    expected = reference.update_readme(readme, reference.render_section())
    assert expected == readme, (
        "README.md's command reference differs from the commands' --help: run `make docs` "
        "(python -m bicc_lab.cli.reference) and commit README.md"
    )


def test_every_command_and_subcommand_is_rendered_under_its_own_name():
    paths = [path for path, _ in reference.render()]
    assert paths[0] == "bicc-lab"
    for path in ("bicc-lab train", "bicc-lab eval", "bicc-lab report", "bicc-lab sweep run",
                 "bicc-lab sweep status", "bicc-lab tune best", "bicc-lab models pull", "bicc-lab data list"):
        assert path in paths
    texts = dict(reference.render())
    assert texts["bicc-lab sweep status"].startswith("Usage: bicc-lab sweep status ")
    section = reference.render_section()
    assert str(ROOT) not in section and sys.executable not in section  # not the installed path
    assert "\x1b[" not in section and "│" not in section  # no colour, no Rich boxes


def test_the_rendering_ignores_terminal_width_and_environment(monkeypatch, tmp_path):
    baseline = reference.render_section()
    monkeypatch.setenv("COLUMNS", "40")
    monkeypatch.setenv("LINES", "10")
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setenv("BICC_LAB_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("BICC_LAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("BICC_LAB_HEARTBEAT_S", "3")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/x.db")
    monkeypatch.chdir(tmp_path)
    again = reference.render_section()
    assert again == baseline
    assert str(tmp_path) not in again  # env var names are shown, never their values
    assert "[env var: BICC_LAB_DATA_DIR]" in again


def test_update_readme_replaces_only_the_marked_section():
    text = f"head\n{reference.START}\nold\n{reference.END}\ntail\n"
    assert reference.update_readme(text, "new") == f"head\n{reference.START}\nnew\n{reference.END}\ntail\n"
    with pytest.raises(ValueError, match="command-reference"):
        reference.update_readme("no markers", "new")


def test_check_mode_fails_with_the_fix_and_writes_nothing(monkeypatch, tmp_path):
    readme = tmp_path / "README.md"
    stale = f"# x\n{reference.START}\nstale\n{reference.END}\n"
    readme.write_text(stale)
    monkeypatch.setattr(reference, "README", readme)
    assert reference.main(["--check"]) == 1
    assert readme.read_text() == stale
    assert reference.main([]) == 0 and reference.main(["--check"]) == 0
    assert "Usage: bicc-lab sweep run" in readme.read_text()


def test_rendering_imports_no_heavy_library():
    code = (
        "import sys; from bicc_lab.cli.reference import render_section; render_section(); "
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & "
        "{'torch', 'transformers', 'trl', 'mlflow', 'lm_eval', 'optuna', 'pandas'}); print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
