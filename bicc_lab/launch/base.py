"""The launcher protocol: where a cell runs. Standard library only.

A cell is a directory holding ``cell.json``; running it means running
``python -m bicc_lab.launch.worker CELL_DIR`` somewhere. A launcher does four things:

- ``submit(cells)``: start these cells (``[(key, directory)]``), returning one :class:`Job` each;
- ``poll()``: the jobs that ended since the last call, each with the worker's exit code;
- ``cancel(jobs, grace_s)``: stop jobs (and wait for them), returning their exit codes;
- ``logs(job)``: the file where the job's output goes.

Two implementations: :class:`bicc_lab.launch.local.LocalLauncher` (processes on this
machine) and :class:`bicc_lab.launch.slurm.SlurmLauncher` (SLURM jobs through submitit).
``sweep run`` and ``tune run`` schedule through :func:`bicc_lab.launch.schedule.run_jobs`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "EXIT_BUSY",
    "EXIT_ELSEWHERE",
    "EXIT_FAILED",
    "EXIT_KILLED",
    "EXIT_OK",
    "EXIT_STOPPED",
    "Job",
    "Launcher",
    "first_error_line",
]

# The worker's exit codes (bicc_lab.launch.worker); launchers report them unchanged.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BUSY = 75  # the cell's lock is held by another process
EXIT_ELSEWHERE = 76  # a live run of this cell is tracked from another runs directory
EXIT_STOPPED = 77  # a cell hook stopped training early (e.g. a pruned Optuna trial)
EXIT_KILLED = 143  # SIGTERM / Ctrl-C / scancel


@dataclass
class Job:
    """One submitted cell."""

    key: str
    directory: Path
    started: float = field(default_factory=time.time)
    gpu: int | None = None  # local launcher: the GPU it is pinned to
    job_id: str | None = None  # slurm launcher: the SLURM job id (``123`` or ``123_4``)
    handle: Any = None  # the launcher's own object (Popen, submitit.Job)

    def describe(self) -> str:
        if self.job_id:
            return f"job {self.job_id}"
        pid = getattr(self.handle, "pid", None)
        return f"pid {pid}" if pid else self.key


class Launcher(Protocol):
    kind: str
    running: dict[str, Job]
    detachable: bool  # jobs survive the launching process (SLURM), so Ctrl-C may leave them

    def submit(self, cells: list[tuple[str, Path]]) -> list[Job]: ...

    def attach(self, key: str, directory: Path) -> Job | None:
        """The cell's job from an earlier process when it is still queued or running."""
        ...

    def poll(self) -> list[tuple[Job, int]]: ...

    def cancel(self, jobs: list[Job] | None = None, grace_s: float = 10.0) -> list[tuple[Job, int]]: ...

    def logs(self, job: Job) -> Path: ...

    def release(self) -> None:
        """Stop tracking every running job without stopping it (``--detach``)."""
        ...


def first_error_line(directory: Path, error_tag: str = "") -> str:
    """The last non-empty line of a cell's error: the run's ``error`` tag when given, else
    ``error.txt`` in the cell directory (the worker writes both)."""
    from bicc_lab.launch import layout

    text = error_tag or layout.read_text(directory / layout.ERROR_FILE) or ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""
