"""What ``sweep run`` shows: a Rich live table on a terminal; otherwise (CI, a pipe, a SLURM
log) one line per state change, plus, while cells train, one line per cell every
``every_s`` seconds or ``every_steps`` steps (whichever comes first) and a sweep line (cells
done / running / left and the sweep's ETA), so that a long cell never goes quiet."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

__all__ = ["LineDisplay", "LiveDisplay", "Row", "SweepProgress", "fmt_duration", "make_display"]

#: Default of ``sweep run --progress-every``: seconds between a training cell's progress lines.
PROGRESS_EVERY_S = 30.0
_ACTIVE = ("starting", "training", "evaluating", "logging", "running", "attached")
_DONE = ("finished", "done before", "failed", "failed before", "killed")

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
    tokens_per_s: float | None = None
    gpu: int | None = None
    note: str = ""
    # rate estimate (this session): first observed (time, step) while training
    _t0: float | None = None
    _s0: int | None = None
    _k0: float | None = None  # tokens at _t0

    def observe(self, step: int, reward: float | None, now: float, tokens: float | None = None) -> None:
        if self.state == "training":
            if self._t0 is None or step < (self._s0 or 0):
                self._t0, self._s0, self._k0 = now, step, tokens
            elif step > (self._s0 or 0):
                rate = (now - self._t0) / (step - (self._s0 or 0))
                self.eta_s = max(0.0, (self.max_steps - step) * rate)
                if tokens is not None and self._k0 is not None and now > self._t0:
                    self.tokens_per_s = (tokens - self._k0) / (now - self._t0)
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


class SweepProgress:
    """Cells done / running / left and the sweep's ETA: the running cells' longest ETA, plus
    the queued cells in waves of ``parallel`` at the mean duration of the cells that ended
    in this session (unknown until one has)."""

    def __init__(self, parallel: int = 1) -> None:
        self.parallel = max(1, parallel)
        self._started: dict[str, float] = {}
        self._durations: list[float] = []
        self._now = 0.0

    def observe(self, rows: list[Row], now: float) -> None:
        self._now = now
        for r in rows:
            if r.state in _ACTIVE and r.cell_id not in self._started:
                self._started[r.cell_id] = now
            elif r.state in ("finished", "failed", "killed") and r.cell_id in self._started:
                self._durations.append(now - self._started.pop(r.cell_id))

    def line(self, rows: list[Row]) -> str:
        done = sum(r.state in _DONE for r in rows)
        running = sum(r.state in _ACTIVE for r in rows)
        left = len(rows) - done - running
        mean = sum(self._durations) / len(self._durations) if self._durations else None
        etas = []
        for r in rows:
            if r.state not in _ACTIVE:
                continue
            if r.eta_s is not None:
                etas.append(r.eta_s)
            elif mean is not None:  # no rate yet (just started, evaluating): a typical cell's rest
                etas.append(max(0.0, mean - (self._now - self._started.get(r.cell_id, 0.0))))
            else:
                etas.append(None)
        eta = None
        if (running or left) and None not in etas and (left == 0 or mean is not None):
            waves = -(-left // self.parallel)  # ceil
            eta = max(etas, default=0.0) + waves * (mean or 0.0)
        return f"sweep: {done} done, {running} running, {left} left; ETA {fmt_duration(eta) if eta is not None else '-'}"


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

    def __init__(self, console: Console, title: str, parallel: int = 1) -> None:
        from rich.live import Live

        self.console = console
        self.title = title
        self._rows: list[Row] = []
        self._live = Live(_table([], title), console=console, refresh_per_second=2, transient=False)
        self.progress = SweepProgress(parallel)

    def start(self) -> None:
        self._live.start()

    def update(self, rows: list[Row]) -> None:
        self._rows = rows
        self.progress.observe(rows, time.time())
        table = _table(rows, self.title)
        table.caption, table.caption_justify = self.progress.line(rows), "left"
        self._live.update(table)

    def event(self, row: Row, message: str | None = None) -> None:
        if message:
            self._live.console.print(message)

    def say(self, message: str) -> None:
        self._live.console.print(message)

    def stop(self) -> None:
        self._live.stop()


class LineDisplay:
    """Plain output for CI logs: one line whenever a cell's state changes."""

    def __init__(
        self, console: Console, title: str, parallel: int = 1,
        every_s: float | None = PROGRESS_EVERY_S, every_steps: int | None = None,
    ) -> None:
        self.console = console
        self.title = title
        self._seen: dict[str, str] = {}
        self.every_s, self.every_steps = every_s, every_steps
        self.progress = SweepProgress(parallel)
        self._said: dict[str, tuple[float, int]] = {}  # cell -> (time, step) of its last line
        self._sweep_said = time.time()

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

    def update(self, rows: list[Row], now: float | None = None) -> None:
        now = time.time() if now is None else now
        self.progress.observe(rows, now)
        changed = False
        for row in rows:
            if self._seen.get(row.cell_id) != row.state:
                self._seen[row.cell_id] = row.state
                self._said[row.cell_id] = (now, row.step)
                self._print(self._line(row))
                changed = True
            elif row.state == "training" and self._due(row, now):
                self._said[row.cell_id] = (now, row.step)
                speed = f"  {row.tokens_per_s:,.0f} tok/s" if row.tokens_per_s is not None else ""
                self._print(self._line(row, f"ETA {fmt_duration(row.eta_s)}{speed}"))
        if changed or (self.every_s is not None and now - self._sweep_said >= self.every_s):
            self._sweep_said = now
            self._print(f"{time.strftime('%H:%M:%S')}  {self.progress.line(rows)}")

    def _due(self, row: Row, now: float) -> bool:
        """Time for a progress line: ``every_s`` seconds or ``every_steps`` steps since its last."""
        said_at, said_step = self._said.get(row.cell_id, (now, row.step))
        by_time = self.every_s is not None and now - said_at >= self.every_s
        by_steps = self.every_steps is not None and row.step - said_step >= self.every_steps
        return by_time or by_steps

    def _print(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def event(self, row: Row, message: str | None = None) -> None:
        if message:
            self.console.print(message, markup=False, highlight=False, soft_wrap=True)

    def say(self, message: str) -> None:
        self.console.print(message, markup=False, highlight=False, soft_wrap=True)

    def stop(self) -> None:
        pass


def make_display(
    console: Console, title: str, live: bool | None = None, *, parallel: int = 1,
    every_s: float | None = PROGRESS_EVERY_S, every_steps: int | None = None,
) -> Any:
    """Live table on a terminal, lines otherwise (``live`` forces one or the other)."""
    if live is None:
        live = console.is_terminal and not console.is_dumb_terminal
    if live:
        return LiveDisplay(console, title, parallel)
    return LineDisplay(console, title, parallel, every_s=every_s, every_steps=every_steps)
