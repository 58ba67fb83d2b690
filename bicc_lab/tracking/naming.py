"""Names, tags and URIs of the MLflow tracking of a sweep. Standard library only.

Layout in MLflow (one experiment per sweep):

- experiment ``<sweep name>`` (or ``tracking.experiment`` of the sweep file);
- one *parent* run per sweep (tag ``role=sweep``), named after the sweep;
- one *child* run per cell (tag ``role=cell``, ``mlflow.parentRunId`` = the parent),
  named after the cell (``tiny/grpo/bicc+rcc/s0``).

A cell is finished when a child run with its ``config_hash`` tag has ``status=FINISHED``
(the tag is written last, after every metric and artifact). Metric names are TRL's log
keys as they are (``reward``, ``rewards/accuracy_reward/mean``, ``loss``, ...) at each
training step, and ``eval/<benchmark>/<metric>`` at the end, where ``@`` (not allowed by
MLflow) is spelled ``_at_``: ``eval/arith/avg_at_4``, ``eval/arith/pass_at_4``.

Scores (avg@k, pass@k, maj@k) are logged in percent points (0-100), and such a run carries
the tag ``score_unit=percent``; a run without the tag was logged by an older version, in
fractions (0-1). Readers take a run's scores through :func:`scores_as_fractions`, the unit
the statistics work in; every output shows them in points (:data:`SCORE_SCALE`).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from bicc_lab.units import SCORE_SCALE, SCORE_UNIT, is_score

__all__ = [
    "ACTIVE_STATUSES",
    "DEFAULT_DB_NAME",
    "HEARTBEAT_ENV",
    "STALE_AFTER_S",
    "STATUSES",
    "StoreURI",
    "Tag",
    "default_tracking_uri",
    "eval_metric_key",
    "flatten",
    "git_commit",
    "heartbeat_interval",
    "is_score_key",
    "run_score_scale",
    "metric_key",
    "normalize_uri",
    "project_root",
    "resolve_tracking_uri",
    "scores_as_fractions",
    "stale_after",
    "tracking_uri_source",
]

DEFAULT_DB_NAME = "mlflow.db"
STATUSES = ("RUNNING", "FINISHED", "FAILED", "KILLED")
ACTIVE_STATUSES = ("RUNNING",)

HEARTBEAT_ENV = "BICC_LAB_HEARTBEAT_S"
STALE_ENV = "BICC_LAB_STALE_AFTER_S"
HEARTBEAT_S = 15.0
STALE_AFTER_S = 60.0
"""A RUNNING child run whose heartbeat is older than this is stale (its process died)."""


class Tag:
    """Tag keys written on the runs (constants, so that `report` and `tune` read the same names)."""

    ROLE = "role"  # "sweep" | "cell"
    SWEEP = "sweep"
    CELL_ID = "cell_id"
    CELL_NAME = "cell_name"
    CONFIG_HASH = "config_hash"
    TRAIN_ID = "train_id"
    STATUS = "status"  # RUNNING | FINISHED | FAILED | KILLED
    ARM = "arm"
    VARIANT = "variant"
    MODEL = "model"
    SEED = "seed"
    AXES = "axes"  # JSON of the cell's grid values
    VERSION = "bicc_lab_version"
    GIT_COMMIT = "git_commit"
    HEARTBEAT = "heartbeat"  # unix seconds, refreshed while the worker lives
    PROGRESS = "progress"  # "step/max_steps"
    MODEL_SOURCE = "model_source"  # where a released model's converted weights came from
    PHASE = "phase"  # training | evaluating | logging
    ERROR = "error"  # last lines of the error of a FAILED cell
    ATTEMPTS = "attempts"
    HOST = "host"
    PID = "pid"
    N_CELLS = "n_cells"
    RUN_NAME = "mlflow.runName"
    PARENT_RUN_ID = "mlflow.parentRunId"
    SOURCE_COMMIT = "mlflow.source.git.commit"
    SCORE_UNIT = "score_unit"  # "percent": eval scores in points; absent: fractions (older runs)


def heartbeat_interval() -> float:
    """``$BICC_LAB_HEARTBEAT_S`` (> 0), default 15."""
    from bicc_lab.envvars import env_seconds

    return env_seconds(HEARTBEAT_ENV, HEARTBEAT_S)


def stale_after() -> float:
    """``$BICC_LAB_STALE_AFTER_S`` (> 0), default 60."""
    from bicc_lab.envvars import env_seconds

    return env_seconds(STALE_ENV, STALE_AFTER_S)


# --------------------------------------------------------------------------- metric names

_BAD_CHARS = re.compile(r"[^/\w.\- :]")


def metric_key(name: str) -> str:
    """A valid MLflow metric name for ``name``: ``@`` -> ``_at_``, other odd characters -> ``_``.

    >>> metric_key("eval/math500/avg@32")
    'eval/math500/avg_at_32'
    """
    text = str(name).replace("@", "_at_")
    text = _BAD_CHARS.sub("_", text)
    text = re.sub(r"/{2,}", "/", text).strip("/")
    parts = [p for p in text.split("/") if p not in ("", ".", "..")]
    return "/".join(parts) or "_"


def eval_metric_key(benchmark: str, metric: str) -> str:
    """``eval/<benchmark>/<metric>`` as logged, e.g. ``eval/arith/avg_at_4``."""
    return metric_key(f"eval/{benchmark}/{metric}")


# --------------------------------------------------------------------------- score unit

def is_score_key(key: str) -> bool:
    """``eval/<benchmark>/<score>`` as logged (``eval/arith/avg_at_4``)."""
    parts = str(key).split("/")
    return len(parts) == 3 and parts[0] == "eval" and is_score(parts[2])


def run_score_scale(tags: Mapping[str, str], metric_keys: Any = ()) -> float:
    """What a run's logged scores are multiplied by: 100 for a run tagged ``score_unit=percent``;
    1 for a run that has scores but no tag (an older version logged fractions); 100 for a run
    with no scores yet (they will be logged in points, and the tag with them)."""
    unit = tags.get(Tag.SCORE_UNIT)
    if unit is not None:
        return SCORE_SCALE if unit == SCORE_UNIT else 1.0
    return 1.0 if any(is_score_key(k) for k in metric_keys) else SCORE_SCALE


def scores_as_fractions(metrics: Mapping[str, float], tags: Mapping[str, str]) -> dict[str, float]:
    """A run's metrics with its ``eval/<bench>/<score>`` values in fractions, whichever unit
    they were logged in (the tag ``score_unit``; absent: fractions, as older versions logged)."""
    if tags.get(Tag.SCORE_UNIT) != SCORE_UNIT:
        return dict(metrics)
    return {k: v / SCORE_SCALE if is_score_key(k) else v for k, v in metrics.items()}


# --------------------------------------------------------------------------- params


def _param_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return repr(value) if isinstance(value, float) else str(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> ``{"train.max_steps": "200", ...}``; lists and empty dicts as JSON."""
    out: dict[str, str] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = _param_value(value)[:6000]
    return out


