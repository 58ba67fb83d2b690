"""Resume keeps the MLflow run exact: each logged step once, no gaps, whatever the kill point.

Fast: the metric batcher's hold-back (server stores log a step only once a checkpoint covers
it), and the deletion of re-trained steps with the repair of MLflow's latest values.

End to end (slow): one cell's worker (a real ``python -m bicc_lab.launch.worker``) is
SIGKILLed by its own hook (``tests/kill_hook.py``) at several points in turn, with a failed
attempt first; each next attempt resumes it. After each attempt no (metric, step) pair is in
the run twice, and at the end every training step 1..12 is there exactly once, with the
summary and evaluation metrics once, and no tag or file of the failed attempt.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import subprocess_env

TESTS = Path(__file__).resolve().parent


def _write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


# --------------------------------------------------------------------------- fast


def test_batcher_holds_steps_after_the_checkpoint_until_released():
    from bicc_lab.tracking.store import MetricBatcher

    logged: list[tuple[str, int]] = []
    batcher = MetricBatcher(
        lambda ms: logged.extend((m.key, m.step) for m in ms), every_steps=2, hold_after=3
    )
    for step in range(1, 7):
        batcher.add(step, {"reward": 0.5})
    # steps 1-3 are covered by the checkpoint the run would resume from: logged as usual
    assert logged == [("reward", 1), ("reward", 2), ("reward", 3)]
    assert batcher.held == 3
    batcher.release(5)  # checkpoint-5 saved
    assert [s for _, s in logged] == [1, 2, 3, 4, 5] and batcher.held == 1
    batcher.add(7, {"reward": 1.0})
    assert batcher.held == 2
    batcher.flush()  # a kill/failure flush logs nothing that would be trained again
    assert [s for _, s in logged] == [1, 2, 3, 4, 5]
    batcher.release_all()  # training ended
    assert [s for _, s in logged] == [1, 2, 3, 4, 5, 6, 7] and batcher.held == 0


def test_batcher_without_hold_logs_every_step():
    from bicc_lab.tracking.store import MetricBatcher

    logged: list[int] = []
    batcher = MetricBatcher(lambda ms: logged.extend(m.step for m in ms), every_steps=3)
    for step in range(1, 5):
        batcher.add(step, {"loss": 1.0})
    assert logged == [1, 2, 3]
    batcher.release(10)  # no hold: nothing changes
    assert logged == [1, 2, 3]
    batcher.flush()
    assert logged == [1, 2, 3, 4]


@pytest.fixture(scope="module")
def tracker(tmp_path_factory):
    """One SQLite store for the fast tests (building its schema takes seconds)."""
    from bicc_lab.tracking.store import Tracker

    return Tracker(f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}")


def test_drop_metric_steps_after_fixes_history_and_latest_value(tracker):
    from mlflow.entities import Metric

    exp = tracker.ensure_experiment("x")
    run_id = tracker.create_cell_run(exp, None, "c", {})
    other = tracker.create_cell_run(exp, None, "d", {})
    tracker.log_metrics(
        run_id,
        [Metric("reward", float(s), 1000 + s, s) for s in range(1, 6)]
        + [Metric("loss", 10.0 * s, 1000 + s, s) for s in (2, 4)]
        + [Metric("late", 7.0, 2000, 5)],
    )
    tracker.log_metrics(other, [Metric("reward", 9.0, 1000, 5)])
    assert tracker.can_rewrite_metrics
    # steps 4, 5 of reward, 4 of loss, 5 of late: 4 entries
    assert tracker.drop_metric_steps_after(run_id, 3) == 4
    assert tracker.metric_steps(run_id) == {"reward": {1, 2, 3}, "loss": {2}}
    latest = tracker.client.get_run(run_id).data.metrics
    assert latest == {"reward": 3.0, "loss": 20.0}  # "late" had no step left at all
    assert tracker.client.get_run(other).data.metrics == {"reward": 9.0}  # untouched
    tracker.log_metrics(run_id, [Metric("reward", 4.5, 3000, 4)])  # the step trained again
    assert tracker.metric_counts(run_id)["reward"] == {1: 1, 2: 1, 3: 1, 4: 1}
    assert tracker.client.get_run(run_id).data.metrics["reward"] == 4.5


def test_delete_tags_deletes_only_present_ones(tracker):
    exp = tracker.ensure_experiment("x")
    run_id = tracker.create_cell_run(exp, None, "c", {"error": "boom", "keep": "1"})
    assert tracker.delete_tags(run_id, ["error", "stop_reason"]) == ["error"]
    tags = tracker.client.get_run(run_id).data.tags
    assert "error" not in tags and tags["keep"] == "1"


def test_a_heartbeat_after_finish_does_not_write_the_logging_phase_back(tmp_path):
    """The heartbeat thread writes the current phase; one that fires between `finished`'s
    tags and the thread's stop must write "finished", not the "logging" before it (a CI
    run once read phase=logging on a FINISHED run)."""
    from bicc_lab.launch.single import TrackedTrain
    from bicc_lab.spec.load import load_experiment

    root = Path(__file__).resolve().parents[1]
    config = load_experiment(root / "experiments" / "tiny.yaml", ["train.max_steps=2"])
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("name: x\n")
    tracked = TrackedTrain(config, out, f"sqlite:///{tmp_path / 'mlflow.db'}")
    with tracked:
        (out / "train_result.json").write_text("{}\n")  # the artifact `finished` logs
        tracked.finished(2)
        tracked._beat()  # the heartbeat thread, firing late
    tags = tracked.tracker.client.get_run(tracked.run_id).data.tags
    assert tags["phase"] == "finished" and tags["progress"] == "2/2"


# --------------------------------------------------------------------------- end to end

PLAN = ["raise:2", "log:7", "log:11", "train_end", "stop_reason", ""]
"""Attempt 1 fails at step 2 (steps 1-2 flushed, no checkpoint yet). Then, with checkpoints
every 3 steps and a flush every 5 logged steps (or 10 s): attempt 2 dies at step 7 (step 6
likely unflushed: the next resumes from checkpoint-6 and replays it); attempt 3 dies at step
11 (10-11 likely flushed: the next resumes from checkpoint-9 and drops them); attempt 4 dies
at the end of training (12 likely unflushed: replayed, nothing trained); attempt 5 dies after
logging the summary (nothing logged twice); attempt 6 evaluates and finishes."""


def _worker(cell_dir: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bicc_lab.launch.worker", str(cell_dir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def _attempts(tmp_path: Path, model: Path, uri: str, plan: list[str], after_each=None):
    """One cell run by one worker per point of ``plan`` (see ``tests/kill_hook.py``). After
    each attempt no (metric, step) pair may be in the MLflow run twice. Returns the tracker,
    the run id, the cell directory and the workers' output."""
    from bicc_lab.launch import layout
    from bicc_lab.spec import load_sweep
    from bicc_lab.sweep.context import SweepContext
    from bicc_lab.tracking.store import Tracker

    _write(
        tmp_path / "base.yaml",
        f"""
        name: t
        model: {{name: {model}}}
        train: {{max_steps: 12, num_generations: 4, per_device_train_batch_size: 8,
                 max_completion_length: 4, logging_steps: 1, save_steps: 3}}
        eval: {{enabled: true, benchmarks: [arith_test], samples: 2, limit: 2, max_new_tokens: 4}}
        """,
    )
    _write(tmp_path / "s.yaml", "name: resume\nbase: base.yaml\n")
    ctx = SweepContext.of(load_sweep(tmp_path / "s.yaml", [f"tracking.uri={uri}"]), tmp_path / "runs")
    cell = ctx.sweep.cells[0]
    tracker = Tracker(uri)
    exp = tracker.ensure_experiment(ctx.experiment)
    parent = tracker.ensure_parent(exp, ctx.sweep.name, {})
    cell_dir = layout.cell_dir(ctx.runs_dir, ctx.sweep.name, cell.name, cell.cell_id)
    cell_dir.mkdir(parents=True)
    spec = {  # what `sweep run` writes (the keys the worker reads), plus the hook
        "sweep": ctx.sweep.name,
        "name": cell.name,
        "cell_id": cell.cell_id,
        "config_hash": cell.config_hash,
        "train_id": cell.train_id,
        "axes": cell.axes,
        "config": cell.config.model_dump(mode="json"),
        "tracking_uri": uri,
        "experiment_id": exp,
        "parent_run_id": parent,
        "git_commit": "",
        "hook": {"factory": "kill_hook:factory"},
    }
    (cell_dir / layout.CELL_SPEC).write_text(json.dumps(spec, default=str))
    (cell_dir / "kill_plan").write_text("".join(p + "\n" for p in plan))

    env = subprocess_env(tmp_path / "cache")
    env["PYTHONPATH"] = str(TESTS) + ":" + env.get("PYTHONPATH", "")
    log = ""  # the workers' output (`sweep run` would write it to run.log)
    run_id = ""
    for attempt, point in enumerate(plan, start=1):
        start = time.time()
        proc = _worker(cell_dir, env)
        log += proc.stdout + proc.stderr
        print(f"attempt {attempt} ({point or 'to the end'}): exit {proc.returncode} in {time.time() - start:.0f}s")
        expected = 1 if point.startswith("raise") else (-9 if point else 0)
        assert proc.returncode == expected, (attempt, point, proc.stdout[-5000:], proc.stderr[-5000:])
        run_id = layout.read_text(cell_dir / layout.RUN_ID_FILE) or ""
        assert run_id, proc.stdout + proc.stderr
        counts = tracker.metric_counts(run_id)
        twice = {k: [s for s, n in c.items() if n > 1] for k, c in counts.items()}
        assert not any(twice.values()), (attempt, point, twice, proc.stdout[-3000:])
        if after_each is not None:
            after_each(attempt, point, tracker, run_id, counts)
    run = tracker.get(run_id)
    assert run.status == "FINISHED" and run.tags["attempts"] == str(len(plan))
    assert len(tracker.cell_runs(exp)) == 1
    return tracker, run_id, cell_dir, log


