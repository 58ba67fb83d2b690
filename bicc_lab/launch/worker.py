"""Run ONE cell of a sweep: train -> evaluate -> log to MLflow. One process per cell.

    python -m bicc_lab.launch.worker runs/<sweep>/<cell dir> [--parent-pid PID]

The cell directory holds ``cell.json`` (written by ``bicc-lab sweep run``: the resolved
config, its hash, the tracking URI, experiment and parent run ids). The worker

1. takes the cell's flock (``.lock``) or exits 75 at once: no two processes ever run
   the same cell;
2. asks MLflow whether a child run with this config hash already FINISHED (exit 0);
   otherwise reuses the run id in ``mlflow_run_id`` (or the newest unfinished run of
   this hash) so that a resumed cell never makes a second run; exits 76 when the only
   unfinished run is alive elsewhere (fresh heartbeat, another runs directory);
3. trains with ``train_run`` (resuming from the newest checkpoint), logging metrics per
   step in batches, refreshing a heartbeat tag every few seconds;

   Resume keeps the MLflow run exact (each logged step once, no gaps), whatever the kill
   point: the steps after the checkpoint that training restarts from are deleted from the
   run (they are trained again; SQL stores), and ``metrics.jsonl`` is replayed for the
   steps up to it that never reached MLflow. A server store cannot delete metrics, so
   there a step is logged only once a checkpoint covers it (or training ended). A retried
   attempt first drops the ``error`` (and ``stop_reason``) tag and ``error.txt`` of the
   failed one;
4. evaluates the final model (``eval.enabled``), logs ``eval/<bench>/<metric>``;
5. logs the artifacts and writes ``status=FINISHED`` last.

A Python exception marks the run FAILED (tag ``error`` + ``error.txt``), exit 1.

Optional hook: ``cell.json`` may name ``"hook": {"factory": "module:function", ...}``;
``function(hook_spec, cell_dir)`` returns an object with ``callbacks()`` (extra Trainer
callbacks, e.g. reporting a metric each logging step) and ``stop_reason()`` (None, or why
a callback stopped training early). A stopped run is not evaluated: it is marked KILLED
with tag ``stop_reason`` and the worker exits 77 (``bicc-lab tune`` prunes trials this way).
SIGTERM/SIGINT/SIGHUP, or the death of the parent process, mark it KILLED, exit 143.

What a cell shares with ``bicc-lab train`` (tags, resume point, metric replay, heartbeat,
the KILLED/FAILED bookkeeping) is :mod:`bicc_lab.launch.tracked_run`.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from bicc_lab.launch import layout
from bicc_lab.launch.base import (  # the exit codes every launcher reports
    EXIT_BUSY,
    EXIT_ELSEWHERE,
    EXIT_FAILED,
    EXIT_KILLED,
    EXIT_OK,
    EXIT_STOPPED,
)
from bicc_lab.launch.locks import LOCK_NAME, CellLock
from bicc_lab.launch.tracked_run import (
    ERROR_LINES,
    STOP_REASON_TAG,
    Terminated,
    _checkpoint_gate,
    _finish_badly,
    _Heartbeat,
    _install_signal_handlers,
    _log,
    _replay_metrics,
    log_config_params,
    resume_point,
    run_tags,
)

KILLED_BY_TAG = "killed_by"  # the signal that killed a worker from outside (set by `sweep run`)


def _watch_parent(parent_pid: int | None) -> None:
    """SIGTERM ourselves when the launching process goes away: ``PR_SET_PDEATHSIG`` on
    Linux, and a thread polling ``getppid()`` (also covers a parent that died before)."""
    if not parent_pid:
        return
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except Exception:  # noqa: BLE001 - the watchdog thread still works
            pass
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGTERM)

    def loop() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid:
                os.kill(os.getpid(), signal.SIGTERM)
                return

    threading.Thread(target=loop, name="parent-watchdog", daemon=True).start()


def run_cell(directory: Path) -> int:
    """Run the cell in ``directory`` (its lock already held). Returns the exit code."""
    from mlflow.entities import Metric, RunTag

    from bicc_lab.spec import ExperimentConfig, config_hash
    from bicc_lab.tracking.naming import Tag, heartbeat_interval
    from bicc_lab.tracking.store import MetricBatcher, Tracker, dumps_axes
    from bicc_lab.tracking.store import eval_metrics as eval_metrics_of

    spec = layout.read_json(directory / layout.CELL_SPEC)
    if not isinstance(spec, dict):
        _log(f"no readable {layout.CELL_SPEC} in {directory}")
        return EXIT_FAILED

    def phase(name: str) -> None:
        layout.write_atomic(directory / layout.PHASE_FILE, name + "\n")

    phase("starting")
    hook = _load_hook(spec, directory)
    config = ExperimentConfig.model_validate(spec["config"])
    digest = spec["config_hash"]
    if config_hash(config) != digest:
        raise RuntimeError(
            f"cell.json: config hash mismatch ({config_hash(config)[:12]} != {digest[:12]}); "
            "the code that defines the config changed since `sweep run` wrote it"
        )
    config = _placed(config)
    tracker = Tracker(spec["tracking_uri"], create=False)  # `sweep run` created it
    experiment_id = spec["experiment_id"]
    runs = tracker.cell_runs(experiment_id, digest)
    done = [r for r in runs if r.status == "FINISHED"]
    if done:
        _log(f"already finished in MLflow (run {done[0].run_id}); nothing to do")
        layout.write_atomic(directory / layout.RUN_ID_FILE, done[0].run_id + "\n")
        phase("finished")
        return EXIT_OK

    recorded = layout.read_text(directory / layout.RUN_ID_FILE)
    run = next((r for r in runs if r.run_id == recorded), None)
    if run is None:
        live = [r for r in runs if r.is_live()]
        if live:
            _log(
                f"run {live[0].run_id} of this cell is alive elsewhere (host {live[0].tags.get(Tag.HOST)}); leaving it"
            )
            return EXIT_ELSEWHERE
        run = runs[0] if runs else None
    new = run is None
    if run is None:
        run_id = tracker.create_cell_run(
            experiment_id, spec.get("parent_run_id"), spec["name"], {Tag.CONFIG_HASH: digest}
        )
        attempts = 1
    else:
        run_id = run.run_id
        attempts = int(run.tags.get(Tag.ATTEMPTS, "0") or 0) + 1
    layout.write_atomic(directory / layout.RUN_ID_FILE, run_id + "\n")
    _log(
        f"{'new' if new else 'resuming'} MLflow run {run_id} (attempt {attempts}) for cell {spec['name']} [{spec['cell_id']}]"
    )

    tags = run_tags(
        config, digest=digest, train_id=spec.get("train_id", ""), commit=spec.get("git_commit") or "",
        attempts=attempts, output_dir=directory,
    )
    tags.update({
        Tag.SWEEP: spec["sweep"],
        Tag.CELL_ID: spec["cell_id"],
        Tag.CELL_NAME: spec["name"],
        Tag.AXES: dumps_axes(spec.get("axes", {})),
    })
    if spec.get("parent_run_id"):
        tags[Tag.PARENT_RUN_ID] = spec["parent_run_id"]
    client_lock = threading.Lock()  # the heartbeat thread and the trainer share the client
    with client_lock:
        if not new:  # a retried or resumed attempt: nothing of the failed one remains
            dropped = tracker.delete_tags(run_id, [Tag.ERROR, STOP_REASON_TAG, KILLED_BY_TAG])
            if (directory / layout.ERROR_FILE).exists():
                (directory / layout.ERROR_FILE).unlink()
            if tracker.delete_artifact(run_id, layout.ERROR_FILE):
                dropped.append(layout.ERROR_FILE)
            if dropped:
                _log(f"dropped {', '.join(dropped)} of the earlier attempt")
        tracker.set_tags(run_id, tags)
        log_config_params(tracker, run_id, config, first_attempt=new, say=_log)
        tracker.set_status(run_id, "RUNNING")

    state = {"phase": "starting", "step": 0}
    max_steps = config.train.max_steps

    def set_phase(name: str) -> None:
        state["phase"] = name
        phase(name)
        with client_lock:
            tracker.set_tags(run_id, {Tag.PHASE: name})

    def beat() -> None:
        with client_lock:
            tracker.heartbeat(
                run_id, {Tag.PROGRESS: f"{state['step']}/{max_steps}", Tag.PHASE: state["phase"]}
            )

    def log_metrics(metrics: list[Metric]) -> None:
        with client_lock:
            progress = RunTag(Tag.PROGRESS, f"{state['step']}/{max_steps}")
            heartbeat = RunTag(Tag.HEARTBEAT, f"{time.time():.3f}")
            for i in range(0, max(len(metrics), 1), 900):
                chunk = metrics[i : i + 900]
                tracker.call(
                    lambda chunk=chunk, i=i: tracker.client.log_batch(
                        run_id,
                        metrics=chunk,
                        tags=[progress, heartbeat] if i == 0 else [],
                        synchronous=True,
                    )
                )

    def on_log(step: int, metrics: dict[str, float]) -> None:
        state["step"] = max(state["step"], int(step))
        batcher.add(step, metrics)

    from bicc_lab.backends.trl.run import read_train_result, train_run

    result = read_train_result(directory)
    rewritable = tracker.can_rewrite_metrics
    with client_lock:
        kept, logged = resume_point(tracker, run_id, directory, new=new)
    # A server store gets a step only once a checkpoint covers it (it cannot delete).
    batcher = MetricBatcher(
        log_metrics, every_steps=5, every_s=10.0, hold_after=None if rewritable else kept
    )

    def unlogged(metrics: list[Metric]) -> list[Metric]:
        return [m for m in metrics if m.step not in logged.get(m.key, ())]

    heart = _Heartbeat(beat, heartbeat_interval())
    heart.start()
    try:
        _replay_metrics(directory / layout.METRICS_FILE, batcher, upto=kept, logged=logged)
        if result is None:
            set_phase("training")
            callbacks = list(hook.callbacks()) if hook is not None else []
            if not rewritable:
                callbacks.append(_checkpoint_gate(batcher))
            result = train_run(
                config,
                directory,
                resume=True,
                progress=False,
                on_log=on_log,
                callbacks=callbacks,
                stopped=hook.stop_reason if hook is not None else None,
            )
        else:
            _log(f"training already complete ({result.steps} steps); skipping it")
        state["step"] = result.steps
        batcher.release_all()
        with client_lock:
            summary = [
                Metric(
                    "train/wall_time_s",
                    float(result.wall_time_s),
                    int(time.time() * 1000),
                    result.steps,
                )
            ]
            if result.mean_step_time_s is not None:
                summary.append(
                    Metric(
                        "train/mean_step_time_s",
                        float(result.mean_step_time_s),
                        int(time.time() * 1000),
                        result.steps,
                    )
                )
            tracker.log_metrics(run_id, unlogged(summary))

        eval_path = directory / layout.EVAL_FILE
        stopped = hook.stop_reason() if hook is not None else None
        if stopped:  # stopped early by the hook: no evaluation, not FINISHED
            _log(f"training stopped early at step {result.steps}: {stopped}")
            with client_lock:
                tracker.log_artifacts(run_id, [directory / "config.yaml", directory / layout.TRAIN_RESULT])
                sys.stdout.flush()
                sys.stderr.flush()
                tracker.log_artifacts(run_id, [directory / layout.LOG_FILE])
                tracker.set_tags(
                    run_id,
                    {
                        Tag.PROGRESS: f"{result.steps}/{max_steps}",
                        Tag.PHASE: "stopped",
                        STOP_REASON_TAG: stopped[:5000],
                    },
                )
                tracker.set_status(run_id, "KILLED")
            phase("stopped")
            return EXIT_STOPPED
        if config.eval.enabled:
            set_phase("evaluating")
            if eval_path.is_file():
                from bicc_lab.eval.runner import EvalResult

                evaluation = EvalResult.from_json(eval_path)
                _log("evaluation already done; re-logging it")
            else:
                from bicc_lab.eval.runner import evaluate_config

                evaluation = evaluate_config(config, result.final_model_dir, out_file=eval_path)
            from bicc_lab.tracking.single import log_problems_table

            with client_lock:
                # points, or fractions on a run an older version logged its scores to
                scale = tracker.score_scale(run_id)
                eval_metrics = unlogged(eval_metrics_of(evaluation, result.steps, scale=scale))
                tracker.log_metrics(run_id, eval_metrics)
                log_problems_table(tracker, run_id, evaluation)  # as a `train` run has it

        set_phase("logging")
        with client_lock:
            tracker.log_artifacts(
                run_id,
                [directory / "config.yaml", directory / layout.TRAIN_RESULT, eval_path],
            )
            sys.stdout.flush()
            sys.stderr.flush()
            tracker.log_artifacts(run_id, [directory / layout.LOG_FILE])
            # under the lock: a later heartbeat must write these back, not "logging"
            state.update(phase="finished", step=result.steps)
            tracker.set_tags(
                run_id, {Tag.PROGRESS: f"{result.steps}/{max_steps}", Tag.PHASE: "finished"}
            )
            tracker.set_status(run_id, "FINISHED")  # last: this tag is what "finished" means
        phase("finished")
        _log("finished")
        return EXIT_OK
    except Terminated as exc:
        _log(f"terminated ({exc}); marking the run KILLED")
        _finish_badly(tracker, run_id, batcher, client_lock, "KILLED", None, directory)
        phase("killed")
        return EXIT_KILLED
    except BaseException:  # noqa: BLE001 - every failure is recorded, then the sweep goes on
        text = traceback.format_exc()
        print(text, file=sys.stderr, flush=True)
        lines = [line for line in text.strip().splitlines() if line.strip()]
        error = "\n".join(lines[-ERROR_LINES:])
        layout.write_atomic(directory / layout.ERROR_FILE, error + "\n")
        _finish_badly(tracker, run_id, batcher, client_lock, "FAILED", error, directory)
        phase("failed")
        return EXIT_FAILED
    finally:
        heart.stop()


def _load_hook(spec: dict[str, Any], directory: Path) -> Any:
    """The cell's hook object (see the module docstring), or None when cell.json names none."""
    hook_spec = spec.get("hook")
    if not hook_spec:
        return None
    import importlib

    module_name, _, attr = str(hook_spec["factory"]).partition(":")
    factory = getattr(importlib.import_module(module_name), attr)
    return factory(hook_spec, directory)


