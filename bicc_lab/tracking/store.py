"""MLflow access for sweeps: experiments, the parent run, child runs per cell, batched logging.

Works the same against a local SQLite file (``sqlite:////abs/mlflow.db``) and an
``http(s)://`` tracking server: everything goes through :class:`mlflow.MlflowClient`.
SQLite writes from several worker processes can meet a locked database; calls are
retried with a short back-off.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run, RunTag, ViewType
from mlflow.exceptions import MlflowException

from bicc_lab.tracking.naming import Tag, metric_key, sqlite_path, stale_after

T = TypeVar("T")

__all__ = ["CellRun", "MetricBatcher", "Tracker"]

_BATCH_TAGS = 100
_BATCH_METRICS = 1000


def _retry(fn: Callable[[], T], attempts: int = 8) -> T:
    delay = 0.2
    for attempt in range(attempts):
        try:
            return fn()
        except MlflowException as exc:
            text = str(exc).lower()
            transient = "database is locked" in text or "busy" in text or "disk i/o" in text
            if not transient or attempt == attempts - 1:
                raise
        except Exception as exc:  # sqlalchemy OperationalError leaking through
            if "database is locked" not in str(exc).lower() or attempt == attempts - 1:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 3.0)
    raise AssertionError("unreachable")


@dataclass
class CellRun:
    """What MLflow knows about one child run."""

    run_id: str
    config_hash: str
    cell_id: str
    status: str  # our status tag (RUNNING / FINISHED / FAILED / KILLED)
    mlflow_status: str  # MLflow's own run status
    heartbeat: float | None
    start_time: float | None  # seconds
    end_time: float | None
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_run(cls, run: Run) -> CellRun:
        tags = dict(run.data.tags)
        heartbeat = tags.get(Tag.HEARTBEAT)
        return cls(
            run_id=run.info.run_id,
            config_hash=tags.get(Tag.CONFIG_HASH, ""),
            cell_id=tags.get(Tag.CELL_ID, ""),
            status=tags.get(Tag.STATUS, run.info.status),
            mlflow_status=run.info.status,
            heartbeat=float(heartbeat) if heartbeat else None,
            start_time=run.info.start_time / 1000 if run.info.start_time else None,
            end_time=run.info.end_time / 1000 if run.info.end_time else None,
            tags=tags,
            metrics=dict(run.data.metrics),
            params=dict(run.data.params),
        )

    def heartbeat_age(self, now: float | None = None) -> float | None:
        if self.heartbeat is None:
            return None
        return (now or time.time()) - self.heartbeat

    def is_live(self, now: float | None = None) -> bool:
        """RUNNING with a heartbeat younger than the stale threshold."""
        age = self.heartbeat_age(now)
        return self.status == "RUNNING" and age is not None and age < stale_after()


class Tracker:
    """A thin, retrying wrapper of :class:`MlflowClient` for one tracking URI."""

    def __init__(self, uri: str) -> None:
        # MLflow prints "View run ... at URL" on every terminated run of an http store.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)

    # ------------------------------------------------------------------ experiments

    def experiment_id(self, name: str) -> str | None:
        """The id of experiment ``name``, or None (never creates)."""
        exp = _retry(lambda: self.client.get_experiment_by_name(name))
        if exp is None:
            return None
        if exp.lifecycle_stage == "deleted":
            _retry(lambda: self.client.restore_experiment(exp.experiment_id))
        return exp.experiment_id

    def ensure_experiment(self, name: str) -> str:
        """Get or create experiment ``name``; a concurrent creator is tolerated."""
        existing = self.experiment_id(name)
        if existing is not None:
            return existing
        artifact_location = None
        db = sqlite_path(self.uri)
        if db is not None:  # artifacts next to the database, not in whatever the cwd is
            artifact_location = (db.parent / "mlartifacts").resolve().as_uri()
        try:
            return _retry(
                lambda: self.client.create_experiment(name, artifact_location=artifact_location)
            )
        except MlflowException:
            existing = self.experiment_id(name)
            if existing is None:
                raise
            return existing

    # ------------------------------------------------------------------ runs

    def search(self, experiment_id: str, filter_string: str = "") -> list[Run]:
        """Every active run of the experiment matching ``filter_string`` (all pages)."""
        runs: list[Run] = []
        token = None
        while True:
            page = _retry(
                lambda token=token: self.client.search_runs(
                    [experiment_id],
                    filter_string=filter_string,
                    run_view_type=ViewType.ACTIVE_ONLY,
                    max_results=1000,
                    page_token=token,
                )
            )
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def cell_runs(self, experiment_id: str, config_hash: str | None = None) -> list[CellRun]:
        """Child runs of the experiment (of one config hash when given), newest first."""
        filt = f"tags.{Tag.ROLE} = 'cell'"
        if config_hash:
            filt += f" and tags.{Tag.CONFIG_HASH} = '{config_hash}'"
        found = [CellRun.from_run(run) for run in self.search(experiment_id, filt)]
        found.sort(key=lambda r: r.start_time or 0.0, reverse=True)
        return found

    def find_parent(self, experiment_id: str, sweep: str) -> str | None:
        runs = self.search(
            experiment_id, f"tags.{Tag.ROLE} = 'sweep' and tags.{Tag.SWEEP} = '{_quote(sweep)}'"
        )
        if not runs:
            return None
        runs.sort(key=lambda r: r.info.start_time or 0)
        return runs[0].info.run_id

    def ensure_parent(self, experiment_id: str, sweep: str, tags: Mapping[str, str]) -> str:
        """The sweep's parent run (created on first use); call it under the sweep lock."""
        run_id = self.find_parent(experiment_id, sweep)
        if run_id is None:
            run = _retry(
                lambda: self.client.create_run(
                    experiment_id,
                    run_name=sweep,
                    tags={Tag.ROLE: "sweep", Tag.SWEEP: sweep, **tags},
                )
            )
            return run.info.run_id
        self.set_tags(run_id, tags)
        return run_id

    def create_cell_run(
        self, experiment_id: str, parent_run_id: str | None, name: str, tags: Mapping[str, str]
    ) -> str:
        all_tags = {Tag.ROLE: "cell", **tags}
        if parent_run_id:
            all_tags[Tag.PARENT_RUN_ID] = parent_run_id
        run = _retry(lambda: self.client.create_run(experiment_id, run_name=name, tags=all_tags))
        return run.info.run_id

    def get(self, run_id: str) -> CellRun | None:
        try:
            return CellRun.from_run(_retry(lambda: self.client.get_run(run_id)))
        except MlflowException:
            return None

    # ------------------------------------------------------------------ logging

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        items = [RunTag(str(k), str(v)[:8000]) for k, v in tags.items()]
        for i in range(0, len(items), _BATCH_TAGS):
            chunk = items[i : i + _BATCH_TAGS]
            _retry(lambda chunk=chunk: self.client.log_batch(run_id, tags=chunk, synchronous=True))

    def log_params(self, run_id: str, params: Mapping[str, str]) -> None:
        """Log params in batches of 100; a param already logged with the same value is fine."""
        items = [Param(str(k), str(v)) for k, v in params.items()]
        for i in range(0, len(items), _BATCH_TAGS):
            chunk = items[i : i + _BATCH_TAGS]
            _retry(
                lambda chunk=chunk: self.client.log_batch(run_id, params=chunk, synchronous=True)
            )

    def log_metrics(self, run_id: str, metrics: Sequence[Metric]) -> None:
        for i in range(0, len(metrics), _BATCH_METRICS):
            chunk = list(metrics[i : i + _BATCH_METRICS])
            _retry(
                lambda chunk=chunk: self.client.log_batch(run_id, metrics=chunk, synchronous=True)
            )

    def log_artifacts(self, run_id: str, paths: Iterable[str | os.PathLike[str]]) -> None:
        for path in paths:
            p = Path(path)
            if p.is_file():
                _retry(lambda p=p: self.client.log_artifact(run_id, str(p)))

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        _retry(lambda: self.client.log_text(run_id, text, artifact_file))

    def set_status(self, run_id: str, status: str, *, terminate: bool = True) -> None:
        """Our ``status`` tag, and MLflow's run status (terminated unless RUNNING)."""
        self.set_tags(run_id, {Tag.STATUS: status})
        if status == "RUNNING":
            _retry(lambda: self.client.update_run(run_id, status="RUNNING"))
        elif terminate:
            _retry(lambda: self.client.set_terminated(run_id, status=status))

    def heartbeat(self, run_id: str, extra: Mapping[str, Any] | None = None) -> None:
        self.set_tags(run_id, {Tag.HEARTBEAT: f"{time.time():.3f}", **(extra or {})})


