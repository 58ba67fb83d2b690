"""The one scheduling loop of ``sweep run`` and ``tune run``: submit, poll, stop.

The caller says what to run through a :class:`JobSource` (the sweep's queue of cells, or
the study asking Optuna for trials); :func:`run_jobs` keeps at most ``max_parallel`` jobs
on a launcher that runs them one process per cell (local) or holds them in the cluster's
queue (SLURM: a sweep submits every cell at once and the cluster decides what runs; a
study keeps ``n_jobs`` trials queued so that each new trial learns from the finished
ones), hands each ended job to the source, and stops when the source has nothing left
and no job runs.

Ctrl-C (or SIGTERM / SIGHUP): local jobs are stopped (SIGTERM, SIGKILL after ``grace_s``).
SLURM jobs outlive this process, so the user is asked whether to cancel them or leave
them running; a later ``sweep run`` re-attaches to the ones left. ``detach=True`` submits
and returns at once.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from bicc_lab.launch.base import Job, Launcher

__all__ = ["DONE", "DETACHED", "INTERRUPTED", "LEFT_RUNNING", "JobSource", "run_jobs"]

DONE = "done"
INTERRUPTED = "interrupted"  # stopped by the user; the running jobs were stopped
LEFT_RUNNING = "left running"  # stopped by the user; SLURM jobs left in the queue
DETACHED = "detached"  # --detach: submitted, not waited for


class JobSource(Protocol):
    def next_cells(self, free: int) -> list[tuple[str, Path]]:
        """Up to ``free`` cells to submit now, as ``(key, directory)`` (may be fewer)."""
        ...

    def more(self) -> bool:
        """Whether cells may still come (besides the running ones)."""
        ...

    def on_submit(self, job: Job) -> None: ...

    def on_exit(self, job: Job, code: int, stopping: bool) -> None: ...

    def on_tick(self) -> None: ...


def run_jobs(
    launcher: Launcher,
    source: JobSource,
    *,
    max_parallel: int,
    poll_s: float = 0.5,
    grace_s: float = 10.0,
    detach: bool = False,
    ask_cancel: Callable[[int], bool] | None = None,
    say: Callable[[str], None] = print,
) -> str:
    """Run the source's cells to the end; returns DONE, INTERRUPTED, LEFT_RUNNING or DETACHED.

    ``ask_cancel(n)`` answers "cancel the n submitted SLURM jobs?" after Ctrl-C (None: cancel);
    after SIGTERM / SIGHUP the jobs are cancelled without asking.
    """
    limit = max_parallel
    stop_signals = (signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, *stop_signals)}

    stopped_by: list[int] = []  # SIGTERM / SIGHUP; empty for Ctrl-C

    def on_stop_signal(signum: int, frame: Any) -> None:
        stopped_by.append(signum)
        raise KeyboardInterrupt  # SIGTERM / SIGHUP (terminal gone) stop like Ctrl-C

    try:
        for sig in stop_signals:
            signal.signal(sig, on_stop_signal)
        while True:
            for job, code in launcher.poll():
                source.on_exit(job, code, False)
            free = limit - len(launcher.running)
            if free > 0:
                cells = source.next_cells(free)
                if cells:
                    for job in launcher.submit(cells):
                        source.on_submit(job)
            source.on_tick()
            if detach and not source.more():
                launcher.release()
                return DETACHED
            if not launcher.running and not source.more():
                return DONE
            time.sleep(poll_s)
    except KeyboardInterrupt:
        for sig in (signal.SIGINT, *stop_signals):  # a second Ctrl-C must not cut the cleanup short
            signal.signal(sig, signal.SIG_IGN)
        n = len(launcher.running)
        # Only Ctrl-C has a person to ask: SIGTERM (`sweep cancel`, a scheduler) means stop the
        # jobs, and after SIGHUP nobody can answer (a prompt would hang the cancel).
        if launcher.detachable and n and ask_cancel is not None and not stopped_by and not ask_cancel(n):
            launcher.release()
            _quietly(say, f"left {n} job(s) in the SLURM queue; `sweep run` again re-attaches to them")
            return LEFT_RUNNING
        if n:
            how = "scancel" if launcher.detachable else f"SIGTERM, SIGKILL after {grace_s:.0f}s"
            _quietly(say, f"interrupted: stopping {n} running cell(s) ({how}) ...")
        for job, code in launcher.cancel(None, grace_s):
            source.on_exit(job, code, True)
        return INTERRUPTED
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _quietly(fn: Callable[..., Any], *args: Any) -> None:
    """Output that must not stop the cleanup when the terminal is gone."""
    try:
        fn(*args)
    except OSError:
        pass
