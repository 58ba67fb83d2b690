"""What ``sweep run`` shows: a Rich live table on a terminal, one line per state change otherwise."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

__all__ = ["LineDisplay", "LiveDisplay", "Row", "fmt_duration", "make_display"]

STATE_STYLE = {
    "pending": "dim",
    "queued": "dim",
    "waiting": "yellow",
    "starting": "cyan",
    "training": "cyan",
    "evaluating": "cyan",
    "logging": "cyan",
    "running": "cyan",
    "running elsewhere": "yellow",
    "finished": "green",
    "done before": "green",
    "failed": "red",
    "failed before": "red",
    "killed": "magenta",
    "interrupted": "yellow",
}


@dataclass
class Row:
    """One cell in the live view."""

    name: str
    cell_id: str
    state: str
    step: int = 0
    max_steps: int = 0
    reward: float | None = None
    eta_s: float | None = None
    gpu: int | None = None
    note: str = ""
    # rate estimate (this session): first observed (time, step) while training
    _t0: float | None = None
    _s0: int | None = None

    def observe(self, step: int, reward: float | None, now: float) -> None:
        if self.state == "training":
            if self._t0 is None or step < (self._s0 or 0):
                self._t0, self._s0 = now, step
            elif step > (self._s0 or 0):
                rate = (now - self._t0) / (step - (self._s0 or 0))
                self.eta_s = max(0.0, (self.max_steps - step) * rate)
        self.step = step
        if reward is not None:
            self.reward = reward


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def _table(rows: list[Row], title: str) -> Table:
    table = Table(title=title, title_justify="left", expand=False)
    table.add_column("cell", overflow="fold")
    table.add_column("id", style="dim")
    table.add_column("state")
    table.add_column("step", justify="right")
    table.add_column("reward", justify="right")
    table.add_column("ETA", justify="right")
    if any(r.gpu is not None for r in rows):
        table.add_column("gpu", justify="right")
    table.add_column("note", overflow="fold")
    for r in rows:
        style = STATE_STYLE.get(r.state, "")
        cells = [
            r.name,
            r.cell_id,
            f"[{style}]{r.state}[/]" if style else r.state,
            f"{r.step}/{r.max_steps}",
            "-" if r.reward is None else f"{r.reward:.3f}",
            fmt_duration(r.eta_s) if r.state == "training" else "-",
        ]
        if any(x.gpu is not None for x in rows):
            cells.append("-" if r.gpu is None else str(r.gpu))
        cells.append(r.note)
        table.add_row(*cells)
    return table


class LiveDisplay:
    """A Rich ``Live`` table, refreshed from the cells' metrics files."""

    def __init__(self, console: Console, title: str) -> None:
        from rich.live import Live

        self.console = console
        self.title = title
        self._rows: list[Row] = []
        self._live = Live(_table([], title), console=console, refresh_per_second=2, transient=False)

    def start(self) -> None:
        self._live.start()

    def update(self, rows: list[Row]) -> None:
        self._rows = rows
        self._live.update(_table(rows, self.title))

    def event(self, row: Row, message: str | None = None) -> None:
        if message:
            self._live.console.print(message)

    def say(self, message: str) -> None:
        self._live.console.print(message)

    def stop(self) -> None:
        self._live.stop()


class LineDisplay:
    """Plain output for CI logs: one line whenever a cell's state changes."""

    def __init__(self, console: Console, title: str) -> None:
        self.console = console
        self.title = title
        self._seen: dict[str, str] = {}

    def start(self) -> None:
        self.console.print(self.title, markup=False, highlight=False)

    def _line(self, row: Row, extra: str = "") -> str:
        parts = [time.strftime("%H:%M:%S"), f"{row.name} [{row.cell_id}]", row.state]
        if row.state in ("training", "evaluating", "logging", "finished", "killed", "interrupted"):
            parts.append(f"step {row.step}/{row.max_steps}")
        if row.reward is not None and row.state != "pending":
            parts.append(f"reward {row.reward:.3f}")
        if row.gpu is not None:
            parts.append(f"gpu {row.gpu}")
        if row.note:
            parts.append(row.note)
        if extra:
            parts.append(extra)
        return "  ".join(parts)

    def update(self, rows: list[Row]) -> None:
        for row in rows:
            if self._seen.get(row.cell_id) != row.state:
                self._seen[row.cell_id] = row.state
                self.console.print(self._line(row), markup=False, highlight=False, soft_wrap=True)

    def event(self, row: Row, message: str | None = None) -> None:
        if message:
            self.console.print(message, markup=False, highlight=False, soft_wrap=True)

    def say(self, message: str) -> None:
        self.console.print(message, markup=False, highlight=False, soft_wrap=True)

    def stop(self) -> None:
        pass


def make_display(console: Console, title: str, live: bool | None = None) -> Any:
    """Live table on a terminal, lines otherwise (``live`` forces one or the other)."""
    if live is None:
        live = console.is_terminal and not console.is_dumb_terminal
    return LiveDisplay(console, title) if live else LineDisplay(console, title)