def _quote(value: str) -> str:
    return value.replace("'", "\\'")


def host_tags() -> dict[str, str]:
    return {Tag.HOST: socket.gethostname(), Tag.PID: str(os.getpid())}


class MetricBatcher:
    """Collects per-step metrics (the ``on_log`` hook) and logs them with ``log_batch``.

    Flushes every ``every_steps`` logged steps or ``every_s`` seconds, and on :meth:`flush`.
    """

    def __init__(
        self,
        log: Callable[[list[Metric]], None],
        *,
        every_steps: int = 5,
        every_s: float = 10.0,
        on_flush: Callable[[int], None] | None = None,
    ) -> None:
        self._log = log
        self.every_steps = every_steps
        self.every_s = every_s
        self._buffer: list[Metric] = []
        self._steps = 0
        self._last_flush = time.monotonic()
        self.last_step = 0
        self._on_flush = on_flush

    def add(self, step: int, metrics: Mapping[str, float]) -> None:
        ts = int(time.time() * 1000)
        for key, value in metrics.items():
            self._buffer.append(Metric(metric_key(key), float(value), ts, int(step)))
        self._steps += 1
        self.last_step = max(self.last_step, int(step))
        if self._steps >= self.every_steps or time.monotonic() - self._last_flush >= self.every_s:
            self.flush()

    def flush(self) -> None:
        if self._buffer:
            buffer, self._buffer = self._buffer, []
            self._log(buffer)
        self._steps = 0
        self._last_flush = time.monotonic()
        if self._on_flush is not None:
            self._on_flush(self.last_step)


