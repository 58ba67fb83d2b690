"""MLflow tracking of sweeps: naming, tags, metric logging, resume state.

``bicc_lab.tracking.naming`` (imported here) is standard-library only; the MLflow
client lives in ``bicc_lab.tracking.store`` and is imported where it is used::

    from bicc_lab.tracking import Tag, metric_key, resolve_tracking_uri
    from bicc_lab.tracking.store import Tracker

    tracker = Tracker(resolve_tracking_uri(None))
    exp = tracker.experiment_id("quickstart")
    finished = [r for r in tracker.cell_runs(exp) if r.status == "FINISHED"]
"""

from bicc_lab.tracking.naming import (
    DEFAULT_DB_NAME,
    STALE_AFTER_S,
    STATUSES,
    Tag,
    default_tracking_uri,
    eval_metric_key,
    flatten,
    git_commit,
    metric_key,
    normalize_uri,
    project_root,
    resolve_tracking_uri,
    sqlite_path,
    stale_after,
)

__all__ = [
    "DEFAULT_DB_NAME",
    "STALE_AFTER_S",
    "STATUSES",
    "Tag",
    "default_tracking_uri",
    "eval_metric_key",
    "flatten",
    "git_commit",
    "metric_key",
    "normalize_uri",
    "project_root",
    "resolve_tracking_uri",
    "sqlite_path",
    "stale_after",
]
