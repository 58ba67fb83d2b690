"""Where a sweep is tracked and written: tracking URI, experiment name, runs directory."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bicc_lab.launch import layout
from bicc_lab.tracking.check import StoreError, check_server, check_tracking_uri, store_initialised
from bicc_lab.tracking.naming import (
    StoreURI,
    project_root,
    resolve_tracking_uri,
    tracking_uri_source,
)

if TYPE_CHECKING:
    from bicc_lab.spec import Sweep
    from bicc_lab.tracking.store import CellRun, Tracker

__all__ = ["SweepContext", "TrackingUnavailable", "store_start_lock"]


class TrackingUnavailable(StoreError):
    """The tracking server cannot be reached (a one-line user-facing message)."""


@contextlib.contextmanager
def store_start_lock(directory: Path) -> Iterator[None]:
    """Hold ``directory/.sweep.lock`` (made with its folders) while a sweep or study opens
    its store; when the store fails there (:class:`StoreError`), the folders this call made
    are removed again, so a store MLflow refuses leaves nothing behind."""
    from bicc_lab.launch.locks import blocking_lock

    directory = Path(directory)
    made = []
    missing = directory
    while not missing.exists() and missing.parent != missing:
        made.append(missing)
        missing = missing.parent
    directory.mkdir(parents=True, exist_ok=True)
    try:
        with blocking_lock(directory / layout.SWEEP_LOCK):
            yield
    except StoreError:
        if made:
            with contextlib.suppress(OSError):
                (directory / layout.SWEEP_LOCK).unlink()
            for folder in made:  # deepest first; one another process uses is not empty
                try:
                    folder.rmdir()
                except OSError:
                    break
        raise


@dataclass
class SweepContext:
    """``uri`` is parsed once, into ``store`` (a :class:`StoreURI`), which every step of
    the sweep's start (preflight, store check, tracker) is given instead of the string."""

    sweep: Sweep
    uri: str
    experiment: str
    runs_dir: Path
    uri_from: str = "tracking.uri"  # where the URI came from, as messages name it
    store: StoreURI = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.store = StoreURI.parse(self.uri)
        self.uri = self.store.uri

    @classmethod
    def of(cls, sweep: Sweep, runs_dir: str | os.PathLike[str] | None = None) -> SweepContext:
        tracking = sweep.spec.tracking
        base = sweep.base_config.tracking
        uri = resolve_tracking_uri(tracking.uri or base.uri)
        experiment = tracking.experiment or base.experiment or sweep.name
        root = Path(runs_dir) if runs_dir else project_root() / "runs"
        return cls(
            sweep=sweep, uri=uri, experiment=experiment, runs_dir=root.resolve(),
            uri_from=tracking_uri_source(tracking.uri or base.uri),
        )

    @property
    def sweep_dir(self) -> Path:
        return layout.sweep_dir(self.runs_dir, self.sweep.name)

    @property
    def is_http(self) -> bool:
        return self.store.is_http

    def store_exists(self) -> bool:
        """False for a SQLite file that does not exist yet or is empty (nothing was tracked)."""
        return store_initialised(self.store)

    def check_reachable(self, timeout: float = 10.0) -> None:
        """For http(s) URIs: GET /health, so that a wrong URI fails in seconds, not minutes."""
        if not self.is_http:
            return
        try:
            check_server(self.uri, timeout=timeout)
        except StoreError as exc:
            raise TrackingUnavailable(str(exc)) from None

    def check_store(self, *, create: bool) -> None:
        """The preflight of the store (see :func:`bicc_lab.tracking.check.check_tracking_uri`)."""
        self.check_reachable()
        check_tracking_uri(self.store, create=create, what=self.uri_from)

    def tracker(self, *, create: bool = True) -> Tracker:
        """A client of the store; ``create`` makes a missing SQLite store (call it under the
        sweep lock), without it nothing is created or migrated."""
        from bicc_lab.tracking.store import Tracker

        return Tracker(self.store, create=create)

    def read_runs(self) -> list[CellRun] | None:
        """Child runs of this sweep's experiment, or None when nothing is tracked yet.

        Never creates the SQLite file or the experiment (``plan`` and ``status`` start nothing).
        """
        if self.is_http:
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        self.check_store(create=False)
        if not self.store_exists():
            return None
        tracker = self.tracker(create=False)
        experiment_id = tracker.experiment_id(self.experiment, restore=False)
        if experiment_id is None:
            return []
        return tracker.cell_runs(experiment_id)
