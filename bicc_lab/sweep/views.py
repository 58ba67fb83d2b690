"""``sweep plan`` and ``sweep status`` tables."""

from __future__ import annotations

import re
import time
from collections import Counter
from typing import Any

from rich.console import Console
from rich.table import Table

from bicc_lab.launch import layout
from bicc_lab.spec.grid import NAMED_AXES, format_value
from bicc_lab.sweep import state as st
from bicc_lab.sweep.context import SweepContext
from bicc_lab.sweep.display import STATE_STYLE, fmt_duration

__all__ = ["plan_view", "status_view"]


def _styled(state: str) -> str:
    style = STATE_STYLE.get(state, "")
    return f"[{style}]{state}[/]" if style else state


def _axes_text(axes: dict[str, Any]) -> str:
    return " ".join(f"{k}={v if isinstance(v, str) else format_value(v)}" for k, v in axes.items())


def _counts(statuses: list[st.CellStatus]) -> str:
    counts = Counter(s.state for s in statuses)
    order = [
        st.FINISHED,
        st.RUNNING,
        st.ELSEWHERE,
        st.INTERRUPTED,
        st.KILLED,
        st.FAILED,
        st.PENDING,
    ]
    return ", ".join(f"{counts[k]} {k}" for k in order if counts[k])


def _header(ctx: SweepContext, tracked: bool) -> str:
    sweep = ctx.sweep
    store = f"MLflow {ctx.uri} (experiment {ctx.experiment})"
    if not tracked:
        store += ", nothing tracked yet"
    return (
        f"sweep {sweep.name} ({sweep.path}): {len(sweep.cells)} cells over "
        f"{', '.join(sweep.axis_keys) or 'no axes'}; base {sweep.base_path}\n{store}; runs in {ctx.sweep_dir}"
    )


def plan_view(
    ctx: SweepContext, statuses: list[st.CellStatus], tracked: bool
) -> tuple[str, Table, str]:
    """(header, table of cells, footer line)."""
    table = Table(show_lines=False)
    table.add_column("#", justify="right", style="dim")
    table.add_column("cell", overflow="fold")
    table.add_column("id")
    table.add_column("arm")
    table.add_column("axes", overflow="fold")
    table.add_column("state")
    table.add_column("note", overflow="fold")
    for s in statuses:
        cell = s.cell
        note = s.note
        if s.duplicates:
            note = (note + "; " if note else "") + f"{s.duplicates + 1} runs of this config!"
        if s.state in (st.INTERRUPTED, st.KILLED, st.RUNNING) and s.step:
            note = (note + "; " if note else "") + f"step {s.step}/{s.max_steps}"
        table.add_row(
            str(cell.index),
            cell.name,
            cell.cell_id,
            cell.arm,
            _axes_text(cell.axes),
            _styled(s.state),
            note,
        )
    footer = _counts(statuses)
    return _header(ctx, tracked), table, footer


_EVAL_KEY = re.compile(r"^eval/(?P<bench>[^/]+)/avg_at_(?P<k>\d+)$")


def _eval_columns(statuses: list[st.CellStatus]) -> list[tuple[str, str]]:
    """(metric key, column title) of every ``eval/<bench>/avg_at_<k>`` seen."""
    seen: dict[str, str] = {}
    for s in statuses:
        keys: list[str] = list(s.run.metrics) if s.run is not None else []
        if not keys and s.progress.evaluated:
            keys = list(_eval_from_file(s.directory))
        for key in keys:
            m = _EVAL_KEY.match(key)
            if m and key not in seen:
                seen[key] = f"{m['bench']} avg@{m['k']}"
    return sorted(seen.items())


def _eval_from_file(directory: Any) -> dict[str, float]:
    from bicc_lab.tracking.naming import eval_metric_key

    data = layout.read_json(directory / layout.EVAL_FILE) or {}
    out = {}
    for bench, result in (data.get("benchmarks") or {}).items():
        for key, value in (result.get("metrics") or {}).items():
            if isinstance(value, int | float):
                out[eval_metric_key(bench, key)] = float(value)
    return out


def status_view(
    ctx: SweepContext, statuses: list[st.CellStatus], tracked: bool
) -> tuple[str, Table, str]:
    """(header, table of progress and key metrics, footer line)."""
    eval_cols = _eval_columns(statuses)
    varying = [k for k in ctx.sweep.axis_keys if k not in NAMED_AXES]
    table = Table()
    table.add_column("cell", overflow="fold")
    table.add_column("id")
    table.add_column("state")
    table.add_column("step", justify="right")
    table.add_column("reward", justify="right")
    for _, title in eval_cols:
        table.add_column(title, justify="right")
    table.add_column("time", justify="right")
    table.add_column("note", overflow="fold")
    steps_done = 0
    steps_total = 0
    for s in statuses:
        run_metrics = dict(s.run.metrics) if s.run is not None else {}
        if not run_metrics and s.progress.evaluated:
            run_metrics = _eval_from_file(s.directory)
        reward = run_metrics.get("reward", s.progress.reward)
        if s.progress.reward is not None and s.state in (st.RUNNING, st.INTERRUPTED, st.KILLED):
            reward = s.progress.reward
        step = s.max_steps if s.state == st.FINISHED else s.step
        steps_done += min(step, s.max_steps)
        steps_total += s.max_steps
        seconds = None
        if s.run is not None and s.run.start_time:
            end = s.run.end_time if s.run.status != "RUNNING" and s.run.end_time else None
            seconds = (end or time.time()) - s.run.start_time
        note = s.note
        if s.duplicates:
            note = (note + "; " if note else "") + f"{s.duplicates + 1} runs of this config!"
        row = [
            s.cell.name,
            s.cell.cell_id,
            _styled(s.state),
            f"{step}/{s.max_steps}",
            "-" if reward is None else f"{reward:.3f}",
        ]
        for key, _ in eval_cols:
            value = run_metrics.get(key)
            row.append("-" if value is None else f"{value:.3f}")
        row += [fmt_duration(seconds), note[:160]]
        table.add_row(*row)
    pct = 100.0 * steps_done / steps_total if steps_total else 0.0
    footer = f"{_counts(statuses)}; training steps {steps_done}/{steps_total} ({pct:.0f}%)"
    if varying:
        footer += f"; other axes: {', '.join(varying)}"
    return _header(ctx, tracked), table, footer


def print_view(console: Console, view: tuple[str, Table, str]) -> None:
    header, table, footer = view
    console.print(header, markup=False, highlight=False)
    console.print(table)
    console.print(footer, markup=False, highlight=False)
