"""`bicc-lab sweep run` end to end on a tiny untrained model (2-24 training steps per cell).

- a failing cell (a training file whose 7th line is broken: past the preflight's first
  records) fails alone, the others finish;
- reruns skip finished cells, `--retry-failed` reuses the failed cell's MLflow run;
- the same sweep against SQLite and against a live `mlflow server` gives the same runs;
- a sweep SIGKILLed mid-way (parent and workers), rerun by two concurrent `sweep run`
  processes, ends with every cell FINISHED exactly once and no duplicate runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import late_bad_jsonl, subprocess_env

pytestmark = pytest.mark.slow



def _write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def _cli(
    args: list[str], env: dict[str, str], cwd: Path, timeout: float = 300
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bicc_lab.cli.main", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
    )


def _summary(uri: str, experiment: str) -> dict[str, dict]:
    """cell id -> what MLflow holds about its runs (status, name, params, metric keys, artifacts)."""
    from bicc_lab.tracking.store import Tracker

    tracker = Tracker(uri)
    exp = tracker.experiment_id(experiment)
    assert exp is not None
    parents = tracker.search(exp, "tags.role = 'sweep'")
    assert len(parents) == 1
    out: dict[str, dict] = {}
    for run in tracker.cell_runs(exp):
        assert run.tags["mlflow.parentRunId"] == parents[0].info.run_id
        entry = out.setdefault(run.cell_id, {"runs": 0})
        entry["runs"] += 1
        entry.update(
            run_id=run.run_id,
            status=run.status,
            mlflow_status=run.mlflow_status,
            name=run.tags["mlflow.runName"],
            params=run.params,
            metrics=sorted(run.metrics),
            artifacts=sorted(a.path for a in tracker.client.list_artifacts(run.run_id)),
            tags=run.tags,
        )
    return out


@pytest.fixture(scope="module")
def project(tmp_path_factory, untrained_tiny_dir):
    root = tmp_path_factory.mktemp("sweep-project")
    bad = late_bad_jsonl(root)
    base = f"""
        name: t
        model: {{name: {untrained_tiny_dir}}}
        train: {{max_steps: 2, num_generations: 4, per_device_train_batch_size: 8,
                 max_completion_length: 4, logging_steps: 1, save_steps: 1}}
        eval: {{enabled: true, benchmarks: [arith_test], samples: 2, limit: 2, max_new_tokens: 4}}
        """
    _write(root / "base.yaml", base)
    _write(
        root / "fail.yaml",
        f"""
        name: fail-sweep
        base: base.yaml
        grid:
          data.train: [synthetic_arithmetic, {bad}]
          seed: [0, 1]
        exclude:
          - {{data.train: {bad}, seed: 1}}
        max_parallel: 2
        """,
    )
    return root


@pytest.fixture(scope="module")
def sqlite_run(project):
    env = subprocess_env(project / "cache")
    uri = f"sqlite:///{project / 'mlflow.db'}"
    args = [
        "sweep",
        "run",
        "fail.yaml",
        "--runs-dir",
        str(project / "runs"),
        "--set",
        f"tracking.uri={uri}",
    ]
    start = time.time()
    proc = _cli(args, env, project)
    return {"proc": proc, "uri": uri, "args": args, "env": env, "seconds": time.time() - start}


def test_a_failing_cell_fails_alone_and_the_others_finish(sqlite_run, project):
    proc = sqlite_run["proc"]
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout
    assert "2/3 finished" in proc.stdout and "1 failed" in proc.stdout
    runs = _summary(sqlite_run["uri"], "fail-sweep")
    assert len(runs) == 3 and all(r["runs"] == 1 for r in runs.values())
    by_status = {}
    for r in runs.values():
        by_status.setdefault(r["status"], []).append(r)
    assert len(by_status["FINISHED"]) == 2 and len(by_status["FAILED"]) == 1
    failed = by_status["FAILED"][0]
    assert failed["mlflow_status"] == "FAILED"
    assert f"{project / 'late_bad.jsonl'}:7: not valid JSON" in failed["tags"]["error"]
    assert "error.txt" in failed["artifacts"] and "run.log" in failed["artifacts"]
    assert f"FAILED {failed['name']}: " in proc.stdout
    for r in by_status["FINISHED"]:
        assert r["mlflow_status"] == "FINISHED"
        assert r["artifacts"] == ["config.yaml", "eval.json", "eval_samples.json", "run.log", "train_result.json"]
        assert {"reward", "loss", "eval/arith/avg_at_2", "eval/arith/pass_at_2"} <= set(
            r["metrics"]
        )
        assert (
            r["params"]["train.max_steps"] == "2"
            and r["params"]["data.train"] == "synthetic_arithmetic"
        )
        tags = r["tags"]
        assert tags["progress"] == "2/2" and tags["arm"] == "base" and tags["variant"] == "grpo"
        assert tags["config_hash"].startswith(tags["cell_id"]) and tags["bicc_lab_version"]
        assert tags["score_unit"] == "percent"  # a cell's eval scores are logged in points
    # per-step metrics were logged at their steps
    from bicc_lab.tracking.store import Tracker

    client = Tracker(sqlite_run["uri"]).client
    history = client.get_metric_history(by_status["FINISHED"][0]["run_id"], "reward")
    assert sorted(m.step for m in history) == [1, 2]

    status = _cli(
        ["sweep", "status", "fail.yaml", *sqlite_run["args"][3:]], sqlite_run["env"], project
    )
    assert status.returncode == 0, status.stderr
    assert "2 finished, 1 failed" in status.stdout and "arith avg@2 (%)" in status.stdout


def test_rerun_skips_finished_cells_and_retries_failed_ones_only_when_asked(sqlite_run, project):
    before = _summary(sqlite_run["uri"], "fail-sweep")
    proc = _cli(sqlite_run["args"], sqlite_run["env"], project)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "0 to run" in proc.stdout and "--retry-failed" in proc.stdout
    assert _summary(sqlite_run["uri"], "fail-sweep").keys() == before.keys()

    proc = _cli([*sqlite_run["args"], "--retry-failed"], sqlite_run["env"], project)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "1 to run" in proc.stdout
    after = _summary(sqlite_run["uri"], "fail-sweep")
    for cell_id, entry in after.items():
        assert entry["runs"] == 1 and entry["run_id"] == before[cell_id]["run_id"]
        expected = "2" if entry["status"] == "FAILED" else "1"
        assert entry["tags"]["attempts"] == expected


def test_the_same_sweep_against_sqlite_and_a_live_mlflow_server(
    sqlite_run, project, mlflow_server, tmp_path
):
    args = [
        "sweep",
        "run",
        "fail.yaml",
        "--runs-dir",
        str(tmp_path / "runs"),
        "--set",
        f"tracking.uri={mlflow_server}",
    ]
    proc = _cli(args, sqlite_run["env"], project)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "View run" not in proc.stdout
    local = _summary(sqlite_run["uri"], "fail-sweep")
    remote = _summary(mlflow_server, "fail-sweep")
    assert remote.keys() == local.keys()
    for cell_id in local:
        a, b = local[cell_id], remote[cell_id]
        for key in ("runs", "status", "mlflow_status", "name", "params", "metrics", "artifacts"):
            assert a[key] == b[key], (cell_id, key)
        for tag in (
            "cell_id",
            "config_hash",
            "cell_name",
            "sweep",
            "arm",
            "variant",
            "model",
            "seed",
            "axes",
        ):
            assert a["tags"][tag] == b["tags"][tag], (cell_id, tag)
    plan = _cli(["sweep", "plan", *args[2:]], sqlite_run["env"], project)
    assert plan.returncode == 0 and "2 finished, 1 failed" in plan.stdout


# --------------------------------------------------------------------------- crash + resume


def _alive_worker(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"bicc_lab.launch.worker" in cmdline


def test_sigkill_mid_sweep_then_rerun_finishes_every_cell_exactly_once(project, tmp_path):
    from bicc_lab.launch import layout

    _write(
        tmp_path / "kill.yaml",
        f"""
        name: kill-sweep
        base: {project / "base.yaml"}
        set:
          train: {{max_steps: 24, save_steps: 3}}
          eval: {{enabled: false}}
        grid:
          seed: [0, 1]
        max_parallel: 1
        """,
    )
    env = subprocess_env(project / "cache")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runs_dir = tmp_path / "runs"
    args = [
        "sweep",
        "run",
        "kill.yaml",
        "--runs-dir",
        str(runs_dir),
        "--set",
        f"tracking.uri={uri}",
    ]
    with open(tmp_path / "first.log", "wb") as out:
        parent = subprocess.Popen(
            [sys.executable, "-m", "bicc_lab.cli.main", *args],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    sweep_dir = runs_dir / "kill-sweep"
    victim = None
    deadline = time.time() + 240
    try:
        while victim is None:
            assert parent.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.time() < deadline, "no cell reached a checkpoint in time"
            dirs = [d for d in sweep_dir.glob("*-*") if d.is_dir()] if sweep_dir.is_dir() else []
            done = [
                d for d in dirs if (layout.read_text(d / layout.PHASE_FILE) or "") == "finished"
            ]
            mid = [  # a complete checkpoint (the Trainer writes trainer_state.json last)
                d
                for d in dirs
                if any(d.glob("checkpoint-*/trainer_state.json"))
                and not (d / layout.TRAIN_RESULT).exists()
            ]
            if done and mid:
                victim = mid[0]
            else:
                time.sleep(0.05)
        # A crash of the whole machine: nothing gets to clean up.
        os.kill(parent.pid, signal.SIGSTOP)
        for d in dirs:
            pid = int(layout.read_text(d / layout.PID_FILE) or 0)
            if pid and _alive_worker(pid):
                os.kill(pid, signal.SIGKILL)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=30)
    finally:
        if parent.poll() is None:
            parent.kill()

    victim_run = layout.read_text(victim / layout.RUN_ID_FILE)
    before = _summary(uri, "kill-sweep")
    assert sum(r["status"] == "FINISHED" for r in before.values()) >= 1
    stuck = [r for r in before.values() if r["run_id"] == victim_run]
    assert stuck and stuck[0]["status"] == "RUNNING"  # left behind by the crash
    plan = _cli(["sweep", "plan", *args[2:]], env, tmp_path)
    assert plan.returncode == 0 and "interrupted" in plan.stdout, plan.stdout

    # Two `sweep run` processes at once: they must share the work, never run a cell twice.
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "bicc_lab.cli.main", *args],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for p, text in zip(procs, outputs, strict=True):
        assert p.returncode == 0, text

    after = _summary(uri, "kill-sweep")
    assert len(after) == 2
    for cell_id, entry in after.items():
        assert entry["runs"] == 1, f"duplicate runs for {cell_id}"
        assert entry["status"] == "FINISHED" and entry["mlflow_status"] == "FINISHED"
        assert entry["tags"]["progress"] == "24/24"
    resumed = next(e for e in after.values() if e["run_id"] == victim_run)
    assert resumed["tags"]["attempts"] == "2"
    result = json.loads((victim / layout.TRAIN_RESULT).read_text())
    assert result["steps"] == 24 and "checkpoint-" in (result["resumed_from"] or "")
    for d in sweep_dir.glob("*-*"):
        steps = [
            json.loads(line)["step"] for line in (d / layout.METRICS_FILE).read_text().splitlines()
        ]
        assert steps == list(range(1, 25)), d.name  # no step lost or counted twice
        log = (d / layout.LOG_FILE).read_text()
        assert log.count("new MLflow run") == 1, d.name
        assert log.count("resuming MLflow run") == (1 if d == victim else 0), d.name
        # ... and MLflow holds each step once too, the killed cell's included
        from bicc_lab.tracking.store import Tracker

        counts = Tracker(uri, create=False).metric_counts(layout.read_text(d / layout.RUN_ID_FILE))
        assert counts["reward"] == {step: 1 for step in range(1, 25)}, (d.name, counts["reward"])
