"""Every environment variable bicc-lab reads, validated in one place: one line per mistake.

:func:`check_environment` runs before any command does its work (the CLI's root callback,
and :func:`bicc_lab.preflight.preflight`), so a value that would only fail deep inside a
worker (``BICC_LAB_HEARTBEAT_S=fast``, a ``BICC_LAB_CACHE`` that is a file) is one
``error: NAME=value: ...`` line and exit 2 instead. The readers (:func:`env_seconds`,
:func:`env_int`) raise the same line when called without the check (a worker process).

``MLFLOW_TRACKING_URI`` is checked where it is used, with the store (its scheme, its
place); ``BICC_LAB_DATA_DIR`` also through ``--data-dir`` (typer reads it there).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from bicc_lab.errors import UserError
from bicc_lab.fileio import check_writable_dir

__all__ = ["CHECKS", "EnvError", "check_environment", "env_int", "env_seconds"]


class EnvError(UserError):
    """An environment variable holds a value bicc-lab cannot use (one line, exit 2)."""


def _raw(name: str) -> str | None:
    """The stripped value of ``name``; None when unset or empty (empty means unset)."""
    value = os.environ.get(name)
    if value is None or not value.strip():
        return None
    return value.strip()


def env_seconds(name: str, default: float, *, allow_zero: bool = False) -> float:
    """``$name`` as a number of seconds (> 0, or >= 0 with ``allow_zero``), else ``default``."""
    raw = _raw(name)
    if raw is None:
        return default
    bound = ">= 0" if allow_zero else "> 0"
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not (value >= 0 if allow_zero else value > 0) or value == float("inf"):
        raise EnvError(f"{name}={raw!r}: expected a number of seconds {bound}, e.g. {name}={default:g}")
    return value


def env_int(name: str, default: int, *, minimum: int = 0) -> int:
    """``$name`` as an integer >= ``minimum``, else ``default`` (e.g. ``RANK`` of torchrun)."""
    raw = _raw(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise EnvError(f"{name}={raw!r}: expected an integer >= {minimum}")
    return value


def _data_dir(name: str, raw: str) -> None:
    path = Path(raw).expanduser()
    if not path.is_dir():
        what = "is a file" if path.exists() else "no such directory"
        raise EnvError(f"{name}={raw}: {what}; expected the directory of the benchmark JSONL files")


def _writable(name: str, raw: str) -> None:
    try:
        check_writable_dir(raw, f"{name}={raw}")
    except UserError as exc:
        raise EnvError(str(exc)) from None


def _replay(name: str, raw: str) -> None:
    if not Path(raw).expanduser().is_dir():
        raise EnvError(f"{name}={raw}: no such directory; expected a directory written by BICC_LAB_ROLLOUT_DUMP")


# Defaults of the seconds variables (their readers pass the same: tracking.naming, tracking.check).
_SECONDS = {"BICC_LAB_HEARTBEAT_S": 15.0, "BICC_LAB_STALE_AFTER_S": 60.0, "BICC_LAB_STORE_WAIT_S": 60.0}


def _seconds(name: str, raw: str) -> None:
    env_seconds(name, _SECONDS[name], allow_zero=name == "BICC_LAB_STORE_WAIT_S")


def _stale(name: str, raw: str) -> None:
    stale = env_seconds(name, _SECONDS[name])
    heartbeat = env_seconds("BICC_LAB_HEARTBEAT_S", _SECONDS["BICC_LAB_HEARTBEAT_S"])
    if stale <= heartbeat:
        raise EnvError(
            f"{name}={raw!r}: must be greater than BICC_LAB_HEARTBEAT_S ({heartbeat:g} s), "
            "else every live cell looks dead between two heartbeats"
        )


def _mp_start(name: str, raw: str) -> None:
    import multiprocessing

    methods = multiprocessing.get_all_start_methods()
    if raw not in methods:
        raise EnvError(f"{name}={raw!r}: expected one of {', '.join(methods)}")


def _host(name: str, raw: str) -> None:
    if any(c.isspace() for c in raw) or "://" in raw or "/" in raw:
        raise EnvError(f"{name}={raw!r}: expected a host name (set by the SLURM launcher; unset it)")


def _int(name: str, raw: str) -> None:
    env_int(name, 0, minimum=1 if name == "WORLD_SIZE" else 0)


#: name -> check of its (non-empty) value; every ``BICC_LAB_*`` of ``cli.main.ENVIRONMENT``
#: and the launcher's rank variables that bicc-lab parses.
CHECKS: dict[str, Callable[[str, str], None]] = {
    "BICC_LAB_DATA_DIR": _data_dir,
    "BICC_LAB_CACHE": _writable,
    "BICC_LAB_HEARTBEAT_S": _seconds,
    "BICC_LAB_STALE_AFTER_S": _stale,
    "BICC_LAB_STORE_WAIT_S": _seconds,
    "BICC_LAB_MP_START": _mp_start,
    "BICC_LAB_ROLLOUT_DUMP": _writable,
    "BICC_LAB_ROLLOUT_REPLAY": _replay,
    "BICC_LAB_VLLM_SERVER_HOST": _host,
    "RANK": _int,
    "WORLD_SIZE": _int,
    "LOCAL_RANK": _int,
}


def check_environment() -> None:
    """Raise :class:`EnvError` for the first variable of :data:`CHECKS` with a bad value."""
    for name, check in CHECKS.items():
        raw = _raw(name)
        if raw is not None:
            check(name, raw)
