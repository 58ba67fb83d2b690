"""MLflow access for sweeps: experiments, the parent run, child runs per cell, batched logging.

Works the same against a local SQLite file (``sqlite:////abs/mlflow.db``) and an
``http(s)://`` tracking server: everything goes through :class:`mlflow.MlflowClient`.

Store faults are one line (:class:`~bicc_lab.tracking.check.StoreError`, exit 2), never a
traceback: a locked SQLite database is retried with back-off for up to
``$BICC_LAB_STORE_WAIT_S`` seconds (several worker processes write to one file), then the
error names the process that holds it; a corrupt file, an out-of-date schema, a read-only
file or an unreachable server say so.

A fresh SQLite store is built in a temporary file and linked into place atomically, so two
processes creating the same store at once never leave a half-migrated database.
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

from bicc_lab.tracking.check import (
    StoreError,
    check_tracking_uri,
    locked_message,
    quiet_store_logs,
    store_initialised,
    store_wait_s,
)
from bicc_lab.tracking.naming import (
    StoreURI,
    Tag,
    metric_key,
    run_score_scale,
    scores_as_fractions,
    sqlite_path,
    stale_after,
)
from bicc_lab.units import SCORE_SCALE, SCORE_UNIT, is_score

T = TypeVar("T")

__all__ = ["CellRun", "MetricBatcher", "StoreError", "Tracker", "check_tracking_uri"]

_BATCH_TAGS = 100
_BATCH_METRICS = 1000

_LOCKED = ("database is locked", "database table is locked", "sqlite_busy")
# Faults of the store itself (not of one request): reported as one line, not retried.
_STORE_FAULTS = {
    "file is not a database": "is not an SQLite database (corrupt, or another kind of file)",
    "database disk image is malformed": "is corrupt (database disk image is malformed)",
    "out-of-date database schema": "",  # MLflow's own message says what to do
    "attempt to write a readonly database": "is read-only (no write permission)",
    "unable to open database file": "cannot be opened (missing directory or no permission)",
    "no such table": "is not a complete MLflow store (a table is missing; half-created?)",
    "disk i/o error": "cannot be read or written (disk I/O error)",
}


def _fault(exc: BaseException, uri: str | StoreURI) -> StoreError | None:
    """The one-line :class:`StoreError` of a store fault, or None for any other error."""
    text = str(exc)
    lower = text.lower()
    where = str(sqlite_path(uri) or uri)
    for pattern, meaning in _STORE_FAULTS.items():
        if pattern in lower:
            if meaning:
                return StoreError(f"MLflow store {where} {meaning}")
            first = " ".join(text.split())[:400]
            return StoreError(f"MLflow store {where}: {first}")
    if "databricks credential" in lower:
        return StoreError(
            f"MLflow store {uri}: Databricks authentication is not configured (DATABRICKS_HOST and "
            "DATABRICKS_TOKEN, or a profile in ~/.databrickscfg via DATABRICKS_CONFIG_PROFILE)"
        )
    if any(p in lower for p in ("connection refused", "max retries exceeded", "name or service not known")):
        return StoreError(f"cannot reach the MLflow tracking server at {uri} ({text.splitlines()[0][:200]})")
    return None


def _retry(fn: Callable[[], T], uri: str | StoreURI = "") -> T:
    """``fn()``, retried with back-off while the SQLite store is locked (up to
    ``$BICC_LAB_STORE_WAIT_S`` seconds); store faults become a one-line :class:`StoreError`."""
    wait = store_wait_s()
    deadline = time.monotonic() + wait
    delay = 0.2
    while True:
        try:
            return fn()
        except StoreError:
            raise
        except Exception as exc:  # MlflowException, or sqlalchemy's OperationalError leaking through
            lower = str(exc).lower()
            if any(p in lower for p in _LOCKED):
                if time.monotonic() >= deadline:
                    raise StoreError(locked_message(sqlite_path(uri) or uri, wait)) from None
                time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
                delay = min(delay * 2, 3.0)
                continue
            fault = _fault(exc, uri)
            if fault is not None:
                raise fault from None
            raise


def create_sqlite_store(db: Path) -> bool:
    """Create an MLflow SQLite store at ``db`` unless one is there; True when this call made it.

    The tables are built in a temporary file next to ``db``, which is then hard-linked to
    ``db``: the link fails when another process got there first, so no process ever sees,
    or adds to, a half-built store.
    """
    if store_initialised(f"sqlite:///{db}"):
        return False
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    db.parent.mkdir(parents=True, exist_ok=True)
    if db.exists():  # an empty file: MLflow fills it in place (callers hold the sweep lock)
        return False
    tmp = db.with_name(f".{db.name}.{os.getpid()}.tmp")
    tmp_uri = f"sqlite:///{tmp}"
    try:
        SqlAlchemyStore(tmp_uri, (db.parent / "mlartifacts").resolve().as_uri())
        engine = SqlAlchemyStore._engine_map.pop(tmp_uri, None)
        if engine is not None:
            engine.dispose()
        try:
            os.link(tmp, db)
            return True
        except FileExistsError:
            return False
        except OSError:  # a filesystem without hard links: rename (atomic, may replace a twin)
            if db.exists():
                return False
            os.replace(tmp, db)
            return True
    finally:
        for leftover in (tmp, tmp.with_name(tmp.name + "-journal")):
            try:
                leftover.unlink()
            except FileNotFoundError:
                pass


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
            metrics=scores_as_fractions(run.data.metrics, tags),  # whichever unit they were logged in
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

    def __init__(self, uri: str | StoreURI, *, create: bool = True) -> None:
        """``uri``: the tracking URI, parsed once here unless already a :class:`StoreURI`.
        ``create``: make a missing SQLite store (atomically); without it a missing or
        empty store is a :class:`StoreError` and nothing is created or migrated."""
        # MLflow prints "View run ... at URL" on every terminated run of an http store.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        quiet_store_logs()  # `_retry` makes its errors one line
        self.store = store = StoreURI.parse(uri)
        self.uri = store.uri
        db = store.sqlite
        if db is not None:
            if create:
                _retry(lambda: create_sqlite_store(db), store)
            elif not store_initialised(store):
                raise StoreError(f"no MLflow store at {db} (nothing was tracked there yet)")

        def connect() -> MlflowClient:
            client = MlflowClient(tracking_uri=store.uri)
            client._tracking_client.store  # noqa: B018 - builds the store: its faults surface here
            return client

        # MlflowClient reads the store's tables as it is built: a locked store waits here too.
        try:
            self.client = _retry(connect, store)
        except (MlflowException, ImportError) as exc:
            # Any store MLflow cannot build (a form it refuses, a missing package): one line.
            first = " ".join(str(exc).split("\n")[0].split())[:300]
            raise StoreError(f"MLflow cannot use the tracking store {store.uri}: {first}") from None

    def call(self, fn: Callable[[], T]) -> T:
        """``fn()`` (a use of ``self.client``), retried while the store is locked; store
        faults as one-line :class:`StoreError`."""
        return _retry(fn, self.store)

    @property
    def can_rewrite_metrics(self) -> bool:
        """Whether logged metric steps can be deleted (SQL stores; a server has no API for it)."""
        return self._sql_store() is not None

    def _sql_store(self) -> Any:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        store = self.call(lambda: self.client._tracking_client.store)
        return store if isinstance(store, SqlAlchemyStore) else None

    # ------------------------------------------------------------------ experiments

    def experiment_id(self, name: str, *, restore: bool = True) -> str | None:
        """The id of experiment ``name``, or None (never creates). A deleted one is restored,
        or, without ``restore`` (commands that only read), taken as absent."""
        exp = self.call(lambda: self.client.get_experiment_by_name(name))
        if exp is None:
            return None
        if exp.lifecycle_stage == "deleted":
            if not restore:
                return None
            self.call(lambda: self.client.restore_experiment(exp.experiment_id))
        return exp.experiment_id

    def ensure_experiment(self, name: str) -> str:
        """Get or create experiment ``name``; a concurrent creator is tolerated."""
        existing = self.experiment_id(name)
        if existing is not None:
            return existing
        artifact_location = None
        db = self.store.sqlite
        if db is not None:  # artifacts next to the database, not in whatever the cwd is
            artifact_location = (db.parent / "mlartifacts").resolve().as_uri()
        try:
            return self.call(
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
            page = self.call(
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
            run = self.call(
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
        run = self.call(lambda: self.client.create_run(experiment_id, run_name=name, tags=all_tags))
        return run.info.run_id

    def get(self, run_id: str) -> CellRun | None:
        try:
            return CellRun.from_run(self.call(lambda: self.client.get_run(run_id)))
        except MlflowException:
            return None

    # ------------------------------------------------------------------ logging

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        items = [RunTag(str(k), str(v)[:8000]) for k, v in tags.items()]
        for i in range(0, len(items), _BATCH_TAGS):
            chunk = items[i : i + _BATCH_TAGS]
            self.call(lambda chunk=chunk: self.client.log_batch(run_id, tags=chunk, synchronous=True))

    def log_params(self, run_id: str, params: Mapping[str, str]) -> None:
        """Log params in batches of 100; a param already logged with the same value is fine."""
        items = [Param(str(k), str(v)) for k, v in params.items()]
        for i in range(0, len(items), _BATCH_TAGS):
            chunk = items[i : i + _BATCH_TAGS]
            self.call(
                lambda chunk=chunk: self.client.log_batch(run_id, params=chunk, synchronous=True)
            )

    def log_metrics(self, run_id: str, metrics: Sequence[Metric]) -> None:
        for i in range(0, len(metrics), _BATCH_METRICS):
            chunk = list(metrics[i : i + _BATCH_METRICS])
            self.call(
                lambda chunk=chunk: self.client.log_batch(run_id, metrics=chunk, synchronous=True)
            )

    def log_artifacts(self, run_id: str, paths: Iterable[str | os.PathLike[str]]) -> None:
        for path in paths:
            p = Path(path)
            if p.is_file():
                self.call(lambda p=p: self.client.log_artifact(run_id, str(p)))

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.call(lambda: self.client.log_text(run_id, text, artifact_file))

    def set_status(self, run_id: str, status: str, *, terminate: bool = True) -> None:
        """Our ``status`` tag, and MLflow's run status (terminated unless RUNNING)."""
        self.set_tags(run_id, {Tag.STATUS: status})
        if status == "RUNNING":
            self.call(lambda: self.client.update_run(run_id, status="RUNNING"))
        elif terminate:
            self.call(lambda: self.client.set_terminated(run_id, status=status))

    def heartbeat(self, run_id: str, extra: Mapping[str, Any] | None = None) -> None:
        self.set_tags(run_id, {Tag.HEARTBEAT: f"{time.time():.3f}", **(extra or {})})

    def delete_tags(self, run_id: str, keys: Iterable[str]) -> list[str]:
        """Delete the tags among ``keys`` that the run has; returns those deleted."""
        run = self.call(lambda: self.client.get_run(run_id))
        present = [k for k in keys if k in run.data.tags]
        for key in present:
            self.call(lambda key=key: self.client.delete_tag(run_id, key))
        return present

    def delete_artifact(self, run_id: str, path: str) -> bool:
        """Best effort: remove one artifact of the run (e.g. the ``error.txt`` of a failed
        attempt); False where the artifact store cannot delete or has no such file."""
        try:
            from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

            run = self.call(lambda: self.client.get_run(run_id))
            names = {a.path for a in self.call(lambda: self.client.list_artifacts(run_id))}
            if path not in names:
                return False
            get_artifact_repository(run.info.artifact_uri).delete_artifacts(path)
            return True
        except StoreError:
            raise
        except Exception:  # noqa: BLE001 - not every artifact store can delete
            return False

    # ------------------------------------------------------------------ exact resume

    def score_scale(self, run_id: str) -> float:
        """The factor a run's eval scores are logged with: 100 (points) and the tag
        ``score_unit=percent`` for a run without scores yet; a run that an older version
        logged fractions to keeps fractions, so that one run never mixes units."""
        run = self.call(lambda: self.client.get_run(run_id))
        tags = dict(run.data.tags)
        scale = run_score_scale(tags, run.data.metrics)
        if scale == SCORE_SCALE and tags.get(Tag.SCORE_UNIT) != SCORE_UNIT:
            self.set_tags(run_id, {Tag.SCORE_UNIT: SCORE_UNIT})
        return scale

    def metric_steps(self, run_id: str) -> dict[str, set[int]]:
        """``{metric key: steps logged}`` of a run (every entry of every metric's history)."""
        sql = self._sql_store()
        if sql is not None:  # one query instead of one history per key
            from mlflow.store.tracking.dbmodels.models import SqlMetric

            def query() -> list[tuple[str, int]]:
                with sql.ManagedSessionMaker() as session:
                    rows = session.query(SqlMetric.key, SqlMetric.step).filter(
                        SqlMetric.run_uuid == run_id
                    )
                    return [(str(k), int(s)) for k, s in rows]

            out: dict[str, set[int]] = {}
            for key, step in self.call(query):
                out.setdefault(key, set()).add(step)
            return out
        run = self.call(lambda: self.client.get_run(run_id))
        return {
            key: {
                m.step
                for m in self.call(lambda key=key: self.client.get_metric_history(run_id, key))
            }
            for key in run.data.metrics
        }

    def metric_counts(self, run_id: str) -> dict[str, dict[int, int]]:
        """``{metric key: {step: entries}}``: more than one entry at a step is a duplicate."""
        run = self.call(lambda: self.client.get_run(run_id))
        out: dict[str, dict[int, int]] = {}
        for key in run.data.metrics:
            counts = out.setdefault(key, {})
            for m in self.call(lambda key=key: self.client.get_metric_history(run_id, key)):
                counts[m.step] = counts.get(m.step, 0) + 1
        return out

    def drop_metric_steps_after(self, run_id: str, step: int) -> int:
        """Delete every metric entry of the run logged at a step after ``step`` (steps that a
        resumed cell trains again), fixing each metric's latest value. SQL stores only;
        returns the number of entries deleted."""
        sql = self._sql_store()
        if sql is None:
            raise ValueError(f"{self.uri}: a server store cannot delete logged metrics")
        from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric

        def delete() -> int:
            with sql.ManagedSessionMaker(read_only=False) as session:
                doomed = session.query(SqlMetric).filter(
                    SqlMetric.run_uuid == run_id, SqlMetric.step > step
                )
                keys = sorted({k for (k,) in doomed.with_entities(SqlMetric.key).distinct()})
                count = doomed.delete(synchronize_session=False)
                for key in keys:
                    session.query(SqlLatestMetric).filter(
                        SqlLatestMetric.run_uuid == run_id, SqlLatestMetric.key == key
                    ).delete(synchronize_session=False)
                    # MLflow's "latest": the greatest (step, timestamp, value)
                    newest = (
                        session.query(SqlMetric)
                        .filter(SqlMetric.run_uuid == run_id, SqlMetric.key == key)
                        .order_by(
                            SqlMetric.step.desc(), SqlMetric.timestamp.desc(), SqlMetric.value.desc()
                        )
                        .first()
                    )
                    if newest is not None:
                        session.add(
                            SqlLatestMetric(
                                key=key,
                                value=newest.value,
                                timestamp=newest.timestamp,
                                step=newest.step,
                                is_nan=newest.is_nan,
                                run_uuid=run_id,
                            )
                        )
                return int(count)

        return self.call(delete)


