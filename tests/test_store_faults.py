"""Store faults are one line and exit 2 for every command that touches the MLflow store.

Fast: :func:`check_tracking_uri` on each fault (unknown scheme, uncreatable or unwritable
place, a directory, a corrupt / foreign / malformed file, an unreachable server, a database
locked by another process, named by its pid); the CLI commands (``sweep plan|status|run``,
``report``, ``tune run``) on each fault print ``error: ...`` and exit 2; the commands that
only read never create (or fill in) a store.

Slow: three processes creating one fresh store at once; a store locked in the middle of the work (MLflow's own 20 s busy wait, then ours);
two ``sweep run`` processes started together on a fresh store run every cell exactly once
and leave a usable store.
"""

from __future__ import annotations

import shutil
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import subprocess_env

from bicc_lab.errors import UserError
from bicc_lab.tracking.check import StoreError, check_tracking_uri, lock_holders


def _write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: nothing listens there


@pytest.fixture(scope="module")
def bad_stores(tmp_path_factory) -> dict[str, tuple[str, str]]:
    """name -> (tracking URI, a fragment of its one-line error)."""
    root = tmp_path_factory.mktemp("bad-stores")
    (root / "text.db").write_text("hello, this is not a database\n")
    conn = sqlite3.connect(root / "foreign.db")
    conn.execute("CREATE TABLE users (id INTEGER, name TEXT)")
    conn.execute("CREATE TABLE orders (id INTEGER)")
    conn.commit()
    conn.close()
    data = (root / "foreign.db").read_bytes()
    (root / "malformed.db").write_bytes(data[:100] + b"\xff" * (len(data) - 100))
    (root / "a-dir.db").mkdir()
    port = _closed_port()
    return {
        "scheme": ("foo://x", "unknown scheme 'foo://'"),
        "uncreatable": ("sqlite:////proc/bicc-lab-nope/mlflow.db", "cannot create the directory /proc/bicc-lab-nope"),
        "under a file": (f"sqlite:///{root / 'text.db' / 'mlflow.db'}", f"{root / 'text.db'} is a file, not a directory"),
        "directory": (f"sqlite:///{root / 'a-dir.db'}", "is a directory, not an SQLite file"),
        "corrupt": (f"sqlite:///{root / 'text.db'}", "is not an SQLite database (a corrupt file"),
        "foreign": (f"sqlite:///{root / 'foreign.db'}", "SQLite database of something else (tables: orders, users)"),
        "malformed": (f"sqlite:///{root / 'malformed.db'}", "database disk image is malformed"),
        "server": (f"http://127.0.0.1:{port}", f"cannot reach the MLflow tracking server at http://127.0.0.1:{port}"),
        "memory": ("sqlite:///:memory:", "in-memory store is lost"),
    }


@pytest.fixture(scope="module")
def template_store(tmp_path_factory) -> Path:
    """An MLflow SQLite store made once (building its schema takes seconds); tests copy it."""
    from bicc_lab.tracking.store import Tracker

    db = tmp_path_factory.mktemp("template") / "mlflow.db"
    Tracker(f"sqlite:///{db}").ensure_experiment("x")
    return db


@pytest.fixture
def fresh_store(template_store, tmp_path) -> Path:
    """A real MLflow store of this test's own (a copy of the template)."""
    db = tmp_path / "mlflow.db"
    shutil.copyfile(template_store, db)
    return db


# which faults a command that only reads reports (a missing place is "nothing tracked yet")
WRITE_ONLY = {"uncreatable", "under a file"}


@pytest.mark.parametrize(
    "name",
    ["scheme", "uncreatable", "under a file", "directory", "corrupt", "foreign", "malformed", "server", "memory"],
)
def test_check_tracking_uri_names_each_fault(bad_stores, name):
    uri, fragment = bad_stores[name]
    with pytest.raises(StoreError) as info:
        check_tracking_uri(uri, create=True)
    message = str(info.value)
    assert fragment in message and "\n" not in message
    assert isinstance(info.value, UserError)
    if name in WRITE_ONLY:
        check_tracking_uri(uri, create=False)  # reading a store that is not there: fine
    else:
        with pytest.raises(StoreError, match="."):
            check_tracking_uri(uri, create=False)


