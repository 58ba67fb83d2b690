"""Tracking: metric names, params, URIs, the MLflow wrapper on SQLite, locks and cell states."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bicc_lab.launch import layout
from bicc_lab.launch.locks import CellLock, is_locked
from bicc_lab.tracking.naming import (
    default_tracking_uri,
    eval_metric_key,
    flatten,
    metric_key,
    normalize_uri,
    project_root,
    resolve_tracking_uri,
    sqlite_path,
)

# --------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    "name, expected",
    [
        ("reward", "reward"),
        ("rewards/accuracy_reward/mean", "rewards/accuracy_reward/mean"),
        ("eval/math500/avg@32", "eval/math500/avg_at_32"),
        ("eval//x@1", "eval/x_at_1"),
        ("../up", "up"),
        ("a/./b", "a/b"),
        ("weird{name}%", "weird_name__"),
        ("clip_ratio/low_mean", "clip_ratio/low_mean"),
    ],
)
def test_metric_key_is_valid_for_mlflow(name, expected):
    from mlflow.utils.validation import _validate_metric_name

    assert metric_key(name) == expected
    _validate_metric_name(metric_key(name))  # does not raise


def test_eval_metric_key():
    assert eval_metric_key("arith", "pass@4") == "eval/arith/pass_at_4"
    assert eval_metric_key("aime24", "n") == "eval/aime24/n"


def test_flatten_spells_values_like_yaml():
    flat = flatten(
        {"a": {"b": 1, "c": {"d": True}, "e": None, "f": [1, 2], "g": {}}, "h": 0.5, "i": "x"}
    )
    assert flat == {
        "a.b": "1",
        "a.c.d": "true",
        "a.e": "null",
        "a.f": "[1,2]",
        "a.g": "{}",
        "h": "0.5",
        "i": "x",
    }


def test_flatten_of_a_resolved_config_has_every_key():
    from bicc_lab.spec import load_experiment

    config = load_experiment(Path(__file__).resolve().parents[1] / "experiments" / "tiny.yaml")
    flat = flatten(config.model_dump(mode="json"))
    assert flat["train.max_steps"] == str(config.train.max_steps)
    assert flat["bicc.enabled"] == "false"
    assert flat["eval.benchmarks"] == '["arith_test"]'
    assert all(len(v) <= 6000 for v in flat.values())


# --------------------------------------------------------------------------- URIs


def test_default_uri_is_sqlite_at_the_repository_root(tmp_path, monkeypatch):
    (tmp_path / ".git").mkdir()
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    monkeypatch.chdir(sub)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert project_root() == tmp_path.resolve()
    assert default_tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert resolve_tracking_uri(None) == default_tracking_uri()


def test_uri_precedence_and_relative_sqlite(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://example.invalid:5000")
    assert resolve_tracking_uri(None) == "http://example.invalid:5000"
    assert resolve_tracking_uri("sqlite:///x/m.db") == f"sqlite:///{tmp_path.resolve()}/x/m.db"
    assert normalize_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"
    assert sqlite_path("sqlite:////abs/m.db") == Path("/abs/m.db")
    assert sqlite_path("http://h:1") is None


# --------------------------------------------------------------------------- MLflow on SQLite


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("mlflow-store")


@pytest.fixture(scope="module")
def tracker(store_dir):
    """One SQLite store for the module (creating one costs seconds); tests use their own experiments."""
    from bicc_lab.tracking.store import Tracker

    return Tracker(f"sqlite:///{store_dir / 'mlflow.db'}")


def test_tracker_experiment_parent_and_cell_runs(tracker, store_dir):
    from bicc_lab.tracking.naming import Tag

    exp = tracker.ensure_experiment("s")
    assert tracker.ensure_experiment("s") == exp
    assert tracker.experiment_id("missing") is None
    parent = tracker.ensure_parent(exp, "s", {Tag.N_CELLS: "2"})
    assert tracker.ensure_parent(exp, "s", {Tag.N_CELLS: "2"}) == parent

    a = tracker.create_cell_run(exp, parent, "tiny/grpo/base/s0", {Tag.CONFIG_HASH: "a" * 64})
    b = tracker.create_cell_run(exp, parent, "tiny/grpo/base/s1", {Tag.CONFIG_HASH: "b" * 64})
    tracker.log_params(a, {f"p{i}": str(i) for i in range(250)})  # > 100: batched
    tracker.log_params(a, {"p1": "1"})  # same value again: fine
    tracker.set_status(a, "RUNNING")
    tracker.set_status(a, "FINISHED")
    tracker.set_status(b, "FAILED")

    runs = tracker.cell_runs(exp)
    assert {r.run_id for r in runs} == {a, b}
    only_a = tracker.cell_runs(exp, "a" * 64)
    assert [r.run_id for r in only_a] == [a]
    ra = only_a[0]
    assert ra.status == "FINISHED" and ra.mlflow_status == "FINISHED"
    assert ra.tags[Tag.PARENT_RUN_ID] == parent
    assert len(ra.params) == 250
    assert tracker.get(b).status == "FAILED"
    # artifacts land next to the database, not in the cwd
    location = tracker.client.get_experiment(exp).artifact_location
    assert location.startswith((store_dir / "mlartifacts").as_uri())


def test_a_deleted_experiment_is_restored_only_by_writers(tracker):
    exp = tracker.ensure_experiment("deleted-one")
    tracker.client.delete_experiment(exp)
    assert tracker.experiment_id("deleted-one", restore=False) is None  # `sweep status`
    assert tracker.client.get_experiment(exp).lifecycle_stage == "deleted"
    assert tracker.experiment_id("deleted-one") == exp  # `sweep run`
    assert tracker.client.get_experiment(exp).lifecycle_stage == "active"


def test_metric_batcher_logs_every_n_steps(tracker):
    exp = tracker.ensure_experiment("m")
    run = tracker.create_cell_run(exp, None, "c", {})
    flushed = []

    def log(metrics):
        flushed.append(len(metrics))
        tracker.log_metrics(run, metrics)

    from bicc_lab.tracking.store import MetricBatcher

    batcher = MetricBatcher(log, every_steps=3, every_s=1e9)
    for step in range(1, 8):
        batcher.add(step, {"reward": step / 10, "eval/x@2": 1.0})
    assert flushed == [6, 6]  # two flushes of 3 steps x 2 metrics
    batcher.flush()
    assert flushed == [6, 6, 2]
    history = tracker.client.get_metric_history(run, "reward")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [
        (s, s / 10) for s in range(1, 8)
    ]
    assert tracker.client.get_metric_history(run, "eval/x_at_2")


def test_heartbeat_freshness(tracker, monkeypatch):
    from bicc_lab.tracking.naming import Tag

    exp = tracker.ensure_experiment("h")
    run = tracker.create_cell_run(exp, None, "c", {Tag.CONFIG_HASH: "h" * 64})
    tracker.set_status(run, "RUNNING")
    tracker.heartbeat(run)
    assert tracker.get(run).is_live()
    tracker.set_tags(run, {Tag.HEARTBEAT: f"{time.time() - 120:.3f}"})
    assert not tracker.get(run).is_live()  # default threshold 60 s
    monkeypatch.setenv("BICC_LAB_STALE_AFTER_S", "600")
    assert tracker.get(run).is_live()


# --------------------------------------------------------------------------- locks


def test_cell_lock_excludes_and_dies_with_its_process(tmp_path):
    path = tmp_path / "cell" / ".lock"
    first = CellLock(path)
    assert first.acquire()
    assert not CellLock(path).acquire()
    assert is_locked(path)
    first.release()
    assert not is_locked(path)

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from bicc_lab.launch.locks import CellLock;"
            f"assert CellLock({str(path)!r}).acquire(); print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert is_locked(path)
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=10)
        assert not is_locked(path)  # the kernel dropped it
        assert CellLock(path).acquire()
    finally:
        if holder.poll() is None:
            holder.kill()


# --------------------------------------------------------------------------- cell states


def _run(run_id, status, *, heartbeat=None, config_hash="h" * 64, error=""):
    from bicc_lab.tracking.store import CellRun

    tags = {"status": status}
    if error:
        tags["error"] = error
    return CellRun(
        run_id=run_id,
        config_hash=config_hash,
        cell_id=config_hash[:12],
        status=status,
        mlflow_status=status,
        heartbeat=heartbeat,
        start_time=time.time(),
        end_time=None,
        tags=tags,
    )


@pytest.fixture()
def one_cell(tmp_path):
    from bicc_lab.spec import load_experiment
    from bicc_lab.spec.grid import Cell

    config = load_experiment(Path(__file__).resolve().parents[1] / "experiments" / "tiny.yaml")
    cell = Cell(
        config=config, axes={}, name="tiny/grpo/base/s0", cell_id="h" * 12, config_hash="h" * 64
    )
    directory = tmp_path / "cell"
    directory.mkdir()
    return cell, directory


def test_cell_states(one_cell):
    from bicc_lab.sweep import state as st

    cell, d = one_cell
    now = time.time()
    assert st.classify(cell, d, []).state == st.PENDING
    (d / "checkpoint-5").mkdir()
    assert st.classify(cell, d, []).state == st.INTERRUPTED
    assert st.classify(cell, d, [_run("r1", "FINISHED"), _run("r0", "FAILED")]).state == st.FINISHED
    failed = st.classify(cell, d, [_run("r1", "FAILED", error="Traceback\nValueError: boom")])
    assert failed.state == st.FAILED and failed.note == "ValueError: boom"
    assert st.classify(cell, d, [_run("r1", "KILLED")]).state == st.KILLED

    # RUNNING with a fresh heartbeat, recorded here, lock free: its worker died -> interrupted
    layout.write_atomic(d / layout.RUN_ID_FILE, "r1\n")
    assert st.classify(cell, d, [_run("r1", "RUNNING", heartbeat=now)]).state == st.INTERRUPTED
    # ... not recorded here and fresh: another machine runs it
    assert st.classify(cell, d, [_run("r2", "RUNNING", heartbeat=now)]).state == st.ELSEWHERE
    # ... stale: interrupted
    assert (
        st.classify(cell, d, [_run("r2", "RUNNING", heartbeat=now - 3600)]).state == st.INTERRUPTED
    )
    # a worker holds the lock: running
    lock = CellLock(d / ".lock")
    assert lock.acquire()
    try:
        assert st.classify(cell, d, [_run("r1", "RUNNING", heartbeat=now)]).state == st.RUNNING
    finally:
        lock.release()
    # two runs of one config are reported
    two = st.classify(cell, d, [_run("r1", "FINISHED"), _run("r2", "FINISHED")])
    assert two.state == st.FINISHED and two.duplicates == 1 and two.run.run_id == "r1"


def test_read_progress(one_cell):
    cell, d = one_cell
    (d / layout.METRICS_FILE).write_text(
        '{"step": 1, "reward": 0.25}\n{"step": 2, "reward": 0.5, "step_time": 0.1}\n{"ste'
    )
    layout.write_atomic(d / layout.PHASE_FILE, "training\n")
    progress = layout.read_progress(d)
    assert (progress.step, progress.reward, progress.step_time, progress.phase) == (
        2,
        0.5,
        0.1,
        "training",
    )
    assert not progress.trained and not progress.has_checkpoint