# --------------------------------------------------------------------------- URIs


def project_root(start: str | os.PathLike[str] | None = None) -> Path:
    """The nearest ancestor of ``start`` (default: cwd) holding ``.git``, else ``start`` itself."""
    here = Path(start or os.getcwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / ".git").exists():
            return candidate
    return here


def default_tracking_uri(root: str | os.PathLike[str] | None = None) -> str:
    """``sqlite:///<repo-or-cwd>/mlflow.db``."""
    return f"sqlite:///{project_root(root) / DEFAULT_DB_NAME}"


def normalize_uri(uri: str, base: str | os.PathLike[str] | None = None) -> str:
    """Make a relative ``sqlite:///x.db``, ``file:x`` or plain path absolute (so every
    worker process opens the same store, whatever its working directory)."""
    uri = uri.strip()
    here = Path(base or os.getcwd())
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        path = uri[len("sqlite:///") :]
        if path and path != ":memory:" and not path.startswith("/"):
            return f"sqlite:///{(here / path).resolve()}"
        return uri
    scheme = _scheme(uri)
    if uri.lower() in DATABRICKS_SCHEMES:  # MLflow reads these bare names as schemes
        return uri
    if scheme == "":
        return str((here / Path(uri).expanduser()).resolve()) if uri else uri
    if scheme == "file":
        parts = urllib.parse.urlsplit(uri)
        if parts.netloc in ("", "localhost") and parts.path:
            return Path(here / urllib.parse.unquote(parts.path)).resolve().as_uri()
    return uri


def _scheme(uri: str) -> str:
    """The URI's scheme, lower case, without ``+driver``; "" for a plain path (a Windows
    drive letter included)."""
    scheme = urllib.parse.urlsplit(uri).scheme.lower().split("+", 1)[0]
    return "" if len(scheme) == 1 else scheme


# The kinds of MLflow tracking store (MLflow's own registry; plugins add schemes).
SQLALCHEMY_SCHEMES = ("postgresql", "mysql", "mssql")
DATABRICKS_SCHEMES = ("databricks", "databricks-uc", "uc")