def test_a_half_created_store_is_named_incomplete(fresh_store):
    db = fresh_store
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA foreign_keys = OFF")
    conn.execute("DROP TABLE metrics")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match=r"mlflow.db is incomplete \(no table metrics; half-created\?\)"):
        check_tracking_uri(f"sqlite:///{db}", create=False)


def test_good_stores_pass_and_reading_creates_nothing(tmp_path, monkeypatch):
    missing = tmp_path / "new" / "deeper" / "mlflow.db"
    check_tracking_uri(f"sqlite:///{missing}", create=False)
    assert not (tmp_path / "new").exists()
    check_tracking_uri(f"sqlite:///{missing}", create=True)  # the folder can be made (and is)
    assert missing.parent.is_dir() and not missing.exists()
    assert list(missing.parent.iterdir()) == []  # the write probe cleaned up
    (tmp_path / "empty.db").touch()  # an empty database: MLflow fills it in on first write
    check_tracking_uri(f"sqlite:///{tmp_path / 'empty.db'}", create=True)
    assert (tmp_path / "empty.db").stat().st_size == 0
    # MLflow's file store: MLflow refuses it unless MLFLOW_ALLOW_FILE_STORE=true
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    check_tracking_uri(str(tmp_path / "mlruns"), create=True)
    assert not (tmp_path / "mlruns").exists()  # checked, not made


def test_a_real_store_passes(fresh_store):
    uri = f"sqlite:///{fresh_store}"
    check_tracking_uri(uri, create=True)
    check_tracking_uri(uri, create=False)


def test_reading_tracker_never_creates_a_store(tmp_path):
    from bicc_lab.tracking.store import Tracker

    db = tmp_path / "mlflow.db"
    with pytest.raises(StoreError, match=r"no MLflow store at .* \(nothing was tracked there yet\)"):
        Tracker(f"sqlite:///{db}", create=False)
    assert not db.exists()
    db.touch()
    with pytest.raises(StoreError, match="no MLflow store"):
        Tracker(f"sqlite:///{db}", create=False)
    assert db.stat().st_size == 0


