"""Sweeps and studies through a real SLURM cluster (the one-node cluster of .ci/slurm-up).

- a 4-cell sweep with ``launch.kind: slurm``, submitted as one job array, is Ctrl-C'ed
  once submitted and told to leave its jobs running; the next ``sweep run`` re-attaches
  and it ends with 4 FINISHED MLflow child runs, each cell's log in its directory,
  ``sweep status`` showing each task's SLURM state;
- ``sweep run --detach`` submits one job per cell and returns; one cell's job is ``scancel``ed while it
  trains, another is requeued by SLURM (``scontrol requeue``: what preemption does); the
  requeued job resumes from its checkpoint into the same MLflow run by itself, and a second
  ``sweep run`` re-attaches to what is still queued and resubmits the cancelled cell: every
  cell ends FINISHED exactly once;
- ``tune run --launcher slurm`` completes a 3-trial study.

Without a cluster these tests skip, saying why; in CI (``BICC_LAB_SLURM=1``, set by
``.ci/run`` after ``.ci/slurm-up``) a missing cluster is a failure instead.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import subprocess_env

pytestmark = pytest.mark.slow


def _cluster_problem() -> str | None:
    if shutil.which("sinfo") is None:
        return "no SLURM commands on PATH (run .ci/slurm-up as root to start a one-node cluster)"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer in 15 s (is slurmctld running? see .ci/slurm-up)"
    states = out.stdout.split()
    if out.returncode != 0 or not any(s.startswith(("idle", "mix", "alloc")) for s in states):
        return f"no usable SLURM node (sinfo: {(out.stdout + out.stderr).strip()[:200]!r}; see .ci/slurm-up)"
    try:
        import submitit  # noqa: F401
    except ImportError:
        return "submitit is not installed (pip install 'bicc-lab[slurm]')"
    return None


@pytest.fixture(scope="module")
def cluster():
    problem = _cluster_problem()
    if problem is not None:
        if os.environ.get("BICC_LAB_SLURM") == "1":
            pytest.fail(f"BICC_LAB_SLURM=1 but {problem}")
        pytest.skip(problem)


def _write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def _cli(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 600):
    return subprocess.run(
        [sys.executable, "-m", "bicc_lab.cli.main", *args],
        capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout,
    )


def _cell_runs(uri: str, experiment: str) -> dict[str, list]:
    from bicc_lab.tracking.store import Tracker

    tracker = Tracker(uri)
    exp = tracker.experiment_id(experiment)
    assert exp is not None
    by_cell: dict[str, list] = {}
    for run in tracker.cell_runs(exp):
        by_cell.setdefault(run.cell_id, []).append(run)
    return by_cell


@pytest.fixture(scope="module")
def project(tmp_path_factory, untrained_tiny_dir, cluster):
    root = tmp_path_factory.mktemp("slurm-project")
    _write(
        root / "base.yaml",
        f"""
        name: t
        model: {{name: {untrained_tiny_dir}}}
        train: {{max_steps: 2, num_generations: 4, per_device_train_batch_size: 8,
                 max_completion_length: 4, logging_steps: 1, save_steps: 1}}
        eval: {{enabled: true, benchmarks: [arith_test], samples: 2, limit: 2, max_new_tokens: 4}}
        """,
    )
    # The node has 2 CPUs: 1 CPU and 2 GB per cell lets two cells run side by side.
    launch = "launch: {kind: slurm, cpus_per_task: 1, mem_gb: 2, time_min: 10}"
    _write(
        root / "four.yaml",
        f"""
        name: slurm-four
        base: base.yaml
        grid:
          seed: [0, 1]
          rcc.enabled: [false, true]
        {launch[:-1]}, array_parallelism: 2}}
        """,
    )
    _write(
        root / "stop.yaml",
        f"""
        name: slurm-stop
        base: base.yaml
        set: {{train.max_steps: 80}}  # long enough to be caught training
        grid:
          seed: [0, 1]
        {launch}
        """,
    )
    _write(
        root / "study.yaml",
        """
        name: slurm-study
        base: base.yaml
        search:
          objective: reward
          direction: maximize
          n_trials: 3
          n_jobs: 2
          sampler: {type: random, seed: 0}
          params:
            rcc.coef: {type: float, low: 0.1, high: 2.0}
        """,
    )
    yield root
    for name in ("slurm-four", "slurm-stop", "slurm-study"):  # nothing left in the queue
        subprocess.run(["scancel", f"--name={name}"], capture_output=True, timeout=30)


def test_a_four_cell_sweep_runs_as_a_slurm_job_array(project):
    env = subprocess_env(project / "cache")
    uri = f"sqlite:///{project / 'four.db'}"
    args = ["sweep", "run", "four.yaml", "--runs-dir", str(project / "runs"), "--set", f"tracking.uri={uri}"]
    plan = _cli(["sweep", "plan", *args[2:]], env, project)
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert (
        "launcher slurm: one job array of 4 tasks, at most 2 at once; "
        "per cell: 1 node(s) x 0 GPU(s), 1 CPU(s)/node, 2 GB/node"
    ) in plan.stdout

    # Ctrl-C once the array runs, and answer "no" to "cancel the submitted jobs?" ...
    sweep_dir = project / "runs" / "slurm-four"

    def array_id() -> str:
        [record, *_] = [json.loads((c / "slurm_job.json").read_text()) for c in sweep_dir.glob("*-*")
                        if (c / "slurm_job.json").is_file()]
        return record["job_id"].split("_")[0]

    def submitted() -> bool:
        if len([c for c in sweep_dir.glob("*-*") if (c / "slurm_job.json").is_file()]) < 4:
            return False
        # Hold the tasks still pending (at most 2 of 4 run at once), so that some are
        # queued when `sweep run` comes back however slow this machine is: without the
        # hold, a loaded machine let every task finish before the re-run, which then had
        # nothing to re-attach to.
        subprocess.run(["scontrol", "hold", array_id()], check=True, capture_output=True, timeout=30)
        return True

    code, out = _interrupt_and_answer(args, env, project, submitted, "n\n")
    assert code == 130, out[-4000:]
    assert "cancel the" in out and "submitted SLURM job(s)?" in out
    assert "job(s) in the SLURM queue; `sweep run` again re-attaches to them" in out
    assert "left in the SLURM queue" in out  # the summary line
    # ... the jobs ran on; the next `sweep run` re-attaches to those still queued or running,
    # and the held tasks are let go once it has said so in its first line.
    # (release not checked: scontrol exits 1 when the array's record has no held task left)
    code, first, stdout, err = _run_then_release(args, env, project, array_id(), check=False)
    assert code == 0, stdout[-4000:] + err[-4000:]
    assert "re-attached" in first, first
    assert "4/4 finished" in stdout
    runs = _cell_runs(uri, "slurm-four")
    assert len(runs) == 4
    assert all(len(r) == 1 and r[0].status == "FINISHED" for r in runs.values())
    job_ids = set()
    for cell in sweep_dir.iterdir():
        if not cell.is_dir() or cell.name == "slurm-array":
            continue
        record = json.loads((cell / "slurm_job.json").read_text())
        job_ids.add(record["job_id"])
        log = (cell / "run.log").read_text()
        assert f"[bicc-lab slurm] job {record['job_id']} node 0" in log and "finished" in log
        assert any((sweep_dir / "slurm-array" / record["job_id"]).iterdir())  # submitit's files
    assert len(job_ids) == 4 and len({j.split("_")[0] for j in job_ids}) == 1  # 4 tasks, 1 array

    status = _cli(["sweep", "status", *args[2:], "--json"], env, project)
    assert status.returncode == 0, status.stderr
    cells = json.loads(status.stdout)["cells"]
    assert sorted(c["slurm"]["state"] for c in cells) == ["COMPLETED"] * 4
    assert {c["slurm"]["job_id"] for c in cells} == job_ids


def _run_then_release(args: list[str], env: dict[str, str], cwd: Path, job_id: str, check: bool = True):
    """Run the CLI; once it has printed its first line (where `sweep run` says what it
    re-attached to), release the held SLURM job ``job_id``. Returns (exit code, first line,
    whole stdout, stderr)."""
    proc = subprocess.Popen([sys.executable, "-m", "bicc_lab.cli.main", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        first = proc.stdout.readline()
        subprocess.run(["scontrol", "release", job_id], check=check, capture_output=True, timeout=30)
        rest, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, first, first + rest, err


def _interrupt_and_answer(args: list[str], env: dict[str, str], cwd: Path, ready, answer: str):
    """Run the CLI with a terminal as stdin, Ctrl-C it once ``ready()``, type ``answer``."""
    import signal

    master, slave = os.openpty()
    # A test run started in the background of a non-interactive shell inherits SIGINT
    # ignored, and Python then installs no KeyboardInterrupt handler: restore the default,
    # as a user's terminal has it.
    proc = subprocess.Popen(
        [sys.executable, "-m", "bicc_lab.cli.main", *args],
        stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    os.close(slave)
    try:
        _wait_for(ready, 300, "the jobs to run")
        proc.send_signal(signal.SIGINT)
        os.write(master, answer.encode())  # the terminal holds it until the prompt reads it
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    return proc.returncode, out


def _wait_for(predicate, timeout: float, what: str, poll_s: float = 0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def _job_state(job_id: str) -> str:
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=30)
    return out.stdout.strip()


def _training_with_checkpoint(cell: Path) -> bool:
    from bicc_lab.launch import layout

    progress = layout.read_progress(cell)
    return progress.phase == "training" and progress.has_checkpoint


def test_cancelled_and_requeued_jobs_end_finished_exactly_once(project):
    env = subprocess_env(project / "cache")
    uri = f"sqlite:///{project / 'stop.db'}"
    common = ["stop.yaml", "--runs-dir", str(project / "runs"), "--set", f"tracking.uri={uri}"]
    detached = _cli(["sweep", "run", *common, "--detach"], env, project)
    assert detached.returncode == 0, detached.stdout[-3000:] + detached.stderr[-3000:]
    assert "2 left in the SLURM queue" in detached.stdout
    cells = sorted(p for p in (project / "runs" / "slurm-stop").iterdir() if p.is_dir())
    assert len(cells) == 2
    cancelled, requeued = cells
    jobs = {c: json.loads((c / "slurm_job.json").read_text())["job_id"] for c in cells}

    # Polled from the moment they are submitted: on idle cores a cell's training window is
    # short, and a cell that finished before the other was caught leaves nothing to cancel
    # or requeue.
    _wait_for(lambda: all(_training_with_checkpoint(c) for c in cells), 600, "both cells to train", poll_s=0.1)
    subprocess.run(["scancel", jobs[cancelled]], check=True, timeout=30)
    subprocess.run(["scontrol", "requeue", jobs[requeued]], check=True, timeout=30)
    # SLURM holds a requeued job back for 2 minutes (BeginTime); it is let go at once, but
    # held until the next `sweep run` has seen it queued: on idle cores it would otherwise
    # resume and finish first, leaving nothing to re-attach to.
    _wait_for(lambda: _job_state(jobs[requeued]) == "PENDING", 60, "the requeued job to be pending")
    subprocess.run(["scontrol", "hold", jobs[requeued]], check=True, timeout=30)
    subprocess.run(["scontrol", "update", f"JobId={jobs[requeued]}", "StartTime=now"], check=True, timeout=30)
    _wait_for(lambda: not _job_state(jobs[cancelled]), 120, "the cancelled job to leave the queue")
    # `sweep status` sees the requeued job in the queue.
    status = _cli(["sweep", "status", *common, "--json"], env, project)
    states = {c["slurm"]["job_id"]: c["slurm"]["state"] for c in json.loads(status.stdout)["cells"]}
    assert states[jobs[requeued]] == "PENDING", states

    # The requeued job keeps its id and is still queued: re-attached, not resubmitted.
    code, first, stdout, err = _run_then_release(["sweep", "run", *common], env, project, jobs[requeued])
    assert code == 0, stdout[-4000:] + err[-4000:]
    assert "1 re-attached" in first, first
    assert "2/2 finished" in stdout
    assert json.loads((requeued / "slurm_job.json").read_text())["job_id"] == jobs[requeued]
    assert json.loads((cancelled / "slurm_job.json").read_text())["job_id"] != jobs[cancelled]

    runs = _cell_runs(uri, "slurm-stop")
    assert len(runs) == 2
    for cell_runs in runs.values():
        assert len(cell_runs) == 1, "a cell was tracked twice"
        run = cell_runs[0]
        assert run.status == "FINISHED"
        assert run.tags["attempts"] == "2"  # one stopped attempt, one resumed: one run
    for cell in cells:
        assert "resuming MLflow run" in (cell / "run.log").read_text()
        resumed = json.loads((cell / "train_result.json").read_text())["resumed_from"]
        assert resumed and Path(resumed).name.startswith("checkpoint-"), resumed


def test_tune_runs_its_trials_as_slurm_jobs(project):
    env = subprocess_env(project / "cache")
    uri = f"sqlite:///{project / 'study.db'}"
    proc = _cli(
        ["tune", "run", "study.yaml", "--launcher", "slurm", "--runs-dir", str(project / "runs"),
         "--reports-dir", str(project / "reports"), "--set", f"tracking.uri={uri}"],
        env, project,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "3/3 trials finished (3 complete, 0 pruned, 0 failed in this run)" in proc.stdout
    trial_dirs = sorted((project / "runs" / "slurm-study").glob("trial-*"))
    assert len(trial_dirs) == 3
    assert all((d / "slurm_job.json").is_file() for d in trial_dirs)
    runs = _cell_runs(uri, "slurm-study")
    assert sorted(r[0].status for r in runs.values()) == ["FINISHED"] * 3