def _quote(value: str) -> str:
    return value.replace("'", "\\'")


def host_tags() -> dict[str, str]:
    return {Tag.HOST: socket.gethostname(), Tag.PID: str(os.getpid())}


class MetricBatcher:
    """Collects per-step metrics (the ``on_log`` hook) and logs them with ``log_batch``.

    Flushes every ``every_steps`` logged steps or ``every_s`` seconds, and on :meth:`flush`.

    ``hold_after``: steps after it are held back until :meth:`release` (a checkpoint now
    covers them) or :meth:`release_all` (training ended). A store that cannot delete
    logged metrics (a server) thus never holds a step that a resumed run trains again.
    """

    def __init__(
        self,
        log: Callable[[list[Metric]], None],
        *,
        every_steps: int = 5,
        every_s: float = 10.0,
        on_flush: Callable[[int], None] | None = None,
        hold_after: int | None = None,
    ) -> None:
        self._log = log
        self.every_steps = every_steps
        self.every_s = every_s
        self._buffer: list[Metric] = []
        self._held: list[Metric] = []
        self._steps = 0
        self._last_flush = time.monotonic()
        self.last_step = 0
        self._on_flush = on_flush
        self.hold_after = hold_after

    def add(self, step: int, metrics: Mapping[str, float]) -> None:
        ts = int(time.time() * 1000)
        items = [Metric(metric_key(key), float(value), ts, int(step)) for key, value in metrics.items()]
        if self.hold_after is not None and int(step) > self.hold_after:
            self._held.extend(items)
        else:
            self._buffer.extend(items)
        self._steps += 1
        self.last_step = max(self.last_step, int(step))
        if self._steps >= self.every_steps or time.monotonic() - self._last_flush >= self.every_s:
            self.flush()

    @property
    def held(self) -> int:
        """Metric entries held back (waiting for a checkpoint)."""
        return len(self._held)

    def release(self, step: int) -> None:
        """A checkpoint at ``step`` was saved: log the held steps up to it."""
        if self.hold_after is None:
            return
        self.hold_after = max(self.hold_after, int(step))
        self._buffer.extend(m for m in self._held if m.step <= self.hold_after)
        self._held = [m for m in self._held if m.step > self.hold_after]
        self.flush()

    def release_all(self) -> None:
        """Training finished: nothing will be trained again, log everything."""
        self._buffer.extend(self._held)
        self._held = []
        self.hold_after = None
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


def eval_metrics(
    evaluation: Any, step: int, timestamp_ms: int | None = None, *, scale: float = SCORE_SCALE
) -> list[Metric]:
    """The MLflow metrics of an ``EvalResult``: ``eval/<benchmark>/<metric>`` plus ``eval/seconds``;
    scores (avg@k, pass@k, maj@k) times ``scale``: in points by default, as a run tagged
    ``score_unit=percent`` holds them (:meth:`Tracker.score_scale` says which a run takes)."""
    from bicc_lab.tracking.naming import eval_metric_key

    ts = timestamp_ms if timestamp_ms is not None else int(time.time() * 1000)
    metrics = []
    for bench, result in evaluation.benchmarks.items():
        for key, value in {**result.metrics, "n": result.n}.items():
            if value is not None:
                value = float(value) * scale if is_score(key) else float(value)
                metrics.append(Metric(eval_metric_key(bench, key), value, ts, step))
    metrics.append(Metric("eval/seconds", float(evaluation.seconds), ts, step))
    return metrics
