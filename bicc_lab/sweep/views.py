"""``sweep plan`` and ``sweep status``: one record per cell, shown as a Rich table or JSON.

The records are built first and the table is drawn from them, so ``--json`` and the table
can never disagree.
"""

from __future__ import annotations

import itertools
import json
import re
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

from bicc_lab.launch import layout
from bicc_lab.spec.grid import NAMED_AXES, format_value
from bicc_lab.sweep import state as st
from bicc_lab.sweep.context import SweepContext
from bicc_lab.sweep.display import STATE_STYLE, fmt_duration
from bicc_lab.units import SCORE_SCALE, SCORE_UNIT

__all__ = ["PLAN_CHUNK", "View", "plan_view", "print_plan", "print_view", "status_view"]


def _styled(state: str) -> str:
    style = STATE_STYLE.get(state, "")
    return f"[{style}]{state}[/]" if style else state


def _axes_text(axes: dict[str, Any]) -> str:
    return " ".join(f"{k}={v if isinstance(v, str) else format_value(v)}" for k, v in axes.items())


_STATE_ORDER = (st.FINISHED, st.RUNNING, st.ELSEWHERE, st.INTERRUPTED, st.KILLED, st.FAILED, st.PENDING)


def _count_map(statuses: list[st.CellStatus]) -> dict[str, int]:
    counts = Counter(s.state for s in statuses)
    return {k: counts[k] for k in _STATE_ORDER if counts[k]}


def _counts(statuses: list[st.CellStatus]) -> str:
    return ", ".join(f"{n} {k}" for k, n in _count_map(statuses).items())


@dataclass
class View:
    """What ``plan`` / ``status`` show: header and footer lines, the table, and the same
    content as JSON-able data (``--json``)."""

    header: str
    table: Table
    footer: str
    data: dict[str, Any] = field(default_factory=dict)


def _sweep_data(ctx: SweepContext, tracked: bool, statuses: list[st.CellStatus]) -> dict[str, Any]:
    sweep = ctx.sweep
    return {
        "sweep": sweep.name,
        "path": str(sweep.path),
        "base": str(sweep.base_path),
        "axes": list(sweep.axis_keys),
        "n_cells": len(sweep.cells),
        "tracking_uri": ctx.uri,
        "experiment": ctx.experiment,
        "tracked": tracked,
        "runs_dir": str(ctx.sweep_dir),
        "counts": _count_map(statuses),
    }


def _finite(value: Any) -> float | None:
    """A float for JSON, None for a missing or NaN value (JSON has no NaN)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number == number and abs(number) != float("inf") else None


def _plain(value: Any) -> Any:
    """A JSON-able copy of a grid value (tuples become lists, odd objects their text)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _header(ctx: SweepContext, tracked: bool) -> str:
    sweep = ctx.sweep
    store = f"MLflow {ctx.uri} (experiment {ctx.experiment})"
    if not tracked:
        store += ", nothing tracked yet"
    return (
        f"sweep {sweep.name} ({sweep.path}): {len(sweep.cells)} cells over "
        f"{', '.join(sweep.axis_keys) or 'no axes'}; base {sweep.base_path}\n{store}; runs in {ctx.sweep_dir}"
    )


def _note(s: st.CellStatus) -> str:
    note = s.note
    if s.duplicates:
        note = (note + "; " if note else "") + f"{s.duplicates + 1} runs of this config!"
    return note


def _plan_record(s: st.CellStatus) -> dict[str, Any]:
    return {
        "index": s.cell.index,
        "name": s.cell.name,
        "cell_id": s.cell.cell_id,
        "arm": s.cell.arm,
        "axes": _plain(dict(s.cell.axes)),
        "state": s.state,
        "step": s.step,
        "max_steps": s.max_steps,
        "runs": len(s.runs),
        "note": _note(s),
    }


def _plan_table() -> Table:
    table = Table(show_lines=False)
    table.add_column("#", justify="right", style="dim")
    table.add_column("cell", overflow="fold")
    table.add_column("id")
    table.add_column("arm")
    table.add_column("axes", overflow="fold")
    table.add_column("state")
    table.add_column("note", overflow="fold")
    return table


