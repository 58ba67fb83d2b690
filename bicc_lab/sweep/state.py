"""The state of each cell of a sweep, from MLflow (the source of truth) and the runs directory.

States:

- ``finished``: a child run with the cell's config hash has ``status=FINISHED``;
- ``running``: a worker holds the cell's lock (``<cell dir>/.lock``) on this machine;
- ``running elsewhere``: an unfinished run of this hash has a fresh heartbeat, but it is
  not the run recorded in this runs directory (another machine / runs directory);
- ``interrupted``: the last run is RUNNING but its worker is gone (lock free, or a stale
  heartbeat), or there is a checkpoint and no run; resumed by ``sweep run``;
- ``killed``: stopped by Ctrl-C, or its worker alone killed by a signal (the OOM killer's
  SIGKILL; tag ``killed_by``) (``status=KILLED``); resumed by a plain ``sweep run``;
- ``failed``: ``status=FAILED``; rerun only with ``--retry-failed``;
- ``pending``: nothing yet.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bicc_lab.launch import layout
from bicc_lab.launch.locks import LOCK_NAME, is_locked

if TYPE_CHECKING:
    from bicc_lab.spec import Cell, Sweep
    from bicc_lab.tracking.store import CellRun

__all__ = [
    "ELSEWHERE",
    "FAILED",
    "FINISHED",
    "INTERRUPTED",
    "KILLED",
    "PENDING",
    "RUNNING",
    "CellStatus",
    "cell_statuses",
    "iter_cell_statuses",
]

PENDING = "pending"
RUNNING = "running"
ELSEWHERE = "running elsewhere"
INTERRUPTED = "interrupted"
KILLED = "killed"
FAILED = "failed"
FINISHED = "finished"


@dataclass
class CellStatus:
    cell: Cell
    directory: Path
    state: str
    run: CellRun | None = None
    runs: list[CellRun] = field(default_factory=list)
    progress: layout.CellProgress = field(default_factory=layout.CellProgress)
    note: str = ""

    @property
    def duplicates(self) -> int:
        """Extra child runs of this config hash (0 when exactly-once holds)."""
        return max(0, len(self.runs) - 1)

    @property
    def max_steps(self) -> int:
        return self.cell.config.train.max_steps

    @property
    def step(self) -> int:
        step = self.progress.step
        if self.run is not None and not step:
            progress = self.run.tags.get("progress", "")
            if "/" in progress:
                try:
                    step = int(progress.split("/", 1)[0])
                except ValueError:
                    pass
        return step


def cell_directory(runs_dir: Path, sweep: Sweep, cell: Cell) -> Path:
    return layout.cell_dir(runs_dir, sweep.name, cell.name, cell.cell_id)


def _first_error_line(directory: Path, run: CellRun | None) -> str:
    text = run.tags.get("error", "") if run is not None else ""
    if not text:
        text = layout.read_text(directory / layout.ERROR_FILE) or ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def classify(
    cell: Cell, directory: Path, runs: Sequence[CellRun], *, tracked: bool = True
) -> CellStatus:
    """The state of one cell from its runs (newest first) and its directory."""
    progress = layout.read_progress(directory)
    status = CellStatus(
        cell=cell, directory=directory, state=PENDING, runs=list(runs), progress=progress
    )
    finished = [r for r in runs if r.status == "FINISHED"]
    recorded = layout.read_text(directory / layout.RUN_ID_FILE)
    if finished:
        status.state = FINISHED
        status.run = next((r for r in finished if r.run_id == recorded), finished[0])
        return status
    status.run = next((r for r in runs if r.run_id == recorded), runs[0] if runs else None)
    if is_locked(directory / LOCK_NAME):
        status.state = RUNNING
        return status
    run = status.run
    if run is None:
        if not tracked and progress.phase == "finished":
            status.state = FINISHED
        elif progress.phase == "failed":
            status.state = FAILED
            status.note = _first_error_line(directory, None)
        elif progress.has_checkpoint or progress.step > 0 or progress.trained:
            status.state = INTERRUPTED
        return status
    if run.status == "RUNNING":
        if run.run_id != recorded and run.is_live():
            status.state = ELSEWHERE
            status.note = f"host {run.tags.get('host', '?')}"
        else:
            status.state = INTERRUPTED
    elif run.status == "FAILED":
        status.state = FAILED
        status.note = _first_error_line(directory, run)
    elif run.status == "KILLED":
        status.state = KILLED
        status.note = run.tags.get("killed_by", "")  # e.g. "worker killed by signal SIGKILL (out of memory?)"
    else:  # an unknown status tag: treat as not finished
        status.state = INTERRUPTED
    return status


def cell_statuses(sweep: Sweep, runs_dir: Path, runs: Iterable[CellRun] | None) -> list[CellStatus]:
    """Every cell's status; ``runs`` None means "MLflow not consulted" (files only)."""
    return list(iter_cell_statuses(sweep, runs_dir, runs))


def iter_cell_statuses(
    sweep: Sweep, runs_dir: Path, runs: Iterable[CellRun] | None
) -> Iterator[CellStatus]:
    """:func:`cell_statuses` one cell at a time, in expansion order (``sweep plan`` of a
    large grid). The runs are grouped by config hash once: one read of the store, not one
    per cell, and memory in proportion to the runs tracked, not to the cells."""
    by_hash: dict[str, list[Any]] = {}
    for run in runs or ():
        by_hash.setdefault(run.config_hash, []).append(run)
    for cell in sweep.cells:
        yield classify(
            cell,
            cell_directory(runs_dir, sweep, cell),
            by_hash.get(cell.config_hash, []),
            tracked=runs is not None,
        )