HOLDER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(120)
"""


@pytest.fixture
def locked_store(fresh_store):
    """A real MLflow store, locked (EXCLUSIVE: no reader either) by another process."""
    db = fresh_store
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(db)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield db, holder.pid
    finally:
        holder.kill()
        holder.wait(timeout=30)


def test_a_locked_store_names_the_process_that_holds_it(locked_store, monkeypatch):
    db, pid = locked_store
    assert [p for p, _ in lock_holders(db)] == [pid]
    monkeypatch.setenv("BICC_LAB_STORE_WAIT_S", "1")
    start = time.monotonic()
    with pytest.raises(StoreError) as info:
        check_tracking_uri(f"sqlite:///{db}", create=False)
    assert 1.0 <= time.monotonic() - start < 10
    message = str(info.value)
    assert f"MLflow store {db} stayed locked by another writer for 1 s (BICC_LAB_STORE_WAIT_S)" in message
    assert f"held by pid {pid} (" in message and "-c import sqlite3, sys, time" in message
    assert "\n" not in message


def test_store_wait_must_be_a_number(monkeypatch, tmp_path):
    monkeypatch.setenv("BICC_LAB_STORE_WAIT_S", "soon")
    (tmp_path / "x.db").write_bytes(b"")
    from bicc_lab.tracking.check import store_wait_s

    with pytest.raises(StoreError, match="BICC_LAB_STORE_WAIT_S='soon': expected a number of seconds"):
        store_wait_s()


# --------------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def project(tmp_path_factory, untrained_tiny_dir):
    root = tmp_path_factory.mktemp("faults-project")
    _write(
        root / "base.yaml",
        f"""
        name: t
        model: {{name: {untrained_tiny_dir}}}
        train: {{max_steps: 2, num_generations: 4, per_device_train_batch_size: 8,
                 max_completion_length: 4, logging_steps: 1, save_steps: 1}}
        eval: {{enabled: false}}
        """,
    )
    _write(root / "s.yaml", "name: s\nbase: base.yaml\ngrid:\n  seed: [0, 1, 2]\nmax_parallel: 2\n")
    _write(
        root / "study.yaml",
        """
        name: study
        base: base.yaml
        search:
          params:
            train.learning_rate: [1.0e-3, 1.0e-5]
          objective: reward
          n_trials: 2
        """,
    )
    return root


def _main(args: list[str], cwd: Path, monkeypatch, capsys) -> tuple[int, str, str]:
    """The CLI in this process (what the console script runs): exit code, stdout, stderr."""
    from bicc_lab.cli.main import main

    monkeypatch.chdir(cwd)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(SystemExit) as info:
        main(args)
    out = capsys.readouterr()
    code = info.value.code
    return (code if isinstance(code, int) else 1), out.out, out.err


COMMANDS = {
    "sweep plan": lambda uri: ["sweep", "plan", "s.yaml", "--runs-dir", "runs", "--set", f"tracking.uri={uri}"],
    "sweep status": lambda uri: ["sweep", "status", "s.yaml", "--runs-dir", "runs", "--set", f"tracking.uri={uri}"],
    "sweep run": lambda uri: ["sweep", "run", "s.yaml", "--runs-dir", "runs", "--set", f"tracking.uri={uri}"],
    "report": lambda uri: ["report", "s.yaml", "--tracking-uri", uri, "--out", "reports", "--no-plots"],
    "tune run": lambda uri: ["tune", "run", "study.yaml", "--runs-dir", "runs", "--reports-dir", "reports",
                             "--set", f"tracking.uri={uri}"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("fault", ["scheme", "uncreatable", "directory", "corrupt", "foreign", "server"])
def test_every_store_command_says_one_line_and_exits_2(
    project, bad_stores, command, fault, monkeypatch, capsys
):
    uri, fragment = bad_stores[fault]
    reads_only = command in ("sweep plan", "sweep status", "report")
    code, out, err = _main(COMMANDS[command](uri), project, monkeypatch, capsys)
    if reads_only and fault in WRITE_ONLY:
        # nothing can have been tracked where no file can be: not an error for plan/status
        if command == "report":
            assert code == 2 and err.startswith("error: no MLflow store at"), err
        else:
            assert code == 0 and "nothing tracked yet" in out, out + err
        assert not Path("/proc/bicc-lab-nope").exists()
        return
    lines = err.strip().splitlines()
    assert code == 2, out + err
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], err
    assert "Traceback" not in out + err
    assert not (project / "runs" / "s").exists() or command != "sweep run"  # nothing started


def test_commands_that_read_never_create_a_store(project, monkeypatch, capsys, tmp_path):
    db = tmp_path / "sub" / "mlflow.db"
    uri = f"sqlite:///{db}"
    for command in ("sweep plan", "sweep status"):
        code, out, err = _main(COMMANDS[command](uri), project, monkeypatch, capsys)
        assert code == 0 and "nothing tracked yet" in out, out + err
    code, out, err = _main(COMMANDS["report"](uri), project, monkeypatch, capsys)
    assert code == 2 and err.strip() == f"error: no MLflow store at {db} (nothing was tracked there)"
    assert not (tmp_path / "sub").exists()
    db.parent.mkdir()
    db.touch()  # an empty file stays empty: no tables created by a reader
    for command in ("sweep status", "report"):
        _main(COMMANDS[command](uri), project, monkeypatch, capsys)
    assert db.stat().st_size == 0


def test_a_locked_store_is_one_line_for_the_cli(project, locked_store, monkeypatch, capsys):
    db, pid = locked_store
    monkeypatch.setenv("BICC_LAB_STORE_WAIT_S", "1")
    for command in ("sweep status", "sweep run", "report"):
        code, out, err = _main(COMMANDS[command](f"sqlite:///{db}"), project, monkeypatch, capsys)
        assert code == 2, out + err
        assert err.startswith(f"error: MLflow store {db} stayed locked") and f"pid {pid}" in err, err
        assert len(err.strip().splitlines()) == 1


# --------------------------------------------------------------------------- slow


@pytest.mark.slow
def test_a_store_locked_mid_work_ends_in_one_line(locked_store, monkeypatch, capfd):
    """After the preflight: MLflow waits 20 s itself (its busy timeout), then we give up,
    without MLflow's logged tracebacks of the locked queries."""
    from bicc_lab.tracking.store import Tracker

    db, pid = locked_store
    monkeypatch.setenv("BICC_LAB_STORE_WAIT_S", "1")
    capfd.readouterr()
    with pytest.raises(StoreError) as info:  # building the client reads the tables already
        Tracker(f"sqlite:///{db}").ensure_experiment("y")
    assert f"held by pid {pid}" in str(info.value)
    printed = capfd.readouterr()
    assert "Traceback" not in printed.out + printed.err