def _assert_exact(tracker, run_id: str, cell_dir: Path) -> None:
    """Every training step 1..12 once, the summary and the evaluation once, at step 12, and
    MLflow's values are those of the attempt that trained each step last (metrics.jsonl)."""
    from bicc_lab.launch import layout

    counts = tracker.metric_counts(run_id)
    jsonl = [json.loads(line) for line in (cell_dir / layout.METRICS_FILE).read_text().splitlines()]
    assert [r["step"] for r in jsonl] == list(range(1, 13))
    for key in ("reward", "loss", "step_time"):
        assert counts[key] == {s: 1 for s in range(1, 13)}, (key, counts[key])
    for key in ("train/wall_time_s", "eval/arith/avg_at_2", "eval/arith/pass_at_2"):
        assert counts[key] == {12: 1}, (key, counts[key])
    history = {m.step: m.value for m in tracker.client.get_metric_history(run_id, "step_time")}
    assert history == {r["step"]: r["step_time"] for r in jsonl}


@pytest.mark.slow
def test_sigkill_at_several_points_leaves_each_step_once_in_mlflow(tmp_path, untrained_tiny_dir):
    from bicc_lab.launch import layout

    def after_each(attempt, point, tracker, run_id, counts):
        if point.startswith("raise"):
            run = tracker.get(run_id)
            assert run.status == "FAILED" and "planned failure" in run.tags["error"]
            cell_dir = next((tmp_path / "runs" / "resume").glob("*-*"))
            assert (cell_dir / layout.ERROR_FILE).is_file()

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker, run_id, cell_dir, log = _attempts(tmp_path, untrained_tiny_dir, uri, PLAN, after_each)
    run = tracker.get(run_id)
    # nothing of the failed first attempt is left
    assert "error" not in run.tags and not (cell_dir / layout.ERROR_FILE).exists()
    artifacts = {a.path for a in tracker.client.list_artifacts(run_id)}
    assert "error.txt" not in artifacts and "eval.json" in artifacts
    _assert_exact(tracker, run_id, cell_dir)

    assert "dropped error, error.txt of the earlier attempt" in log
    # attempt 1 flushed steps 1-2 when it failed, before any checkpoint: attempt 2 dropped them
    assert "metric entries after step 0 (trained again from there)" in log
    # which unflushed steps each kill leaves depends on the 10 s flush timer too; at least the
    # last steps before the end-of-training kill (attempt 4) were replayed by attempt 5
    assert "replayed " in log


@pytest.mark.slow
def test_a_server_store_gets_a_step_only_once_a_checkpoint_covers_it(
    tmp_path, untrained_tiny_dir, mlflow_server
):
    """A server cannot delete metrics: killed at step 8, its run holds steps 1-6 (checkpoint-6),
    not 7-8, which the next attempt trains again and logs once."""

    def after_each(attempt, point, tracker, run_id, counts):
        if attempt == 1:
            assert counts["reward"] == {s: 1 for s in range(1, 7)}, counts["reward"]

    from bicc_lab.tracking.store import Tracker

    assert not Tracker(mlflow_server).can_rewrite_metrics
    tracker, run_id, cell_dir, log = _attempts(
        tmp_path, untrained_tiny_dir, mlflow_server, ["log:8", ""], after_each
    )
    _assert_exact(tracker, run_id, cell_dir)
    assert "stay in MLflow" not in log and "dropped " not in log

