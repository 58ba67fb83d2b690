"""`bicc-lab train` tracked in MLflow the way a sweep cell is (``launch.worker``).

One run per output directory, recorded in its ``tracking.json``: a resumed train continues
that run (attempts + 1; the steps after the resume point are deleted first, as the worker
does, so every step is logged once), a new directory makes a new one. The run carries the
worker's tags (arm, variant, model, seed, config_hash, train_id, version, git commit,
heartbeat, progress, phase, host, pid, attempts) and metrics (TRL's log keys per step,
``train/wall_time_s``, ``eval/<bench>/<metric>``), the config as params, and
``config.yaml``, ``train_result.json`` and ``eval.json`` as artifacts; ``status`` is set
last: FINISHED, FAILED (with an ``error`` tag) or KILLED (Ctrl-C, SIGTERM).

Only the ``role`` tag (``train``) and the missing sweep tags tell it from a cell.
"""

from __future__ import annotations

import signal
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from bicc_lab.launch import layout
from bicc_lab.launch.tracked_run import (
    ERROR_LINES,
    STOP_REASON_TAG,
    Terminated,
    _checkpoint_gate,
    _finish_badly,
    _Heartbeat,
    _install_signal_handlers,
    log_config_params,
    resume_point,
    run_tags,
)
from bicc_lab.tracking.single import (
    TRAIN_ROLE,
    create_run,
    log_evaluation,
    read_record,
    write_record,
)


def _say(message: str) -> None:
    print(f"[bicc-lab train] {message}", flush=True)