def _cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "bicc_lab.cli.main", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
def test_two_sweep_runs_on_a_fresh_store_run_each_cell_once(project, tmp_path):
    from bicc_lab.tracking.store import Tracker

    env = subprocess_env(project / "cache")
    db = tmp_path / "store" / "mlflow.db"  # neither the file nor its folder exist yet
    uri = f"sqlite:///{db}"
    where = ["s.yaml", "--runs-dir", str(tmp_path / "runs"), "--set", f"tracking.uri={uri}"]
    args = ["sweep", "run", *where, "--max-parallel", "1"]
    procs = [_cli(args, env, project) for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, text in zip(procs, outputs, strict=True):
        assert p.returncode == 0, text
        assert "Traceback" not in text
    tracker = Tracker(uri, create=False)
    exp = tracker.experiment_id("s")
    assert exp is not None
    cells = tracker.cell_runs(exp)
    assert sorted(r.cell_id for r in cells) == sorted({r.cell_id for r in cells})  # no duplicates
    assert len(cells) == 3 and all(r.status == "FINISHED" for r in cells)
    assert len(tracker.search(exp, "tags.role = 'sweep'")) == 1
    # the store is usable afterwards: status reads it, a third run finds nothing to do
    status = subprocess.run(
        [sys.executable, "-m", "bicc_lab.cli.main", "sweep", "status", *where],
        cwd=project, env=env, capture_output=True, text=True, timeout=300,
    )
    assert status.returncode == 0 and "3 finished" in status.stdout, status.stdout + status.stderr
    third = subprocess.run(
        [sys.executable, "-m", "bicc_lab.cli.main", *args],
        cwd=project, env=env, capture_output=True, text=True, timeout=300,
    )
    assert third.returncode == 0 and "3/3 finished (0 now, 3 before)" in third.stdout, third.stdout
    assert not list(db.parent.glob(".mlflow.db.*.tmp*"))  # no half-built store left behind


@pytest.mark.parametrize("command", ["status", "best", "run"])
@pytest.mark.parametrize("fault", ["directory", "corrupt", "foreign"])
def test_a_bad_optuna_storage_is_one_line_for_tune(project, bad_stores, command, fault, monkeypatch, capsys):
    uri, _ = bad_stores[fault]
    fragment = {
        "directory": "is a directory, not an SQLite file",
        "corrupt": "is not an SQLite database (a corrupt file",
        "foreign": "SQLite database of something else (tables: orders, users), not an Optuna one; "
        "choose another search.storage",
    }[fault]
    args = ["tune", command, "study.yaml", "--runs-dir", "runs", "--set", f"search.storage={uri}"]
    code, out, err = _main(args, project, monkeypatch, capsys)
    assert code == 2, out + err
    assert err.startswith("error: Optuna storage ") and fragment in err and len(err.strip().splitlines()) == 1, err
    assert not (project / "mlflow.db").exists()  # `tune run` stopped before creating anything


RACER = """
import sys, time
from pathlib import Path
from bicc_lab.tracking.store import Tracker

go = Path(sys.argv[2])
while not go.exists():
    time.sleep(0.01)
print(Tracker(sys.argv[1]).ensure_experiment("race"), flush=True)
"""


@pytest.mark.slow
def test_processes_creating_one_fresh_store_at_once_all_get_it(tmp_path):
    """Three processes make the same new SQLite store at the same instant (the store is
    built aside and linked in): all succeed, with one experiment, and no leftovers."""
    db = tmp_path / "store" / "mlflow.db"
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, f"sqlite:///{db}", str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    time.sleep(3)  # let them import MLflow first, so that they really start together
    go.touch()
    results = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err[-3000:]
    assert len({out.strip() for out, _ in results}) == 1
    check_tracking_uri(f"sqlite:///{db}", create=True)
    assert sorted(p.name for p in db.parent.iterdir()) == ["mlflow.db"]