def _plan_row(table: Table, s: st.CellStatus, rec: dict[str, Any]) -> None:
    note = rec["note"]
    if s.state in (st.INTERRUPTED, st.KILLED, st.RUNNING) and s.step:
        note = (note + "; " if note else "") + f"step {s.step}/{s.max_steps}"
    table.add_row(
        str(rec["index"]), rec["name"], rec["cell_id"], rec["arm"], _axes_text(s.cell.axes),
        _styled(rec["state"]), note,
    )


def _launch(ctx: SweepContext, n_cells: int) -> tuple[str, dict[str, Any]]:
    from bicc_lab.launch import describe_launch

    spec = ctx.sweep.spec
    summary = describe_launch(spec.launch, n_cells=n_cells, max_parallel=spec.max_parallel, gpus=spec.gpus)
    return summary, {**spec.launch.model_dump(mode="json"), "summary": summary}


def plan_view(ctx: SweepContext, statuses: list[st.CellStatus], tracked: bool) -> View:
    """The cells, their arm, grid values and state."""
    records = [_plan_record(s) for s in statuses]
    table = _plan_table()
    for s, rec in zip(statuses, records, strict=True):
        _plan_row(table, s, rec)
    launch, launch_data = _launch(ctx, len(statuses))
    data = {**_sweep_data(ctx, tracked, statuses), "cells": records, "launch": launch_data}
    return View(_header(ctx, tracked), table, f"{_counts(statuses)}\n{launch}", data)


PLAN_CHUNK = 500
"""Rows of ``sweep plan`` held at once: a grid this small is shown as one table (one JSON
object, ``counts`` before ``cells``); a larger one streams, a table per this many rows."""


def print_plan(
    console: Console, ctx: SweepContext, statuses: Iterable[st.CellStatus], tracked: bool,
    *, as_json: bool = False,
) -> None:
    """``sweep plan``: the cells as they come, in memory bounded whatever the grid's size.

    Up to :data:`PLAN_CHUNK` cells, exactly :func:`plan_view`. Past it: the header line,
    then a table per :data:`PLAN_CHUNK` rows, then the counts and the launch line; with
    ``as_json`` the same JSON object (same keys and records) written while the cells come,
    ``counts`` and ``launch`` after ``cells``.
    """
    stream = iter(statuses)
    first = list(itertools.islice(stream, PLAN_CHUNK))
    following = next(stream, None)
    if following is None:
        print_view(console, plan_view(ctx, first, tracked), as_json=as_json)
        return
    counts: Counter[str] = Counter()
    n_cells = 0
    rest = itertools.chain(first, [following], stream)
    del first
    if as_json:
        out = sys.stdout
        head = {k: v for k, v in _sweep_data(ctx, tracked, []).items() if k != "counts"}
        text = json.dumps(head, indent=2, allow_nan=False, default=str)
        out.write(text[: -len("\n}")] + ',\n  "cells": [')
        for s in rest:
            counts[s.state] += 1
            record = json.dumps(_plan_record(s), indent=2, allow_nan=False, default=str)
            out.write(("\n" if not n_cells else ",\n") + textwrap.indent(record, "    "))
            n_cells += 1
        _, launch_data = _launch(ctx, n_cells)
        tail = {"counts": {k: counts[k] for k in _STATE_ORDER if counts[k]}, "launch": launch_data}
        text = json.dumps(tail, indent=2, allow_nan=False, default=str)
        out.write("\n  ],\n" + text[len("{\n"):] + "\n")
        out.flush()
        return
    console.print(_header(ctx, tracked), markup=False, highlight=False)
    table = _plan_table()
    for s in rest:
        counts[s.state] += 1
        _plan_row(table, s, _plan_record(s))
        n_cells += 1
        if table.row_count >= PLAN_CHUNK:
            console.print(table)
            table = _plan_table()
    if table.row_count:
        console.print(table)
    launch, _ = _launch(ctx, n_cells)
    shown = ", ".join(f"{counts[k]} {k}" for k in _STATE_ORDER if counts[k])
    console.print(f"{shown}\n{launch}", markup=False, highlight=False)


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
                seen[key] = f"{m['bench']} avg@{m['k']} (%)"  # scores in points, as everywhere
    return sorted(seen.items())


