"""Is the MLflow store usable? One-line answers before any work starts. Standard library only.

:func:`check_tracking_uri` is part of every entry point's preflight (``train``, ``sweep
run``, ``tune run``, ``eval``) and of the commands that only read (``sweep plan|status``,
``report``): a wrong URI, an unwritable place, a directory, a corrupt or foreign file, an
unreachable server or a database locked by another process is a :class:`StoreError` (a
:class:`~bicc_lab.errors.UserError`: ``error: ...``, exit 2), never a traceback.

A locked SQLite database is waited for with back-off up to ``$BICC_LAB_STORE_WAIT_S``
seconds (default :data:`STORE_WAIT_S`); then the error names the process holding the lock
(from ``/proc/locks``) or, failing that, the processes that have the file open.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from bicc_lab.errors import UserError
from bicc_lab.tracking.naming import sqlite_path

__all__ = [
    "STORE_WAIT_ENV",
    "STORE_WAIT_S",
    "StoreError",
    "check_optuna_storage",
    "check_tracking_uri",
    "lock_holders",
    "locked_message",
    "quiet_store_logs",
    "store_initialised",
    "store_wait_s",
]

STORE_WAIT_ENV = "BICC_LAB_STORE_WAIT_S"
STORE_WAIT_S = 60.0
"""How long a locked SQLite store is waited for before giving up (seconds)."""

# Schemes MLflow has a tracking store for; "" is a plain path (MLflow's file store).
_SQLALCHEMY_SCHEMES = ("postgresql", "mysql", "mssql")
_OTHER_SCHEMES = ("", "file", "databricks", "http", "https", "sqlite")
_SQLITE_MAGIC = b"SQLite format 3\x00"
# Tables every MLflow tracking database has, whatever its schema version.
_MLFLOW_TABLES = {"experiments", "runs", "metrics", "params", "tags"}


class StoreError(UserError):
    """The MLflow store cannot be used as configured (one line, exit 2)."""


def quiet_store_logs() -> None:
    """MLflow logs a full traceback for every SQL error it then raises, a locked database
    included: callers turn those errors into one line, so the tracebacks are noise."""
    import logging

    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


def store_wait_s() -> float:
    """``$BICC_LAB_STORE_WAIT_S`` (seconds a locked store is waited for), default 60."""
    from bicc_lab.envvars import EnvError, env_seconds

    try:
        return env_seconds(STORE_WAIT_ENV, STORE_WAIT_S, allow_zero=True)
    except EnvError as exc:
        raise StoreError(str(exc)) from None


def check_tracking_uri(uri: str, *, create: bool, what: str = "tracking URI") -> None:
    """Raise :class:`StoreError` unless ``uri`` names an MLflow store that can be used.

    ``create``: the caller will write (and may create the SQLite file and its folders):
    the location must be writable or creatable. Without it a missing SQLite file is fine
    (nothing was tracked yet) and nothing is created. ``what`` names where the URI came
    from in the message (``tracking.uri``, ``--tracking-uri``).
    """
    scheme = urllib.parse.urlsplit(uri).scheme.lower().split("+", 1)[0]
    if len(scheme) == 1:  # a Windows drive letter, i.e. a plain path
        scheme = ""
    if scheme not in _OTHER_SCHEMES and scheme not in _SQLALCHEMY_SCHEMES:
        raise StoreError(
            f"{what} {uri!r}: unknown scheme {scheme + '://'!r}; expected sqlite:///<file>.db "
            "or http(s)://<host>:<port> of an MLflow server"
        )
    if scheme in ("http", "https"):
        check_server(uri, what=what)
    elif scheme == "sqlite":
        db = sqlite_path(uri)
        if db is None:
            raise StoreError(
                f"{what} {uri!r}: not a database file; expected sqlite:///relative/path.db or "
                "sqlite:////absolute/path.db (an in-memory store is lost when its process ends)"
            )
        check_sqlite_store(db, create=create)
    elif scheme in ("", "file"):
        path = Path(urllib.parse.urlsplit(uri).path if scheme else uri).expanduser()
        if path.exists() and not path.is_dir():
            raise StoreError(
                f"{what} {uri!r}: {path} is a file, but an MLflow file store is a directory; "
                "for an SQLite store write sqlite:///" + str(path)
            )
        if create:
            _check_creatable_dir(path, f"MLflow store {path}")


def check_server(uri: str, *, what: str = "tracking URI", timeout: float = 10.0) -> None:
    """GET ``<uri>/health``: a wrong server address fails in seconds, not after minutes of retries."""
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - user's URI
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise StoreError(f"cannot reach the MLflow tracking server at {uri} ({reason})") from None
    if status >= 400:
        raise StoreError(f"MLflow server at {uri} answered HTTP {status} on /health ({what})")


def check_sqlite_store(
    db: Path,
    *,
    create: bool,
    kind: str = "MLflow store",
    tables: frozenset[str] | set[str] = frozenset(),
    key: str = "tracking.uri",
) -> None:
    """The SQLite file ``db`` is (or can become) a ``kind`` (with ``tables``; default: an
    MLflow store) that this process can use. ``key`` is the setting to change."""
    db = Path(db)
    expected = set(tables) or _MLFLOW_TABLES
    if db.is_dir():
        raise StoreError(
            f"{kind} {db} is a directory, not an SQLite file; name a file, "
            f"e.g. sqlite:///{db / 'mlflow.db'}"
        )
    if not db.exists():
        if create:
            _check_creatable_dir(db.parent, f"{kind} {db}")
        return
    if not db.is_file():
        raise StoreError(f"{kind} {db} is not a regular file")
    try:
        with open(db, "r+b" if create else "rb") as handle:
            header = handle.read(len(_SQLITE_MAGIC))
    except OSError as exc:
        mode = "written" if create else "read"
        raise StoreError(f"{kind} {db} cannot be {mode} ({exc.strerror or exc})") from None
    if not header:
        return  # an empty file is an empty database: filled in on first write
    if header != _SQLITE_MAGIC:
        raise StoreError(
            f"{kind} {db} is not an SQLite database (a corrupt file, or another kind of file)"
        )
    if create:
        _check_creatable_dir(db.parent, f"{kind} {db}")  # SQLite writes its journal there
    found = _sqlite_tables(db, kind)
    if found & expected and not expected <= found:
        missing = ", ".join(sorted(expected - found))
        raise StoreError(
            f"{kind} {db} is incomplete (no table {missing}; half-created?): move it away "
            f"and start again, or choose another {key}"
        )
    if found and not expected <= found:
        shown = ", ".join(sorted(found)[:5]) + (", ..." if len(found) > 5 else "")
        raise StoreError(
            f"{kind} {db} is an SQLite database of something else (tables: {shown}), "
            f"not an {kind.split()[0]} one; choose another {key}"
        )


def check_optuna_storage(url: str, *, create: bool) -> None:
    """The same checks for an Optuna storage: ``sqlite:///`` file or ``journal:`` file."""
    if url.startswith("journal:"):
        path = Path(url[len("journal:") :])
        if path.is_dir():
            raise StoreError(f"Optuna journal {path} is a directory, not a file; name a file")
        if create:
            _check_creatable_dir(path.parent, f"Optuna journal {path}")
        return
    db = sqlite_path(url)
    if db is not None:
        check_sqlite_store(
            db, create=create, kind="Optuna storage", tables={"studies", "trials"}, key="search.storage"
        )


