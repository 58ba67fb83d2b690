"""Where a sweep is tracked and written: tracking URI, experiment name, runs directory."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bicc_lab.errors import UserError
from bicc_lab.launch import layout
from bicc_lab.tracking.naming import project_root, resolve_tracking_uri, sqlite_path

if TYPE_CHECKING:
    from bicc_lab.spec import Sweep
    from bicc_lab.tracking.store import CellRun, Tracker

__all__ = ["SweepContext", "TrackingUnavailable"]


class TrackingUnavailable(UserError):
    """The tracking server cannot be reached (a one-line user-facing message)."""


@dataclass
class SweepContext:
    sweep: Sweep
    uri: str
    experiment: str
    runs_dir: Path

    @classmethod
    def of(cls, sweep: Sweep, runs_dir: str | os.PathLike[str] | None = None) -> SweepContext:
        tracking = sweep.spec.tracking
        base = sweep.base_config.tracking
        uri = resolve_tracking_uri(tracking.uri or base.uri)
        experiment = tracking.experiment or base.experiment or sweep.name
        root = Path(runs_dir) if runs_dir else project_root() / "runs"
        return cls(sweep=sweep, uri=uri, experiment=experiment, runs_dir=root.resolve())

    @property
    def sweep_dir(self) -> Path:
        return layout.sweep_dir(self.runs_dir, self.sweep.name)

    @property
    def is_http(self) -> bool:
        return self.uri.startswith(("http://", "https://"))

    def store_exists(self) -> bool:
        """False for a SQLite file that does not exist yet (nothing was ever tracked)."""
        db = sqlite_path(self.uri)
        return db is None or db.is_file()

    def check_reachable(self, timeout: float = 10.0) -> None:
        """For http(s) URIs: GET /health, so that a wrong URI fails in seconds, not minutes."""
        if not self.is_http:
            return
        url = self.uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - user's URI
                if response.status >= 400:
                    raise TrackingUnavailable(
                        f"MLflow server at {self.uri} answered {response.status} on /health"
                    )
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TrackingUnavailable(
                f"cannot reach the MLflow tracking server at {self.uri} ({reason})"
            ) from None

    def tracker(self) -> Tracker:
        from bicc_lab.tracking.store import Tracker

        db = sqlite_path(self.uri)
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
        return Tracker(self.uri)

    def read_runs(self) -> list[CellRun] | None:
        """Child runs of this sweep's experiment, or None when nothing is tracked yet.

        Never creates the SQLite file or the experiment (``plan`` and ``status`` start nothing).
        """
        if not self.store_exists():
            return None
        if self.is_http:
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
            self.check_reachable()
        tracker = self.tracker()
        experiment_id = tracker.experiment_id(self.experiment)
        if experiment_id is None:
            return []
        return tracker.cell_runs(experiment_id)