@dataclass(frozen=True)
class StoreURI:
    """A tracking URI parsed once: what it is and where it points, passed instead of the
    string (which every step of a sweep's start used to parse again).

    Attributes:
        uri: the URI as MLflow is given it (relative paths made absolute).
        kind: ``sqlite``, ``file`` (MLflow's file store: ``file:`` or a plain path),
            ``http`` (``http``/``https``), ``sql`` (PostgreSQL, MySQL, SQL Server),
            ``databricks`` or ``other`` (a scheme some MLflow plugin may register).
        scheme: the URI's scheme without ``+driver`` ("" for a plain path).
        path: the SQLite file (None for an in-memory database), or the file store's folder.
    """

    uri: str
    kind: str
    scheme: str
    path: Path | None = None

    @classmethod
    def parse(cls, uri: str | StoreURI, base: str | os.PathLike[str] | None = None) -> StoreURI:
        if isinstance(uri, StoreURI):
            return uri
        text = normalize_uri(str(uri), base)
        scheme = text.lower() if text.lower() in DATABRICKS_SCHEMES else _scheme(text)
        if scheme == "sqlite":
            return cls(text, "sqlite", scheme, sqlite_path(text))
        if scheme in ("", "file"):
            raw = urllib.parse.unquote(urllib.parse.urlsplit(text).path) if scheme else text
            return cls(text, "file", scheme, Path(raw).expanduser() if raw else None)
        if scheme in ("http", "https"):
            return cls(text, "http", scheme)
        if scheme in SQLALCHEMY_SCHEMES:
            return cls(text, "sql", scheme)
        if scheme in DATABRICKS_SCHEMES:
            return cls(text, "databricks", scheme)
        return cls(text, "other", scheme)

    @property
    def is_http(self) -> bool:
        return self.kind == "http"

    @property
    def sqlite(self) -> Path | None:
        """The SQLite file of a ``sqlite:///`` URI, else None."""
        return self.path if self.kind == "sqlite" else None

    def __str__(self) -> str:
        return self.uri


def resolve_tracking_uri(configured: str | None, root: str | os.PathLike[str] | None = None) -> str:
    """The sweep's ``tracking.uri``, else ``$MLFLOW_TRACKING_URI``, else :func:`default_tracking_uri`."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(root)
    return normalize_uri(uri)


def tracking_uri_source(configured: str | None, flag: str = "tracking.uri") -> str:
    """Where :func:`resolve_tracking_uri` takes the URI from, as error messages name it:
    ``flag`` (the config key or option) when given, else ``MLFLOW_TRACKING_URI`` when set,
    else the default store."""
    if configured:
        return flag
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return "MLFLOW_TRACKING_URI"
    return "the default tracking store"


def sqlite_path(uri: str | StoreURI) -> Path | None:
    """The database file of a ``sqlite:///`` URI, else None."""
    if isinstance(uri, StoreURI):
        return uri.sqlite
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///") :]
        if path and path != ":memory:":
            return Path(path)
    return None


@lru_cache(maxsize=8)
def git_commit(root: str | None = None) -> str:
    """``git rev-parse HEAD`` of the project (``+dirty`` when the tree has changes); outside a
    checkout, the commit bicc-lab itself was installed from (:func:`package_commit`)."""
    return _checkout_commit(str(project_root(root))) or package_commit()


def package_commit() -> str:
    """Which bicc-lab ran, for a user who runs it outside any checkout (a wheel in a job's
    venv): the commit pip recorded (``pip install git+...``), else that of the checkout the
    package is imported from (an editable install), else ``bicc-lab==<version>``."""
    from importlib import metadata

    import bicc_lab

    try:
        direct = json.loads(metadata.distribution("bicc-lab").read_text("direct_url.json") or "{}")
        commit = (direct.get("vcs_info") or {}).get("commit_id")
        if commit:
            return str(commit)
    except (metadata.PackageNotFoundError, json.JSONDecodeError, AttributeError):
        pass
    source = Path(bicc_lab.__file__).resolve().parent.parent
    if (source / ".git").exists():
        commit = _checkout_commit(str(source))
        if commit:
            return commit
    return f"bicc-lab=={bicc_lab.__version__}"


def _checkout_commit(cwd: str) -> str:
    """``git rev-parse HEAD`` in ``cwd`` (``+dirty`` when the tree has changes); "" if none."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        if not sha:
            return ""
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return f"{sha}+dirty" if dirty else sha
    except (OSError, subprocess.SubprocessError):
        return ""