def store_initialised(uri: str) -> bool:
    """False for an SQLite store that does not exist yet or is empty (nothing tracked there);
    True for every other URI. Never creates anything."""
    db = sqlite_path(uri)
    if db is None:
        return True
    try:
        return db.is_file() and db.stat().st_size > 0
    except OSError:
        return False


def _sqlite_tables(db: Path, kind: str = "MLflow store") -> set[str]:
    """The table names of an existing database, opened read-only (waits out a writer's lock)."""
    wait = store_wait_s()
    deadline = time.monotonic() + wait
    delay = 0.1
    while True:
        try:
            conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=min(wait, 5.0))
            try:
                rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
            finally:
                conn.close()
            return {str(name) for (name,) in rows}
        except sqlite3.DatabaseError as exc:
            text = str(exc)
            if "locked" in text or "busy" in text:
                if time.monotonic() >= deadline:
                    raise StoreError(locked_message(db, wait, kind)) from None
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            raise StoreError(f"{kind} {db} is corrupt or not an SQLite database ({text})") from None


def _check_creatable_dir(directory: Path, what: str) -> None:
    """``directory`` exists (or can be made) and a file can be created in it."""
    directory = Path(directory).expanduser()
    existing = directory
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise StoreError(f"{what}: {existing} is a file, not a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(
            f"{what}: cannot create the directory {directory} ({exc.strerror or exc})"
        ) from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".bicc-lab-write-test-", dir=directory)
    except OSError as exc:
        raise StoreError(
            f"{what}: cannot write in the directory {directory} ({exc.strerror or exc})"
        ) from None
    os.close(fd)
    os.unlink(probe)


# --------------------------------------------------------------------------- who holds a lock


def lock_holders(path: str | os.PathLike[str]) -> list[tuple[int, str]]:
    """``[(pid, command line)]`` of the other processes locking ``path`` (``/proc/locks``),
    else of those that have it open (``/proc/<pid>/fd``). Linux only; [] elsewhere."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError:
        return []
    me = os.getpid()
    pids: list[int] = []
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        for line in Path("/proc/locks").read_text().splitlines():
            fields = line.split()
            # "1: POSIX  ADVISORY  WRITE 4242 00:2f:123456 1073741824 1073741825"
            if len(fields) >= 6 and fields[5] == dev and fields[4].lstrip("-").isdigit():
                pid = int(fields[4])
                if pid > 0 and pid != me and pid not in pids:
                    pids.append(pid)
    except OSError:
        pass
    if not pids:
        pids = _pids_with_open(p.resolve(), me)
    return [(pid, _cmdline(pid)) for pid in pids]


def _pids_with_open(target: Path, me: int) -> list[int]:
    found: list[int] = []
    try:
        entries = list(Path("/proc").iterdir())
    except OSError:
        return found
    for entry in entries:
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd) == str(target):
                    found.append(int(entry.name))
                    break
        except OSError:
            continue
    return found


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    text = " ".join(part.decode(errors="replace") for part in raw.split(b"\0") if part)
    text = " ".join(text.split())  # one line, whatever the command line held
    return (text[:117] + "...") if len(text) > 120 else (text or "?")


def locked_message(db: str | os.PathLike[str], waited_s: float, kind: str = "MLflow store") -> str:
    """One line: the store stayed locked, and who holds it."""
    holders = lock_holders(db)
    if holders:
        who = "; ".join(f"pid {pid} ({cmd})" for pid, cmd in holders[:3])
        blame = f"held by {who}"
    else:
        blame = "no process on this machine holds it (another machine, over a network filesystem?)"
    return (
        f"{kind} {db} stayed locked by another writer for {waited_s:g} s "
        f"({STORE_WAIT_ENV}); {blame}"
    )
