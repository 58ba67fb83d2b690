"""The CLI: light start-up, one-line errors with exit 2, help with examples on every command."""

import subprocess
import sys

import pytest
from conftest import cli_commands
from typer.testing import CliRunner

from bicc_lab.cli.main import app

HEAVY = ("torch", "transformers", "trl", "mlflow", "lm_eval", "optuna", "pandas")
runner = CliRunner()


def test_importing_the_cli_pulls_in_nothing_heavy():
    code = (
        "import sys, bicc_lab.cli.main;"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_help_runs_without_heavy_imports():
    code = (
        "import sys\n"
        "from bicc_lab.cli.main import app\n"
        "try:\n    app(['--help'])\n"
        "except SystemExit:\n    pass\n"
        f"print('HEAVY=' + ','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY=\n" in out.stdout or out.stdout.strip().endswith("HEAVY=")


@pytest.mark.parametrize("path", [p for p, _ in cli_commands()], ids=lambda p: " ".join(p) or "root")
def test_every_command_has_help_with_an_example(path):
    result = runner.invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output


def test_every_option_has_a_one_line_help():
    for path, command in cli_commands():
        for param in command.params:
            if getattr(param, "help", None) is None and param.param_type_name == "option":
                assert param.name == "help", f"{' '.join(path)} --{param.name} has no help"
            if param.param_type_name == "argument":
                assert getattr(param, "help", None), f"{' '.join(path)} {param.name} has no help"


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("bicc-lab ")


def test_data_list_on_a_missing_dir_is_one_line_exit_2(tmp_path):
    result = runner.invoke(app, ["data", "list", "--data-dir", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and "does not exist" in result.output
