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

import importlib.util
import os
import sqlite3
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from bicc_lab.errors import UserError
from bicc_lab.tracking.naming import DEFAULT_DB_NAME, StoreURI, sqlite_path

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
    # (a Databricks store without credentials warns before the error that says so)
    logging.getLogger("mlflow.utils.databricks_utils").setLevel(logging.ERROR)


def store_wait_s() -> float:
    """``$BICC_LAB_STORE_WAIT_S`` (seconds a locked store is waited for), default 60."""
    from bicc_lab.envvars import EnvError, env_seconds

    try:
        return env_seconds(STORE_WAIT_ENV, STORE_WAIT_S, allow_zero=True)
    except EnvError as exc:
        raise StoreError(str(exc)) from None


def check_tracking_uri(uri: str | StoreURI, *, create: bool, what: str = "tracking URI") -> StoreURI:
    """Raise :class:`StoreError` unless ``uri`` names an MLflow store that can be used;
    return it parsed (:class:`StoreURI`, to pass on instead of the string).

    Every form MLflow accepts either passes or is one line: ``sqlite:///`` files, http(s)
    servers (``/health`` answers), MLflow's file store (``file:`` or a plain path; MLflow
    refuses it unless ``MLFLOW_ALLOW_FILE_STORE=true``), SQL servers (the driver is
    installed, the port answers), Databricks (its SDK is installed), a plugin's scheme.

    ``create``: the caller will write (and may create the SQLite file and its folders):
    the location must be writable or creatable. Without it a missing SQLite file is fine
    (nothing was tracked yet) and nothing is created. ``what`` names where the URI came
    from in the message (``tracking.uri``, ``--tracking-uri``).
    """
    store = StoreURI.parse(uri)
    shown = str(uri)
    if store.kind == "other" and store.scheme not in _plugin_schemes():
        raise StoreError(
            f"{what} {shown!r}: unknown scheme {store.scheme + '://'!r}; expected sqlite:///<file>.db "
            "or http(s)://<host>:<port> of an MLflow server (or postgresql://, mysql://, "
            "mssql://, databricks)"
        )
    if store.kind == "http":
        check_server(store.uri, what=what)
    elif store.kind == "sqlite":
        if store.path is None:
            raise StoreError(
                f"{what} {shown!r}: not a database file; expected sqlite:///relative/path.db or "
                "sqlite:////absolute/path.db (an in-memory store is lost when its process ends)"
            )
        check_sqlite_store(store.path, create=create)
    elif store.kind == "file":
        _check_file_store(store, shown, create=create, what=what)
    elif store.kind == "sql":
        _check_sql_server(store, shown, what=what)
    elif store.kind == "databricks" and importlib.util.find_spec("databricks.sdk") is None:
        raise StoreError(
            f"{what} {shown!r}: MLflow needs the databricks-sdk package for a Databricks store "
            "(pip install databricks-sdk)"
        )
    return store


def _truthy(name: str) -> bool:
    """An MLflow boolean environment variable: true/1 or false/0 (MLflow refuses others)."""
    raw = os.environ.get(name, "").strip().lower()
    if raw and raw not in ("true", "false", "1", "0"):
        raise StoreError(f"{name}={raw!r}: expected true or false (MLflow accepts true, false, 1, 0)")
    return raw in ("true", "1")


def _check_file_store(store: StoreURI, shown: str, *, create: bool, what: str) -> None:
    """MLflow's file store: refused by MLflow itself unless MLFLOW_ALLOW_FILE_STORE=true;
    then a directory that can be written. Creates nothing."""
    path = store.path
    if path is None:
        raise StoreError(f"{what} {shown!r}: no path; expected sqlite:///<file>.db")
    db = f"sqlite:///{path.parent / DEFAULT_DB_NAME}"
    if not _truthy("MLFLOW_ALLOW_FILE_STORE"):
        raise StoreError(
            f"{what} {shown!r}: an MLflow file store, which MLflow refuses (maintenance mode) "
            f"unless MLFLOW_ALLOW_FILE_STORE=true; use an SQLite store, e.g. {db} "
            "(`mlflow migrate-filestore` moves existing runs there)"
        )
    if path.exists() and not path.is_dir():
        raise StoreError(
            f"{what} {shown!r}: {path} is a file, but an MLflow file store is a directory; "
            "for an SQLite store write sqlite:///" + str(path)
        )
    if create:
        from bicc_lab.fileio import check_writable_dir

        try:
            check_writable_dir(path, f"MLflow file store {path}")
        except UserError as exc:
            raise StoreError(str(exc)) from None


# The Python driver SQLAlchemy loads for each database (default first) and its pip name.
_SQL_DRIVERS = {
    "postgresql": ("psycopg2", "psycopg2-binary", 5432),
    "mysql": ("MySQLdb", "mysqlclient", 3306),
    "mssql": ("pyodbc", "pyodbc", 1433),
}
_SQL_DRIVER_MODULES = {
    "psycopg2": "psycopg2", "psycopg": "psycopg", "pg8000": "pg8000", "asyncpg": "asyncpg",
    "psycopg2cffi": "psycopg2cffi", "pymysql": "pymysql", "mysqldb": "MySQLdb",
    "mysqlconnector": "mysql.connector", "mariadbconnector": "mariadb", "pyodbc": "pyodbc",
    "pymssql": "pymssql", "aiomysql": "aiomysql", "asyncmy": "asyncmy",
}


def _check_sql_server(store: StoreURI, shown: str, *, what: str, timeout: float = 5.0) -> None:
    """A PostgreSQL / MySQL / SQL Server store: SQLAlchemy and the URI's driver are installed
    and the server's port answers (one TCP connect, ``timeout`` seconds)."""
    import socket

    parts = urllib.parse.urlsplit(store.uri)
    default_module, pip_name, port = _SQL_DRIVERS[store.scheme]
    driver = parts.scheme.lower().partition("+")[2]
    module = _SQL_DRIVER_MODULES.get(driver, driver) if driver else default_module
    for needed, package in (("sqlalchemy", "sqlalchemy"), (module, pip_name if not driver else driver)):
        if importlib.util.find_spec(needed.split(".")[0]) is None:
            raise StoreError(
                f"{what} {shown!r}: the Python package {needed} is not installed "
                f"(pip install {package}), which MLflow needs for a {store.scheme} store"
            )
    host = parts.hostname
    if not host:
        return  # a socket path or a DSN in the query: the driver knows
    try:
        port = parts.port or port
    except ValueError:
        raise StoreError(f"{what} {shown!r}: the port is not a number") from None
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        raise StoreError(
            f"cannot reach the {store.scheme} server of {what} at {host}:{port} ({exc.strerror or exc})"
        ) from None


def _plugin_schemes() -> set[str]:
    """Tracking-store schemes MLflow plugins register (entry point group mlflow.tracking_store)."""
    from importlib.metadata import entry_points

    try:
        return {ep.name.lower() for ep in entry_points(group="mlflow.tracking_store")}
    except Exception:  # noqa: BLE001 - a broken distribution's metadata: no plugins
        return set()


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


def store_initialised(uri: str | StoreURI) -> bool:
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
