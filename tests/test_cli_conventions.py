"""CLI habits users bring from other tools: -h, shell completion, environment variables in
--help and the README, --json for scripts, one option name per idea (old names hidden but
accepted), and Rich tables that keep every column when the output is piped."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cli_commands
from typer.testing import CliRunner

from bicc_lab.cli.main import ENVIRONMENT, app

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).with_name("bicc-lab")
runner = CliRunner()


@pytest.mark.parametrize("path", [p for p, _ in cli_commands()], ids=lambda p: " ".join(p) or "root")
def test_dash_h_is_help_everywhere(path):
    short = runner.invoke(app, [*path, "-h"])
    long = runner.invoke(app, [*path, "--help"])
    assert short.exit_code == 0, short.output
    assert short.output == long.output and "Usage:" in short.output


def test_shell_completion_is_on():
    result = runner.invoke(app, ["--help"])
    assert "--install-completion" in result.output and "--show-completion" in result.output


def test_every_environment_variable_is_listed_in_help_and_readme():
    source = "\n".join(p.read_text() for p in (ROOT / "bicc_lab").rglob("*.py"))
    used = set(re.findall(r"\bBICC_LAB_[A-Z_]+\b", source))
    assert used <= set(ENVIRONMENT), f"not in cli.main.ENVIRONMENT: {sorted(used - set(ENVIRONMENT))}"
    root_help = runner.invoke(app, ["--help"]).output
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Environment variables", 1)[1].split("\n## ", 1)[0]
    for name in ENVIRONMENT:
        assert name in root_help, name
        assert f"`{name}`" in section, f"README's Environment variables section lacks {name}"


def test_options_that_read_an_environment_variable_show_it():
    seen = {}
    for path, command in cli_commands():
        for param in command.params:
            if getattr(param, "envvar", None):
                seen[(" ".join(path), param.name)] = param.envvar
                assert param.show_envvar, f"{' '.join(path)} --{param.name} hides its env var"
                help_text = " ".join(runner.invoke(app, [*path, "--help"]).output.split())
                assert f"env var: {param.envvar}" in help_text
    # every --data-dir reads BICC_LAB_DATA_DIR
    assert {k for k, v in seen.items() if v == "BICC_LAB_DATA_DIR"} == {
        ("eval", "data_dir"), ("doctor", "data_dir"), ("data list", "data_dir"),
    }


def test_data_list_reads_the_environment_variable(data_dir):
    result = runner.invoke(app, ["data", "list"], env={"BICC_LAB_DATA_DIR": str(data_dir)})
    assert result.exit_code == 0, result.output
    assert "math500.jsonl" in result.output


def _visible_options(path: list[str]) -> set[str]:
    return set(re.findall(r"(--[a-z][a-z0-9_-]*)", runner.invoke(app, [*path, "--help"]).output))


def test_one_name_per_idea_old_names_hidden():
    assert "--max-parallel" in _visible_options(["sweep", "run"])
    tune_run = _visible_options(["tune", "run"])
    assert "--max-parallel" in tune_run and "--n-jobs" not in tune_run
    # eval spells its flags as lm-eval does; the dash spelling and old names are hidden
    evaluate = _visible_options(["eval"])
    assert {"--output_path", "--model_args", "--tasks", "--repeats", "--samples"} <= evaluate
    assert not {"--output-path", "--out", "--benchmarks", "--samples_per_problem", "--backend"} & evaluate
    assert all("-" not in name[2:] for name in evaluate), evaluate
    best = _visible_options(["tune", "best"])
    assert "--output-path" in best and "--out" not in best
    report = _visible_options(["report"])
    assert "--out-dir" in report and "--out" not in report


def test_old_and_new_names_must_not_disagree(tmp_path):
    result = runner.invoke(app, ["tune", "run", "x.yaml", "--max-parallel", "2", "--n-jobs", "3"])
    assert result.exit_code == 2 and "--n-jobs 3 disagree" in result.output


# --------------------------------------------------------------------------- --json


@pytest.fixture
def empty_store(tmp_path):
    return {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}


def test_sweep_plan_and_status_json(tmp_path, empty_store):
    common = [str(ROOT / "sweeps" / "quickstart.yaml"), "--runs-dir", str(tmp_path / "runs"), "--json"]
    plan = runner.invoke(app, ["sweep", "plan", *common], env=empty_store)
    assert plan.exit_code == 0, plan.output
    data = json.loads(plan.stdout)
    assert data["sweep"] == "quickstart" and data["n_cells"] == 16 and data["tracked"] is False
    assert data["counts"] == {"pending": 16} and len(data["cells"]) == 16
    first = data["cells"][0]
    assert first["axes"] == {"variant": "grpo", "bicc.enabled": False, "rcc.enabled": False, "seed": 0}
    assert first["state"] == "pending" and first["arm"] == "base" and len(first["cell_id"]) == 12

    status = runner.invoke(app, ["sweep", "status", *common], env=empty_store)
    assert status.exit_code == 0, status.output
    data = json.loads(status.stdout)
    assert data["steps_total"] == 16 * data["cells"][0]["max_steps"] and data["steps_done"] == 0
    assert {c["state"] for c in data["cells"]} == {"pending"} and data["cells"][0]["reward"] is None
    assert not (tmp_path / "mlflow.db").exists()  # plan/status never create a store


def _study_with_trials(tmp_path):
    """The rcc_tune study with three told trials (values 0.2, 0.5, and a pruned one)."""
    from optuna.trial import TrialState

    from bicc_lab.tune.setup import open_study, prepare

    setup = prepare(ROOT / "sweeps" / "rcc_tune.yaml", runs_dir=tmp_path / "runs", reports_dir=tmp_path / "rep")
    study, _ = open_study(setup, create=True)
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    space = {"rcc.coef": FloatDistribution(0.1, 10, log=True),
             "rcc.max_shift": CategoricalDistribution([None, 0.05, 0.2]),
             "rcc.delta": CategoricalDistribution(["sum", "mean"])}
    for coef, value, state in ((1.0, 0.2, TrialState.COMPLETE), (3.0, 0.5, TrialState.COMPLETE),
                               (0.2, None, TrialState.PRUNED)):
        study.enqueue_trial({"rcc.coef": coef, "rcc.max_shift": None, "rcc.delta": "sum"})
        trial = study.ask(space)
        study.tell(trial, value, state=state)
    return setup, study


def test_tune_status_and_best_json(tmp_path):
    setup, study = _study_with_trials(tmp_path)
    common = [str(ROOT / "sweeps" / "rcc_tune.yaml"), "--runs-dir", str(tmp_path / "runs")]
    status = runner.invoke(app, ["tune", "status", *common, "--reports-dir", str(tmp_path / "rep"), "--json",
                                 "--no-plots"])
    assert status.exit_code == 0, status.output
    data = json.loads(status.stdout)
    assert data["started"] and data["objective"] == "eval/arith/avg_at_4" and data["direction"] == "maximize"
    assert [t["state"] for t in data["trials"]] == ["COMPLETE", "COMPLETE", "PRUNED"]
    # the study keeps avg@4 as fractions (0.2, 0.5); every output shows points
    assert data["score_unit"] == "percent"
    assert [t["value"] for t in data["trials"]] == [20.0, 50.0, None]
    assert data["best"]["number"] == 1 and data["best"]["value"] == 50.0
    assert data["best"]["params"] == {"rcc.coef": 3.0, "rcc.max_shift": None, "rcc.delta": "sum"}

    best = runner.invoke(app, ["tune", "best", *common, "--json"])
    assert best.exit_code == 0, best.output
    data = json.loads(best.stdout)
    assert (data["trial"], data["value"], data["score_unit"]) == (1, 50.0, "percent")
    assert data["params"] == {"rcc.coef": 3.0, "rcc.max_shift": None, "rcc.delta": "sum"}

    # the new name writes the file, the old one still does (hidden alias)
    for flag in ("--output-path", "--out"):
        target = tmp_path / f"best{flag}.yaml"
        result = runner.invoke(app, ["tune", "best", *common, flag, str(target)])
        assert result.exit_code == 0, result.output
        assert "rcc.coef:" in target.read_text()
        assert "eval/arith/avg_at_4 = 50 (%)" in target.read_text()  # the header speaks in points


def test_tune_status_json_before_the_study_started(tmp_path):
    result = runner.invoke(app, ["tune", "status", str(ROOT / "sweeps" / "rcc_tune.yaml"), "--runs-dir",
                                 str(tmp_path / "runs"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["started"] is False


# --------------------------------------------------------------------------- piped tables


def test_piped_sweep_status_keeps_every_column(tmp_path, empty_store):
    """A pipe with COLUMNS=40 (CI logs often say 80): no column is cut or dropped."""
    env = {**_env(), **empty_store, "COLUMNS": "40"}
    out = subprocess.run(
        [str(BIN), "sweep", "status", str(ROOT / "sweeps" / "quickstart.yaml"), "--runs-dir", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    header = next(line for line in out.stdout.splitlines() if "cell" in line and "state" in line)
    for column in ("cell", "id", "state", "step", "reward", "time", "note"):
        assert re.search(rf"\b{column}\b", header), (column, header)
    assert "tiny/dr_grpo/bicc+rcc/s1" in out.stdout  # names are not folded either


def _env() -> dict[str, str]:
    import os

    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    return env
