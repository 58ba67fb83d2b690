"""`bicc-lab doctor [CONFIG] [--json]`: machine-readable, and exit 1 when a run would lack something."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bicc_lab.cli import doctor as doctor_mod
from bicc_lab.cli.main import app

runner = CliRunner()

EXPERIMENT = """\
name: t
model: {name: tiny}
eval: {benchmarks: [math500, aime24]}
"""


def _doctor(*args: str) -> tuple[int, dict]:
    result = runner.invoke(app, ["doctor", *args, "--json"])
    assert result.exit_code in (0, 1), result.output
    return result.exit_code, json.loads(result.output)


def _check(report: dict, component: str) -> dict:
    (found,) = [c for c in report["checks"] if c["component"] == component]
    return found


@pytest.fixture()
def data_dir(tmp_path):
    directory = tmp_path / "data"
    directory.mkdir()
    (directory / "math500.jsonl").write_text('{"problem": "1+1", "answer": "2"}\n')
    return directory


def test_a_missing_data_dir_exits_1_and_says_so(tmp_path, monkeypatch):
    monkeypatch.delenv("BICC_LAB_DATA_DIR", raising=False)
    code, report = _doctor("--data-dir", str(tmp_path / "nope"))
    assert code == 1 and report["ok"] is False and report["config"] is None
    check = _check(report, "data dir")
    assert check["ok"] is False and check["value"] == str(tmp_path / "nope") and "not a directory" in check["status"]
    # Every row of the table is in the JSON, with the same fields.
    assert {"python", "torch", "lm-eval", "mlflow", "vllm", "submitit"} <= {c["component"] for c in report["checks"]}
    assert set(report["checks"][0]) == {"component", "value", "status", "ok", "required"}

    table = runner.invoke(app, ["doctor", "--data-dir", str(tmp_path / "nope")])
    assert table.exit_code == 1 and "MISSING" in table.output and "1 missing: data dir" in table.output


def test_without_a_config_absent_benchmark_files_are_a_note(data_dir):
    code, report = _doctor("--data-dir", str(data_dir))
    assert code == 0 and report["ok"] is True, report
    check = _check(report, "data dir")
    assert check["ok"] and "aime24.jsonl" in check["status"] and "math500.jsonl" not in check["status"]
    # vLLM and submitit are reported, never required, when no config asks for them.
    assert not _check(report, "vllm")["required"] and not _check(report, "submitit")["required"]


def test_a_config_requires_the_files_of_its_benchmarks(tmp_path, data_dir):
    config = tmp_path / "exp.yaml"
    config.write_text(EXPERIMENT)
    code, report = _doctor(str(config), "--data-dir", str(data_dir))
    assert code == 1 and report["config"] == str(config)
    assert _check(report, "benchmark math500") == {
        "component": "benchmark math500", "value": str(data_dir / "math500.jsonl"), "status": "ok",
        "ok": True, "required": True,
    }
    aime = _check(report, "benchmark aime24")
    assert aime["ok"] is False and "aime24.jsonl" in aime["status"]
    # The same config evaluating only what is there passes (positional override, as --set).
    code, report = _doctor(str(config), "eval.benchmarks=[math500]", "--data-dir", str(data_dir))
    assert code == 0, report


def test_vllm_backend_and_slurm_launcher_require_their_packages(tmp_path, data_dir, monkeypatch):
    (tmp_path / "exp.yaml").write_text(EXPERIMENT)
    (tmp_path / "s.yaml").write_text("base: exp.yaml\ngrid: {seed: [0, 1]}\nlaunch: {kind: slurm}\n")
    installed = {"vllm": None, "submitit": None}
    real_version = doctor_mod._version
    monkeypatch.setattr(doctor_mod, "_version", lambda p: installed[p] if p in installed else real_version(p))
    args = ["eval.benchmarks=[math500]", "--data-dir", str(data_dir)]

    code, report = _doctor(str(tmp_path / "s.yaml"), *args)
    assert code == 1
    submitit = _check(report, "submitit")
    assert submitit["required"] and not submitit["ok"] and "launch.kind: slurm" in submitit["status"]
    assert not _check(report, "vllm")["required"]  # the hf backend

    code, report = _doctor(str(tmp_path / "s.yaml"), *args, "eval.backend=vllm")
    vllm = _check(report, "vllm")
    assert code == 1 and vllm["required"] and not vllm["ok"] and "eval.backend: vllm" in vllm["status"]

    sbatch = _check(report, "sbatch")
    assert sbatch["required"] and sbatch["ok"] == (shutil.which("sbatch") is not None)

    installed.update(vllm="0.18.0", submitit="1.5.4")
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")  # a login node
    code, report = _doctor(str(tmp_path / "s.yaml"), *args, "eval.backend=vllm")
    assert code == 0 and _check(report, "vllm")["value"] == "0.18.0", report


def test_a_bad_config_is_one_line_exit_2(tmp_path):
    (tmp_path / "exp.yaml").write_text(EXPERIMENT)
    result = runner.invoke(app, ["doctor", str(tmp_path / "exp.yaml"), "eval.backnd=vllm", "--json"])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and "did you mean 'eval.backend'" in result.output
    result = runner.invoke(app, ["doctor", "eval.backend=vllm"])
    assert result.exit_code == 2 and "not a config" in result.output
    assert not Path("eval.backend=vllm").exists()
