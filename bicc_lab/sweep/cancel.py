"""`bicc-lab sweep cancel`: stop a sweep's running cells so that a later `sweep run` resumes them.

Three things may be running a sweep's cells, and each is stopped the way it stops itself:

1. the `sweep run` process that schedules them (its pid is in ``<sweep dir>/runner.pid``):
   SIGTERM, which it handles as Ctrl-C from a script: it stops its local workers (SIGTERM,
   then SIGKILL after its grace) or ``scancel``\\s its SLURM jobs, marks them KILLED, starts
   nothing more, and exits;
2. local workers left without that process (its pid file says which; the cell's lock says
   it is still alive): SIGTERM, then SIGKILL after ``grace_s``;
3. SLURM jobs of the cells (``slurm_job.json``; ``sweep run --detach`` leaves them queued):
   ``scancel``, as for a Ctrl-C'ed ``sweep run``; SLURM sends SIGTERM, then SIGKILL.

A worker that gets SIGTERM marks its own MLflow run KILLED; a cell whose run is still
RUNNING afterwards (SIGKILL, or a job cancelled before its worker could say so) is marked
KILLED here. KILLED cells are resumed by the next plain ``sweep run`` (from their last
checkpoint, into the same MLflow run); a queued SLURM job that never started leaves its cell
pending.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bicc_lab.launch import layout
from bicc_lab.launch.locks import LOCK_NAME, CellLock

#: The pid of the `sweep run` process driving a sweep, in the sweep's directory.
RUNNER_PID = "runner.pid"


@dataclass
class CancelResult:
    runner_pid: int | None = None  # the `sweep run` process that was stopped
    workers: dict[str, int] = field(default_factory=dict)  # cell name -> worker pid signalled here
    jobs: dict[str, str] = field(default_factory=dict)  # cell name -> SLURM job id scancel'ed here
    marked: list[str] = field(default_factory=list)  # cells whose MLflow run was set KILLED here

    @property
    def anything(self) -> bool:
        return bool(self.runner_pid or self.workers or self.jobs or self.marked)


def write_runner_pid(sweep_dir: Path) -> None:
    sweep_dir.mkdir(parents=True, exist_ok=True)
    layout.write_atomic(sweep_dir / RUNNER_PID, f"{os.getpid()}\n")


def clear_runner_pid(sweep_dir: Path) -> None:
    """Remove the pid file if it is still this process's (a later `sweep run` may own it)."""
    path = sweep_dir / RUNNER_PID
    if layout.read_text(path) == str(os.getpid()):
        path.unlink(missing_ok=True)


def cancel_sweep(ctx: Any, *, grace_s: float = 10.0, say=print) -> CancelResult:
    """Stop everything that runs the cells of ``ctx`` (a ``SweepContext``); see the module."""
    result = CancelResult()
    runner = _live_pid(ctx.sweep_dir / RUNNER_PID, "bicc")
    if runner is not None:
        say(f"stopping `sweep run` (pid {runner}): it stops its cells and marks them KILLED")
        os.kill(runner, signal.SIGTERM)
        # Its own stop waits grace_s per worker, and up to grace_s + 30 s for SLURM's queue.
        if _wait_gone([runner], grace_s + 45):
            result.runner_pid = runner
        else:
            say(f"warning: `sweep run` (pid {runner}) is still running after {grace_s + 45:.0f} s")

    cells = {c.cell_id: c for c in ctx.sweep.cells}
    directories = {cid: layout.cell_dir(ctx.runs_dir, ctx.sweep.name, c.name, c.cell_id) for cid, c in cells.items()}
    for cid, directory in directories.items():
        pid = _live_worker(directory)
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            result.workers[cells[cid].name] = pid
    _cancel_slurm_jobs(cells, directories, result)
    if result.workers:
        say(f"sent SIGTERM to {len(result.workers)} local worker(s)")
        if not _wait_gone(list(result.workers.values()), grace_s):
            for pid in result.workers.values():
                _kill(pid, signal.SIGKILL)
            _wait_gone(list(result.workers.values()), 10)
    if result.jobs:
        say(f"scancel {' '.join(result.jobs.values())}")
        _wait_dequeued(list(result.jobs.values()), grace_s + 30)

    touched = set(result.workers) | set(result.jobs)
    if result.runner_pid or touched:
        result.marked = _mark_killed(ctx, cells, directories, only=None if result.runner_pid else touched)
    return result


# ------------------------------------------------------------------ local processes


def _live_pid(path: Path, needle: str) -> int | None:
    """The pid in ``path`` when that process is alive and its command line holds ``needle``
    (a pid file outlives its process, and the pid may be reused by an unrelated one)."""
    text = layout.read_text(path)
    if not text or not text.isdigit():
        return None
    pid = int(text)
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return pid  # no /proc (macOS): the liveness check above is all there is
    return pid if needle in cmdline else None


def _live_worker(directory: Path) -> int | None:
    """The pid of the worker running this cell now: its pid file names a live worker, and
    the cell's lock is held (a worker holds it for its whole life)."""
    pid = _live_pid(directory / layout.PID_FILE, "bicc_lab.launch.worker")
    if pid is None:
        return None
    lock = CellLock(directory / LOCK_NAME)
    if lock.acquire():  # nobody holds it: that worker is over
        lock.release()
        return None
    return pid


def _kill(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie has exited; only its parent has not reaped it yet
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True


def _wait_gone(pids: list[int], timeout: float) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not any(_alive(p) for p in pids):
            return True
        time.sleep(0.2)
    return not any(_alive(p) for p in pids)


# ------------------------------------------------------------------ SLURM


def _cancel_slurm_jobs(cells: dict, directories: dict[str, Path], result: CancelResult) -> None:
    from bicc_lab.launch.slurm import ACTIVE_STATES, _run, _squeue_states, read_job_record

    records = {cid: read_job_record(d) for cid, d in directories.items()}
    ids = {cid: str(r["job_id"]) for cid, r in records.items() if r is not None}
    if not ids:
        return
    queued = _squeue_states()
    active = {cid: job for cid, job in ids.items() if queued.get(job) in ACTIVE_STATES}
    if active:
        _run(["scancel", *sorted(set(active.values()))])
        for cid, job in active.items():
            result.jobs[cells[cid].name] = job


def _wait_dequeued(job_ids: list[str], timeout: float) -> None:
    from bicc_lab.launch.slurm import _squeue_states

    deadline = time.time() + timeout
    while time.time() < deadline and any(j in _squeue_states() for j in job_ids):
        time.sleep(0.5)


# ------------------------------------------------------------------ MLflow


def _mark_killed(ctx: Any, cells: dict, directories: dict[str, Path], only: set[str] | None) -> list[str]:
    """Set KILLED on the runs of stopped cells that are still RUNNING (their worker could not)."""
    if not ctx.store_exists():
        return []
    tracker = ctx.tracker(create=False)
    marked = []
    for cid, directory in directories.items():
        name = cells[cid].name
        if only is not None and name not in only:
            continue
        run_id = layout.read_text(directory / layout.RUN_ID_FILE)
        run = tracker.get(run_id) if run_id else None
        if run is None or run.status != "RUNNING" or _live_worker(directory) is not None:
            continue
        tracker.set_status(run_id, "KILLED")
        layout.write_atomic(directory / layout.PHASE_FILE, "killed\n")
        marked.append(name)
    return marked
