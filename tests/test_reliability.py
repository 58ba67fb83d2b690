"""Reliability (issue 19): bounded input, runs that train less than asked, torn checkpoints,
killed workers, finished runs that are never overwritten, and the small one-line errors.

Every test runs the user's command (the Typer app in-process, or a subprocess where a
worker or training is involved) and checks the one line it prints and its exit code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import subprocess_env
from test_sweep_cli import BASE, _write
from typer.testing import CliRunner

from bicc_lab.cli.main import app

runner = CliRunner()


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


# --------------------------------------------------------------------------- runs that train less than asked


def test_too_few_records_and_null_answers_are_refused_before_a_model_loads(project):
    rows = [{"problem": f"{i}+1=", "answer": str(i + 1)} for i in range(3)]
    (project / "three.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # 16 completions per generation batch / 4 per group = 4 prompts
    text = _one_line_exit_2(_cli("train", "base.yaml", "--set", "data.train=three.jsonl",
                                 "--set", "train.per_device_train_batch_size=16"))
    assert text == (
        "error: data.train: 3 training record(s), fewer than one generation batch of 4 prompts "
        "(train.per_device_train_batch_size 16 x steps_per_generation 1 / num_generations 4): it would train "
        "0 of 2 steps at --set data.train; add records, or lower train.per_device_train_batch_size"
    )
    text = _one_line_exit_2(_cli("train", "base.yaml", "--set", "data.num_train=1"))
    assert text.startswith("error: data.num_train: 1 training record(s) (data.num_train = 1), fewer than one")
    # null answers, anywhere in the file (past the first records), by line number
    body = [json.dumps(r) for r in rows * 3]
    body[1] = json.dumps({"problem": "x", "answer": None})
    body[7] = json.dumps({"problem": "y", "answer": [None]})
    (project / "nulls.jsonl").write_text("\n".join(body[:4]) + "\n\n" + "\n".join(body[4:]) + "\n")
    text = _one_line_exit_2(_cli("sweep", "run", "s.yaml", "--set", "data.train=nulls.jsonl"))
    assert text == (
        "error: data.train: nulls.jsonl: 'answer' is null on lines 2, 9 (every record needs an answer to be "
        "rewarded) at --set data.train (in cell tiny/grpo/base/s0)"
    )
    assert not (project / "runs").exists() and not (project / "mlflow.db").exists()


def _bicc_lab(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = subprocess_env(cwd / "cache")
    env.pop("BICC_LAB_DATA_DIR", None)
    return subprocess.run(
        [sys.executable, "-m", "bicc_lab.cli.main", *args], capture_output=True, text=True, cwd=cwd, env=env,
        timeout=timeout,
    )


@pytest.mark.slow
def test_a_run_that_trains_fewer_steps_than_asked_fails_and_is_not_finished(tmp_path, untrained_tiny_dir):
    # DAPO rows repeat each problem; training keeps one of each, so the preflight cannot count them:
    # 3 distinct prompts, and a generation batch of 4 prompts trains 0 steps.
    data = tmp_path / "data"
    data.mkdir()
    rows = [{"prompt": [{"role": "user", "content": f"{i}+1="}], "reward_model": {"ground_truth": str(i + 1)}}
            for _ in range(4) for i in range(3)]
    (data / "dapo_math.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    _write(tmp_path / "exp.yaml", f"""
        name: short
        model: {{name: {untrained_tiny_dir}}}
        data: {{train: dapo_math, data_dir: {data}}}
        train: {{max_steps: 2, num_generations: 4, per_device_train_batch_size: 16, max_completion_length: 4}}
        eval: {{enabled: false}}
        """)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = _bicc_lab(["train", "exp.yaml", "--output-dir", "out", "--tracking-uri", uri], tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: trained 0 of 2 steps: 3 training prompts, one generation batch takes 4 (TRL uses full batches "
        "only); the run is not finished"
    )
    assert not (tmp_path / "out" / "train_result.json").exists() and not (tmp_path / "out" / "final").exists()
    from bicc_lab.tracking.store import Tracker

    record = json.loads((tmp_path / "out" / "tracking.json").read_text())
    run = Tracker(uri).get(record["run_id"])
    assert run.status == "FAILED" and "trained 0 of 2 steps" in run.tags["error"]


def test_report_leaves_out_a_finished_run_that_trained_less_than_asked(project):
    tmp_path = project
    from mlflow import MlflowClient

    from bicc_lab.report.synthetic import SyntheticCell, fill_store

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    correct = {"arith": [[True, False]] * 4}
    cells = [SyntheticCell("tiny", "grpo", arm, seed, correct=correct) for arm in ("base", "bicc") for seed in (0, 1)]
    fill_store(uri, "short", cells, sweep="short")
    client = MlflowClient(uri)
    runs = {r.data.tags["cell_name"]: r for r in client.search_runs([client.get_experiment_by_name("short").experiment_id])
            if "cell_name" in r.data.tags}
    for name, run in runs.items():  # what the worker writes when it finishes: progress steps/max_steps
        client.set_tag(run.info.run_id, "progress", "0/2" if name == "tiny/grpo/bicc/s1" else "2/2")
    result = _cli("report", "short", "--tracking-uri", uri, "--format", "md", "--no-plots", "--no-log",
                  "--no-start", "--out-dir", "rep", "--resamples", "100")
    assert result.exit_code == 0, result.output
    md = (tmp_path / "rep" / "ablation.md").read_text()
    assert "1 run(s) marked FINISHED trained fewer steps than asked: left out of the tables, listed as failed" in md
    assert "## Failed runs" in md and "trained 0 of 2 steps" in md
    assert "seed 1 FAILED (the other seeds are shown)" in md


# --------------------------------------------------------------------------- finished runs, torn checkpoints


@pytest.mark.slow
def test_a_finished_train_is_never_overwritten_and_a_torn_checkpoint_is_set_aside(tmp_path, untrained_tiny_dir):
    from bicc_lab.tracking.store import Tracker

    _write(tmp_path / "exp.yaml", f"""
        name: fin
        model: {{name: {untrained_tiny_dir}}}
        train: {{max_steps: 2, num_generations: 4, per_device_train_batch_size: 8, max_completion_length: 4,
                 save_steps: 1}}
        eval: {{benchmarks: [arith_test], samples: 2, limit: 2, max_new_tokens: 4}}
        """)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "out"
    train = ["train", "exp.yaml", "--output-dir", "out", "--tracking-uri", uri]
    proc = _bicc_lab(train, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run_id = json.loads((out / "tracking.json").read_text())["run_id"]
    written = {name: (out / name).stat().st_mtime_ns for name in ("train_result.json", "eval.json")}

    # 1. a rerun of the finished train touches nothing (file, MLflow run)
    proc = _bicc_lab(train, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "already holds this finished run (trained and evaluated); nothing to do, nothing overwritten" in proc.stdout
    assert {name: (out / name).stat().st_mtime_ns for name in written} == written
    tracker = Tracker(uri)
    assert tracker.get(run_id).status == "FINISHED" and tracker.get(run_id).tags["attempts"] == "1"
    # ... and another config in the same directory is refused
    proc = _bicc_lab([*train, "--set", "seed=1"], tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == (
        "error: out holds a finished run of another config (its config.yaml differs); "
        "pass --force to replace it, or give another --output-dir"
    ), proc.stderr

    # 2. eval --run writes a new evaluation beside the old one; MLflow keeps both
    proc = _bicc_lab(["eval", "--run", "out", "--tasks", "arith_test", "--repeats", "2", "--limit", "2",
                      "--max-new-tokens", "4"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    new = sorted(out.glob("eval-*.json"))
    assert len(new) == 1 and (out / "eval.json").stat().st_mtime_ns == written["eval.json"]
    artifacts = {a.path for a in tracker.client.list_artifacts(run_id)}
    assert {"eval.json", new[0].name} <= artifacts, artifacts

    # 3. killed while checkpoint-2 was written: its weights are cut short
    for name in ("train_result.json", "eval.json", new[0].name):
        (out / name).unlink()
    weights = out / "checkpoint-2" / "model.safetensors"
    with weights.open("r+b") as fh:
        fh.truncate(weights.stat().st_size // 2)
    proc = _bicc_lab([*train, "--no-eval"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "warning: checkpoint out/checkpoint-2 cannot be resumed (model.safetensors: truncated: " in proc.stderr
    assert "; set aside as torn-checkpoint-2; trying the one before it" in proc.stderr
    assert "(resumed from out/checkpoint-1)" in proc.stdout
    assert (out / "torn-checkpoint-2" / "model.safetensors").exists()
    assert json.loads((out / "train_result.json").read_text())["steps"] == 2

    # 4. --force trains again, in a new MLflow run; the old one stays
    proc = _bicc_lab([*train, "--no-eval", "--force"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "--force: removed " in proc.stdout and not (out / "torn-checkpoint-2").exists()
    assert json.loads((out / "tracking.json").read_text())["run_id"] != run_id
    assert tracker.get(run_id).status == "FINISHED"


# --------------------------------------------------------------------------- killed workers


@pytest.mark.slow
def test_a_worker_killed_by_a_signal_is_resumed_by_a_plain_rerun_a_failed_cell_is_not(tmp_path, untrained_tiny_dir):
    import signal
    import time

    from conftest import late_bad_jsonl

    from bicc_lab.tracking.store import Tracker

    bad = late_bad_jsonl(tmp_path)
    _write(tmp_path / "base.yaml", f"""
        name: k
        model: {{name: {untrained_tiny_dir}}}
        train: {{max_steps: 40, num_generations: 4, per_device_train_batch_size: 8, max_completion_length: 8,
                 save_steps: 5}}
        eval: {{enabled: false}}
        """)
    _write(tmp_path / "k.yaml", f"""
        base: base.yaml
        grid:
          data.train: [synthetic_arithmetic, {bad}]
        """)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = [sys.executable, "-m", "bicc_lab.cli.main", "sweep", "run", "k.yaml", "--set", f"tracking.uri={uri}"]
    env = subprocess_env(tmp_path / "cache")
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    cell = None
    deadline = time.time() + 240
    while time.time() < deadline and cell is None:  # the good cell, once it has trained a step
        for metrics in (tmp_path / "runs" / "k").glob("*/metrics.jsonl"):
            if "late_bad" not in metrics.parent.name and metrics.read_text().count("\n") >= 1:
                cell = metrics.parent
        time.sleep(0.05)
    assert cell is not None, "the cell never trained a step"
    os.kill(int((cell / "worker.pid").read_text()), signal.SIGKILL)  # as the OOM killer does
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1, out
    name = json.loads((cell / "cell.json").read_text())["name"]
    assert f"KILLED {name}: worker killed by signal SIGKILL (out of memory?); not a failure: the same command resumes it" in out
    assert "1 killed (the same command resumes them)" in out and "1 failed" in out
    assert "a failed cell is rerun only with --retry-failed" in out

    again = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 1, again.stdout + again.stderr  # the failed cell stays failed
    assert "1/2 finished (1 now, 0 before), 1 failed before (rerun with --retry-failed)" in again.stdout
    tracker = Tracker(uri)
    runs = {r.tags["cell_name"]: r for r in tracker.cell_runs(tracker.experiment_id("k"))}
    assert runs[name].status == "FINISHED" and runs[name].tags["attempts"] == "2"
    assert "killed_by" not in runs[name].tags
    assert [r.status for n, r in runs.items() if n != name] == ["FAILED"]