def _eval_from_file(directory: Any) -> dict[str, float]:
    """The scores of a cell's ``eval.json`` in fractions, as a run's metrics are read."""
    from bicc_lab.tracking.naming import eval_metric_key
    from bicc_lab.units import SCORE_SCALE, SCORE_UNIT, is_score

    data = layout.read_json(directory / layout.EVAL_FILE) or {}
    scale = SCORE_SCALE if data.get("score_unit") == SCORE_UNIT else 1.0  # absent: an older file, fractions
    out = {}
    for bench, result in (data.get("benchmarks") or {}).items():
        for key, value in (result.get("metrics") or {}).items():
            if isinstance(value, int | float):
                out[eval_metric_key(bench, key)] = float(value) / scale if is_score(key) else float(value)
    return out


def _points(fraction: float | None) -> float | None:
    """A score in points (None for NaN or missing), rounded to what a table can show."""
    value = _finite(fraction)
    return None if value is None else round(value * SCORE_SCALE, 6)


def status_view(ctx: SweepContext, statuses: list[st.CellStatus], tracked: bool) -> View:
    """Progress and key metrics (training reward, eval avg@k) of every cell."""
    from bicc_lab.launch.slurm import cell_job_states

    eval_cols = _eval_columns(statuses)
    varying = [k for k in ctx.sweep.axis_keys if k not in NAMED_AXES]
    jobs = cell_job_states([s.directory for s in statuses])  # SLURM state beside the progress
    records = []
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
        records.append({
            "name": s.cell.name,
            "cell_id": s.cell.cell_id,
            "arm": s.cell.arm,
            "state": s.state,
            "step": step,
            "max_steps": s.max_steps,
            "reward": _finite(reward),
            "eval": {key: _points(run_metrics.get(key)) for key, _ in eval_cols if run_metrics.get(key) is not None},
            "seconds": seconds,
            "run_id": s.run.run_id if s.run is not None else None,
            "note": _note(s),
            "slurm": dict(zip(("job_id", "state"), jobs[s.directory], strict=True)) if s.directory in jobs else None,
        })
    table = Table()
    table.add_column("cell", overflow="fold")
    table.add_column("id")
    table.add_column("state")
    if jobs:
        table.add_column("slurm")
    table.add_column("step", justify="right")
    table.add_column("reward", justify="right")
    for _, title in eval_cols:
        table.add_column(title, justify="right")
    table.add_column("time", justify="right")
    table.add_column("note", overflow="fold")
    for rec in records:
        row = [
            rec["name"],
            rec["cell_id"],
            _styled(rec["state"]),
            *([f"{rec['slurm']['state']} {rec['slurm']['job_id']}" if rec["slurm"] else "-"] if jobs else []),
            f"{rec['step']}/{rec['max_steps']}",
            "-" if rec["reward"] is None else f"{rec['reward']:.3f}",
        ]
        for key, _ in eval_cols:
            value = rec["eval"].get(key)
            row.append("-" if value is None else f"{value:.1f}")
        row += [fmt_duration(rec["seconds"]), rec["note"][:160]]
        table.add_row(*row)
    pct = 100.0 * steps_done / steps_total if steps_total else 0.0
    footer = f"{_counts(statuses)}; training steps {steps_done}/{steps_total} ({pct:.0f}%)"
    if varying:
        footer += f"; other axes: {', '.join(varying)}"
    data = {
        **_sweep_data(ctx, tracked, statuses),
        "steps_done": steps_done,
        "steps_total": steps_total,
        "eval_metrics": [key for key, _ in eval_cols],
        "score_unit": SCORE_UNIT,  # the "eval" values of the cells: percent points
        "cells": records,
    }
    return View(_header(ctx, tracked), table, footer, data)


def print_view(console: Console, view: View, *, as_json: bool = False) -> None:
    """The table between its header and footer lines, or (``as_json``) one JSON object."""
    if as_json:
        # Straight to stdout: Rich would wrap and highlight it.
        sys.stdout.write(json.dumps(view.data, indent=2, allow_nan=False, default=str) + "\n")
        return
    console.print(view.header, markup=False, highlight=False)
    console.print(view.table)
    console.print(view.footer, markup=False, highlight=False)
