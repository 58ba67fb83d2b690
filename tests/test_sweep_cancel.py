"""`bicc-lab sweep cancel SWEEP`: stops the running cells (local workers, SLURM jobs) and
marks them KILLED, so that the next `sweep run` resumes them; `sweep run -h` says where
SLURM resources go; a cell's MLflow run leads to its files as a `train` run does."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

from conftest import subprocess_env
from typer.testing import CliRunner

from bicc_lab.cli.main import app

BIN = Path(sys.executable).parent
runner = CliRunner()

BASE = """\
name: t
model:
  name: tiny
  tiny: {layers: 2, hidden: 32, heads: 2, max_warmup_steps: 0, target_accuracy: 0.0}
train: {max_steps: 100000, num_generations: 4, per_device_train_batch_size: 8, max_completion_length: 4,
        save_steps: 100000}
eval: {enabled: false}
"""


def _files(tmp_path: Path) -> Path:
    (tmp_path / "base.yaml").write_text(BASE)
    (tmp_path / "s.yaml").write_text("base: base.yaml\ngrid: {seed: [0, 1]}\nmax_parallel: 2\n")
    return tmp_path / "s.yaml"


def _cli(args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "bicc-lab"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_cancel_stops_a_running_local_sweep_and_marks_its_cells_killed(tmp_path):
    sweep = _files(tmp_path)
    env = subprocess_env(tmp_path / "cache")
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = [str(sweep), "--runs-dir", str(tmp_path / "runs")]
    with open(tmp_path / "run.out", "w") as out:
        proc = subprocess.Popen([str(BIN / "bicc-lab"), "sweep", "run", *args], cwd=tmp_path, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        cells = tmp_path / "runs" / "s"
        deadline = time.time() + 240
        while time.time() < deadline:  # both cells train (their metrics.jsonl grows)
            if len(list(cells.glob("*/metrics.jsonl"))) == 2:
                break
            assert proc.poll() is None, (tmp_path / "run.out").read_text()[-3000:]
            time.sleep(1)
        else:
            raise AssertionError("the cells never started: " + (tmp_path / "run.out").read_text()[-3000:])
        assert (cells / "runner.pid").read_text().strip() == str(proc.pid)
        workers = [int((d / "worker.pid").read_text()) for d in cells.iterdir() if (d / "worker.pid").is_file()]

        cancel = _cli(["sweep", "cancel", *args, "--grace", "20"], tmp_path, env)
        assert cancel.returncode == 0, cancel.stdout + cancel.stderr
        assert f"stopping `sweep run` (pid {proc.pid})" in cancel.stdout
        assert "resumes the killed cells" in cancel.stdout
        assert proc.wait(timeout=30) == 130  # sweep run stopped as by Ctrl-C (128 + SIGINT)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    for pid in workers:  # no worker is left behind
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split(") ")[1][:1]
    assert not (cells / "runner.pid").exists()
    piped = (tmp_path / "run.out").read_text()
    assert "sweep: 0 done, 2 running, 0 left" in piped, piped  # the sweep line of piped output

    status = _cli(["sweep", "status", *args, "--json"], tmp_path, env)
    states = [c["state"] for c in json.loads(status.stdout)["cells"]]
    assert states == ["killed", "killed"], status.stdout
    from mlflow import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("s")
    runs = client.search_runs([experiment.experiment_id])
    children = [r for r in runs if r.data.tags.get("role") == "cell"]
    assert len(children) == 2 and {r.info.status for r in children} == {"KILLED"}
    # each cell's run leads to its checkpoints, as a `train` run does
    assert {r.data.tags["output_dir"] for r in children} == {str(d) for d in cells.iterdir() if d.is_dir()}

    again = _cli(["sweep", "cancel", *args, "--json"], tmp_path, env)
    assert again.returncode == 0 and json.loads(again.stdout) == {"runner_pid": None, "workers": {}, "jobs": {}, "marked": []}


def _fake_slurm(bin_dir: Path, queue: str) -> Path:
    """squeue answers ``queue``; scancel records its arguments (a cluster this test can see)."""
    bin_dir.mkdir()
    log = bin_dir / "scancel.log"
    for name, body in {
        "squeue": f"#!/bin/sh\nprintf '{queue}'\n",
        "scancel": f'#!/bin/sh\necho "$@" >> {log}\n',
        "id": "#!/bin/sh\necho tester\n",
    }.items():
        path = bin_dir / name
        path.write_text(body)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return log


def test_cancel_scancels_the_cells_slurm_jobs_that_are_still_queued(tmp_path, monkeypatch):
    sweep = _files(tmp_path)
    from bicc_lab.spec import load_sweep

    loaded = load_sweep(sweep)
    dirs = []
    for cell, job in zip(loaded.cells, ("41", "42"), strict=True):
        directory = tmp_path / "runs" / "s" / f"{cell.name.replace('/', '_')}-{cell.cell_id}"
        directory.mkdir(parents=True)
        (directory / "slurm_job.json").write_text(json.dumps({"job_id": job, "folder": str(tmp_path)}))
        dirs.append(directory)
    # job 41 runs, job 42 already ended (not in the queue): only 41 is cancelled
    log = _fake_slurm(tmp_path / "bin", "41|RUNNING\\n")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("USER", "tester")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    from bicc_lab.sweep import cancel as cancel_mod

    monkeypatch.setattr(cancel_mod, "_wait_dequeued", lambda ids, timeout: None)  # the fake queue never empties
    result = runner.invoke(app, ["sweep", "cancel", str(sweep), "--runs-dir", str(tmp_path / "runs"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["jobs"] == {loaded.cells[0].name: "41"}
    assert log.read_text().split() == ["41"]


def test_sweep_run_help_says_where_slurm_resources_go_and_set_reaches_them(tmp_path):
    text = " ".join(runner.invoke(app, ["sweep", "run", "-h"]).output.split())
    for said in ("--set launch.*", "launch.partition", "launch.time_min", "launch.gpus_per_node"):
        assert said in text, text
    sweep = _files(tmp_path)
    result = runner.invoke(app, ["sweep", "plan", str(sweep), "--runs-dir", str(tmp_path / "runs"), "--json",
                                 "launch.kind=slurm", "launch.partition=gpu", "--set", "launch.time_min=240"])
    assert result.exit_code == 0, result.output
    launch = json.loads(result.output)["launch"]
    assert (launch["kind"], launch["partition"], launch["time_min"]) == ("slurm", "gpu", 240)


def test_cancel_stops_a_worker_left_without_its_sweep_run_and_marks_its_run_killed(tmp_path, monkeypatch):
    """A worker whose `sweep run` is gone (no runner.pid): SIGTERM, SIGKILL after --grace, and
    its MLflow run, still RUNNING because it could not say so itself, is set KILLED."""
    sweep = _files(tmp_path)
    from bicc_lab.spec import load_sweep
    from bicc_lab.tracking.single import create_run
    from bicc_lab.tracking.store import Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    cell = load_sweep(sweep).cells[0]
    directory = tmp_path / "runs" / "s" / f"{cell.name.replace('/', '_')}-{cell.cell_id}"
    directory.mkdir(parents=True)
    tracker = Tracker(uri)
    _, run_id = create_run(tracker, "s", cell.name, "cell", {})
    tracker.set_status(run_id, "RUNNING")
    (directory / "mlflow_run_id").write_text(run_id + "\n")
    # A stand-in worker: holds the cell's lock, ignores SIGTERM (so only SIGKILL ends it),
    # and names bicc_lab.launch.worker on its command line as a real one does.
    code = (
        "import signal, sys, time\n"
        "from bicc_lab.launch.locks import CellLock\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        f"lock = CellLock({str(directory / '.lock')!r}); assert lock.acquire()\n"
        "print('ready', flush=True); time.sleep(300)\n"
    )
    worker = subprocess.Popen([sys.executable, "-c", code, "bicc_lab.launch.worker"], stdout=subprocess.PIPE, text=True)
    try:
        assert worker.stdout.readline().strip() == "ready"
        (directory / "worker.pid").write_text(f"{worker.pid}\n")
        result = runner.invoke(app, ["sweep", "cancel", str(sweep), "--runs-dir", str(tmp_path / "runs"),
                                     "--grace", "1", "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.output) == {
            "runner_pid": None, "workers": {cell.name: worker.pid}, "jobs": {}, "marked": [cell.name],
        }
        assert worker.wait(timeout=10) == -signal.SIGKILL
    finally:
        if worker.poll() is None:
            worker.kill()
    assert tracker.get(run_id).status == "KILLED"
    assert (directory / "phase").read_text().strip() == "killed"


def test_a_finished_cell_run_has_what_a_train_run_has(tmp_path):
    """output_dir (to its checkpoints and final model) and the per-problem table of its evaluation."""
    (tmp_path / "base.yaml").write_text(
        BASE.replace("max_steps: 100000", "max_steps: 1").replace(
            "eval: {enabled: false}", "eval: {benchmarks: [arith_test], samples: 1, limit: 2, max_new_tokens: 4}")
    )
    (tmp_path / "s.yaml").write_text("base: base.yaml\ngrid: {seed: [0]}\n")
    env = subprocess_env(tmp_path / "cache")
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = _cli(["sweep", "run", "s.yaml", "--runs-dir", str(tmp_path / "runs")], tmp_path, env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    from mlflow import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("s")
    [cell] = [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("role") == "cell"]
    [directory] = [d for d in (tmp_path / "runs" / "s").iterdir() if d.is_dir()]
    assert cell.info.status == "FINISHED" and cell.data.tags["output_dir"] == str(directory)
    assert (directory / "final").is_dir()
    table = json.loads(Path(client.download_artifacts(cell.info.run_id, "eval_samples.json", str(tmp_path / "dl"))).read_text())
    assert table["columns"][:3] == ["benchmark", "problem_id", "gold"] and len(table["data"]) == 2


def test_sigterm_cancels_slurm_jobs_without_asking_and_ctrl_c_asks(tmp_path):
    """`sweep cancel` SIGTERMs a `sweep run` that may sit at a terminal: a prompt there
    ("cancel the submitted SLURM jobs?") would hang it, so only Ctrl-C asks."""
    from bicc_lab.launch.base import Job
    from bicc_lab.launch.schedule import INTERRUPTED, LEFT_RUNNING, run_jobs

    class Cluster:  # a detachable launcher with one job running; the scheduler is stopped on its 2nd poll
        detachable = True

        def __init__(self, sig):
            self.running, self.sig, self.polls, self.cancelled = {"a": Job("a", tmp_path)}, sig, 0, False

        def poll(self):
            self.polls += 1
            if self.polls == 2:
                os.kill(os.getpid(), self.sig)
            return []

        def submit(self, cells):
            return []

        def cancel(self, jobs=None, grace_s=10.0):
            self.cancelled, jobs = True, list(self.running.values())
            self.running.clear()
            return [(job, 143) for job in jobs]

        def release(self):
            self.running.clear()

    class Source:
        def next_cells(self, free):
            return []

        def more(self):
            return True

        def on_submit(self, job):
            pass

        def on_exit(self, job, code, stopping):
            pass

        def on_tick(self):
            pass

    asked = []
    cluster = Cluster(signal.SIGTERM)
    result = run_jobs(cluster, Source(), max_parallel=1, poll_s=0.01, ask_cancel=lambda n: asked.append(n) or False,
                      say=lambda m: None)
    assert (result, cluster.cancelled, asked) == (INTERRUPTED, True, [])
    cluster = Cluster(signal.SIGINT)
    # Python's own Ctrl-C handler, as at a user's terminal: a pytest-xdist worker (and a
    # shell's background job) starts with SIGINT ignored, and the signal would never arrive.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        result = run_jobs(cluster, Source(), max_parallel=1, poll_s=0.01,
                          ask_cancel=lambda n: asked.append(n) or False, say=lambda m: None)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert (result, cluster.cancelled, asked) == (LEFT_RUNNING, False, [1])  # asked; "no" leaves it queued