def dumps_axes(axes: Mapping[str, Any]) -> str:
    return json.dumps(dict(axes), sort_keys=False, default=str)


def eval_metrics(evaluation: Any, step: int, timestamp_ms: int | None = None) -> list[Metric]:
    """The MLflow metrics of an ``EvalResult``: ``eval/<benchmark>/<metric>`` plus ``eval/seconds``."""
    from bicc_lab.tracking.naming import eval_metric_key

    ts = timestamp_ms if timestamp_ms is not None else int(time.time() * 1000)
    metrics = []
    for bench, result in evaluation.benchmarks.items():
        for key, value in {**result.metrics, "n": result.n}.items():
            if value is not None:
                metrics.append(Metric(eval_metric_key(bench, key), float(value), ts, step))
    metrics.append(Metric("eval/seconds", float(evaluation.seconds), ts, step))
    return metrics


def log_eval_to_run_dir(run_dir: str | os.PathLike[str], evaluation: Any, eval_file: str | os.PathLike[str] | None = None) -> str | None:
    """Log an evaluation to the MLflow run of a sweep cell directory; None if it has none.

    ``bicc-lab eval --run DIR`` uses it so that a re-evaluation (other benchmarks, more
    samples) lands next to the cell's training metrics.
    """
    from bicc_lab.launch import layout

    directory = Path(run_dir)
    run_id = layout.read_text(directory / layout.RUN_ID_FILE)
    spec = layout.read_json(directory / layout.CELL_SPEC)
    if not run_id or not isinstance(spec, dict) or not spec.get("tracking_uri"):
        return None
    run_id = run_id.strip()
    tracker = Tracker(spec["tracking_uri"])
    train_result = layout.read_json(directory / layout.TRAIN_RESULT) or {}
    tracker.log_metrics(run_id, eval_metrics(evaluation, int(train_result.get("steps", 0))))
    if eval_file is not None:
        tracker.log_artifacts(run_id, [eval_file])
    return run_id