class TrackedTrain:
    """The MLflow side of one `bicc-lab train` (main process only). Use as a context
    manager around training and evaluation; call :meth:`trained`, :meth:`evaluated`, then
    :meth:`finished`. Leaving the block by an exception marks the run FAILED (KILLED for
    Ctrl-C / SIGTERM, which it turns into an exception while it is open)."""

    def __init__(self, config: Any, directory: str | Path, tracking_uri: str, experiment: str | None = None) -> None:
        self.config = config
        self.directory = Path(directory)
        self.uri = tracking_uri
        self.experiment = experiment or config.tracking.experiment or config.name
        self.run_id = ""
        self.experiment_id = ""
        self.resumed = False
        self._lock = threading.Lock()  # the heartbeat thread and the trainer share the client
        self._state = {"phase": "starting", "step": 0}
        self._logged: dict[str, set[int]] = {}
        self._done = False
        self._old_handlers: dict[int, Any] = {}

    # ------------------------------------------------------------------ open / close

    def __enter__(self) -> TrackedTrain:
        from bicc_lab.tracking.store import MetricBatcher, Tracker

        self.tracker = Tracker(self.uri)
        self._open_run()
        rewritable = self.tracker.can_rewrite_metrics
        with self._lock:
            kept, self._logged = resume_point(
                self.tracker, self.run_id, self.directory, new=not self.resumed, log=_say
            )
        self.batcher = MetricBatcher(
            self._log_batch, every_steps=5, every_s=10.0, hold_after=None if rewritable else kept
        )
        self._rewritable = rewritable
        self._replay(kept)
        from bicc_lab.tracking.naming import heartbeat_interval

        self._heart = _Heartbeat(self._beat, heartbeat_interval())
        self._heart.start()
        if threading.current_thread() is threading.main_thread():
            self._old_handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
            _install_signal_handlers()
        self._set_phase("training")
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        try:
            self._heart.stop()
            if exc is not None and not self._done:
                if isinstance(exc, (Terminated, KeyboardInterrupt)):
                    _finish_badly(self.tracker, self.run_id, self.batcher, self._lock, "KILLED", None, self.directory)
                elif not isinstance(exc, SystemExit) or exc.code not in (0, None):
                    text = "".join(traceback.format_exception(exc_type, exc, tb))
                    lines = [line for line in text.strip().splitlines() if line.strip()]
                    error = "\n".join(lines[-ERROR_LINES:])
                    _finish_badly(self.tracker, self.run_id, self.batcher, self._lock, "FAILED", error, self.directory)
                _say(f"MLflow run {self.run_id} marked {'KILLED' if isinstance(exc, Terminated | KeyboardInterrupt) else 'FAILED'}")
        finally:
            for sig, handler in self._old_handlers.items():
                signal.signal(sig, handler)
        if isinstance(exc, Terminated):  # a signal: exit like the worker, without a traceback
            raise SystemExit(143) from None

    def _open_run(self) -> None:
        from bicc_lab.spec import config_hash, train_id
        from bicc_lab.tracking.naming import Tag, git_commit

        digest = config_hash(self.config)
        record = read_record(self.directory)
        previous = None
        if record is not None and record["tracking_uri"] == self.uri:
            previous = self.tracker.get(record["run_id"])
            if previous is not None and previous.tags.get(Tag.CONFIG_HASH) != digest:
                previous = None  # the directory was reused for another config: a new run
        if previous is None:
            name = f"{self.config.name}/{self.config.variant}/{self.config.arm}/s{self.config.seed}"
            self.experiment_id, self.run_id = create_run(
                self.tracker, self.experiment, name, TRAIN_ROLE, {Tag.CONFIG_HASH: digest}
            )
            attempts = 1
        else:
            self.resumed = True
            self.run_id = previous.run_id
            self.experiment_id = record.get("experiment_id", "")
            attempts = int(previous.tags.get(Tag.ATTEMPTS, "0") or 0) + 1
            dropped = self.tracker.delete_tags(self.run_id, [Tag.ERROR, STOP_REASON_TAG])
            if dropped:
                _say(f"dropped {', '.join(dropped)} of the earlier attempt")
        write_record(self.directory, self.uri, self.experiment_id, self.run_id)
        layout.write_atomic(self.directory / layout.RUN_ID_FILE, self.run_id + "\n")
        _say(f"{'resuming' if self.resumed else 'new'} MLflow run {self.run_id} (attempt {attempts}) in {self.uri}")
        config = self.config
        tags = run_tags(config, digest=digest, train_id=train_id(config), commit=git_commit(), attempts=attempts,
                        output_dir=self.directory)
        with self._lock:
            self.tracker.set_tags(self.run_id, tags)
            log_config_params(self.tracker, self.run_id, config, first_attempt=not self.resumed, say=_say)
            self.tracker.set_status(self.run_id, "RUNNING")

    # ------------------------------------------------------------------ during training

    def _log_batch(self, metrics: list[Any]) -> None:
        from bicc_lab.tracking.naming import Tag

        with self._lock:
            self.tracker.log_metrics(self.run_id, metrics)
            self.tracker.set_tags(
                self.run_id,
                {Tag.PROGRESS: f"{self._state['step']}/{self.config.train.max_steps}", Tag.HEARTBEAT: f"{time.time():.3f}"},
            )

    def _beat(self) -> None:
        from bicc_lab.tracking.naming import Tag

        with self._lock:
            self.tracker.heartbeat(
                self.run_id,
                {Tag.PROGRESS: f"{self._state['step']}/{self.config.train.max_steps}", Tag.PHASE: self._state["phase"]},
            )

    def _set_phase(self, name: str) -> None:
        from bicc_lab.tracking.naming import Tag

        self._state["phase"] = name
        with self._lock:
            self.tracker.set_tags(self.run_id, {Tag.PHASE: name})

    def _unlogged(self, step: int, metrics: dict[str, float]) -> dict[str, float]:
        from bicc_lab.tracking.naming import metric_key

        return {k: v for k, v in metrics.items() if step not in self._logged.get(metric_key(k), ())}

    def _replay(self, kept: int) -> None:
        """``metrics.jsonl`` steps up to ``kept`` that MLflow lacks (the worker's replay)."""
        from bicc_lab.launch.tracked_run import _replay_metrics

        _replay_metrics(self.directory / layout.METRICS_FILE, self.batcher, upto=kept, logged=self._logged)
        with self._lock:  # what is in MLflow now: a step retrained up to `kept` is not logged twice
            self._logged = self.tracker.metric_steps(self.run_id)

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        """``train_run``'s ``on_log``: each logging step's metrics, once per step."""
        self._state["step"] = max(self._state["step"], int(step))
        values = self._unlogged(int(step), metrics)
        if values:
            self.batcher.add(step, values)

    def callbacks(self) -> list[Any]:
        """Trainer callbacks: a server store logs a step once a checkpoint covers it."""
        return [] if self._rewritable else [_checkpoint_gate(self.batcher)]

    # ------------------------------------------------------------------ after training

    def trained(self, result: Any) -> None:
        from mlflow.entities import Metric

        self._state["step"] = result.steps
        self.batcher.release_all()
        now = int(time.time() * 1000)
        summary = {"train/wall_time_s": float(result.wall_time_s)}
        if result.mean_step_time_s is not None:
            summary["train/mean_step_time_s"] = float(result.mean_step_time_s)
        metrics = [Metric(k, v, now, result.steps) for k, v in self._unlogged(result.steps, summary).items()]
        with self._lock:
            self.tracker.log_metrics(self.run_id, metrics)

    def evaluating(self) -> None:
        self._set_phase("evaluating")

    def evaluated(self, evaluation: Any, eval_file: str | Path | None, step: int) -> None:
        with self._lock:
            log_evaluation(
                self.tracker, self.run_id, evaluation, step=step,
                files=[eval_file] if eval_file else [], logged=self._logged,
            )

    def finished(self, steps: int) -> None:
        from bicc_lab.tracking.naming import Tag

        self._set_phase("logging")
        with self._lock:
            self.tracker.log_artifacts(
                self.run_id, [self.directory / "config.yaml", self.directory / layout.TRAIN_RESULT]
            )
            # under the lock: a later heartbeat must write these back, not "logging"
            self._state.update(phase="finished", step=steps)
            self.tracker.set_tags(
                self.run_id, {Tag.PROGRESS: f"{steps}/{self.config.train.max_steps}", Tag.PHASE: "finished"}
            )
            self.tracker.set_status(self.run_id, "FINISHED")  # last, as in a cell
        self._done = True
