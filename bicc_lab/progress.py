"""One progress display for long work: a Rich bar on a terminal, plain lines in logs.

Rich's live bar draws nothing until it stops when stderr is a file (a sweep cell's log,
CI), so there we print one line at most every ``line_every_s`` seconds instead.
"""

from __future__ import annotations

import sys
import time
from typing import Any


class StepProgress:
    """``update(completed, **fields)`` as work advances; ``close()`` at the end."""

    def __init__(self, label: str, total: int | None, *, fields: dict[str, str] | None = None,
                 line_every_s: float = 10.0, enabled: bool = True) -> None:
        self.label = label
        self.total = total
        self.fields = dict(fields or {})
        self.completed = 0
        self.line_every_s = line_every_s
        self._start = time.monotonic()
        self._last_line = 0.0
        self._bar: Any = None
        self._task: Any = None
        self.enabled = enabled
        if enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn()]
            columns += [TextColumn(f"{name} {{task.fields[{name}]}}") for name in self.fields]
            columns += [TimeElapsedColumn(), TimeRemainingColumn()]
            self._bar = Progress(*columns, console=Console(stderr=True))
            self._bar.start()
            self._task = self._bar.add_task(label, total=total, **self.fields)

    def update(self, completed: int | None = None, **fields: str) -> None:
        if completed is not None:
            self.completed = completed
        self.fields.update({k: v for k, v in fields.items() if k in self.fields})
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(self._task, completed=self.completed, **self.fields)
            return
        now = time.monotonic()
        if now - self._last_line >= self.line_every_s:
            self._last_line = now
            self._print_line()

    def _print_line(self) -> None:
        total = f"/{self.total}" if self.total else ""
        extra = "".join(f" {k} {v}" for k, v in self.fields.items())
        elapsed = time.monotonic() - self._start
        print(f"{self.label}: {self.completed}{total}{extra} ({elapsed:.0f}s)", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=self.completed, **self.fields)
            self._bar.stop()
            self._bar = None
        elif self.enabled:
            self._print_line()
        self.enabled = False
