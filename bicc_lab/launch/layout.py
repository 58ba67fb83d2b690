"""Where a sweep's cells live on disk, and what the files there say. Standard library only.

runs/<sweep>/                          (``--runs-dir`` replaces ``runs``)
  .sweep.lock                          held while the parent run is found/created
  <cell name, / -> _>-<cell_id>/
    .lock                              flock held by the worker for its lifetime
    cell.json                          what the worker runs (written by `sweep run`)
    mlflow_run_id                      the child run, reused when the cell resumes
    worker.pid                         pid of the last worker
    phase                              starting | training | evaluating | logging | finished | failed | killed
    run.log                            stdout + stderr of every attempt
    error.txt                          last error lines of a failed attempt
    config.yaml, checkpoint-N/, metrics.jsonl, final/, train_result.json   (training)
    eval.json                          per-benchmark metrics and per-problem samples
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bicc_lab.fileio import write_atomic  # noqa: F401 - part of this module's API

__all__ = [
    "CELL_SPEC",
    "CellProgress",
    "cell_dir",
    "read_json",
    "read_progress",
    "read_text",
    "sweep_dir",
    "write_atomic",
]

CELL_SPEC = "cell.json"
RUN_ID_FILE = "mlflow_run_id"
PID_FILE = "worker.pid"
PHASE_FILE = "phase"
LOG_FILE = "run.log"
ERROR_FILE = "error.txt"
EVAL_FILE = "eval.json"
METRICS_FILE = "metrics.jsonl"
TRAIN_RESULT = "train_result.json"
SWEEP_LOCK = ".sweep.lock"


def safe_name(name: str) -> str:
    return name.replace("/", "_").replace("\\", "_").replace(os.sep, "_")


def sweep_dir(runs_dir: str | os.PathLike[str], sweep_name: str) -> Path:
    return Path(runs_dir) / safe_name(sweep_name)


def cell_dir(
    runs_dir: str | os.PathLike[str], sweep_name: str, cell_name: str, cell_id: str
) -> Path:
    """``<runs_dir>/<sweep>/<cell name with / replaced>-<cell_id>``."""
    return sweep_dir(runs_dir, sweep_name) / f"{safe_name(cell_name)}-{cell_id}"


def read_text(path: str | os.PathLike[str]) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None


def read_json(path: str | os.PathLike[str]) -> Any:
    text = read_text(path)
    if not text:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def tail_lines(path: str | os.PathLike[str], n: int = 20, max_bytes: int = 65536) -> list[str]:
    """The last ``n`` lines of a text file (reads at most ``max_bytes`` from its end)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            data = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    return data.splitlines()[-n:]


@dataclass
class CellProgress:
    """The training progress of a cell as its files show it."""

    step: int = 0
    reward: float | None = None
    step_time: float | None = None
    tokens: float | None = None  # TRL's num_tokens: tokens processed so far (for tokens/s)
    updated: float | None = None  # mtime of metrics.jsonl
    phase: str | None = None
    trained: bool = False  # train_result.json exists
    evaluated: bool = False  # eval.json exists
    has_checkpoint: bool = False


def _last_record(path: Path) -> dict[str, Any] | None:
    for line in reversed(tail_lines(path, n=5)):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            return record
    return None


def read_progress(directory: str | os.PathLike[str]) -> CellProgress:
    d = Path(directory)
    progress = CellProgress()
    metrics = d / METRICS_FILE
    record = _last_record(metrics) if metrics.is_file() else None
    if record:
        progress.step = int(record.get("step", 0) or 0)
        progress.reward = _float(record.get("reward"))
        progress.step_time = _float(record.get("step_time"))
        progress.tokens = _float(record.get("num_tokens"))
        try:
            progress.updated = metrics.stat().st_mtime
        except OSError:
            pass
    progress.phase = read_text(d / PHASE_FILE) or None
    progress.trained = (d / TRAIN_RESULT).is_file()
    progress.evaluated = (d / EVAL_FILE).is_file()
    try:
        progress.has_checkpoint = any(p.name.startswith("checkpoint-") for p in d.iterdir())
    except OSError:
        pass
    if progress.trained:
        result = read_json(d / TRAIN_RESULT) or {}
        progress.step = int(result.get("steps", progress.step) or progress.step)
    return progress


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def now() -> float:
    return time.time()