def _placed(config: Any) -> Any:
    """The config with what its launcher decided at run time (not part of its identity):
    the host of the ``trl vllm-serve`` node of a multi-node SLURM job."""
    host = os.environ.get("BICC_LAB_VLLM_SERVER_HOST")
    if not host or config.train.vllm_mode != "server":
        return config
    train = config.train.model_copy(update={"extra": {**config.train.extra, "vllm_server_host": host}})
    return config.model_copy(update={"train": train})


def _train_only(directory: Path) -> int:
    """A non-main process of a multi-process cell (``accelerate launch``): it trains beside
    the main process, which alone holds the lock, tracks, evaluates and logs."""
    from bicc_lab.backends.trl.run import train_run
    from bicc_lab.spec import ExperimentConfig

    spec = layout.read_json(directory / layout.CELL_SPEC)
    config = _placed(ExperimentConfig.model_validate(spec["config"]))
    train_run(config, directory, resume=True, progress=False)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bicc_lab.launch.worker", description=__doc__.splitlines()[0]
    )
    parser.add_argument("cell_dir", type=Path, help="the cell's directory (holds cell.json)")
    parser.add_argument("--parent-pid", type=int, default=None, help="exit when this process dies")
    args = parser.parse_args(argv)
    directory: Path = args.cell_dir.resolve()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and int(os.environ.get("RANK", "0")) != 0:
        return _train_only(directory)

    lock = CellLock(directory / LOCK_NAME)
    if not lock.acquire():
        _log(f"cell {directory.name} is being run by another process; leaving it")
        return EXIT_BUSY
    try:
        _install_signal_handlers()
        _watch_parent(args.parent_pid)
        layout.write_atomic(directory / layout.PID_FILE, f"{os.getpid()}\n")
        _log(f"pid {os.getpid()} host {os.uname().nodename} cell dir {directory}")
        try:
            return run_cell(directory)
        except Terminated as exc:  # before the MLflow run existed
            _log(f"terminated ({exc}) before training started")
            return EXIT_KILLED
        except BaseException:  # noqa: BLE001 - before the MLflow run existed
            text = traceback.format_exc()
            print(text, file=sys.stderr, flush=True)
            lines = [line for line in text.strip().splitlines() if line.strip()]
            layout.write_atomic(
                directory / layout.ERROR_FILE, "\n".join(lines[-ERROR_LINES:]) + "\n"
            )
            layout.write_atomic(directory / layout.PHASE_FILE, "failed\n")
            return EXIT_FAILED
    finally:
        lock.release()


if __name__ == "__main__":
    sys.exit(main())
