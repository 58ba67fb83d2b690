"""Assemble a report (load -> tables -> statistics -> plots), write it atomically, log it."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bicc_lab.report.data import CURVE_METRICS, RunSet, load_curves, load_problem_scores
from bicc_lab.report.detect import (
    DetectionOptions,
    detection_frame,
    detection_markdown,
    detection_rows,
    open_rows,
)
from bicc_lab.report.plots import Plot, accuracy_plot, curve_plots
from bicc_lab.report.render import (
    _percent,
    cost_markdown,
    render_html,
    render_latex,
    render_markdown,
    rich_tables,
    tex_escape,
)
from bicc_lab.report.stats import BOOTSTRAP_RESAMPLES
from bicc_lab.report.tables import AblationTable, build_ablation, build_cost

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["FORMATS", "REPORT_ARTIFACT_DIR", "Report", "build_report", "display_path", "display_uri",
           "log_report", "write_report"]

FORMATS = ("md", "tex", "csv", "html")
REPORT_ARTIFACT_DIR = "report"
PLOTS_DIR = "plots"


# The columns of the CSV files that hold a score or a difference of scores: in points for the
# accuracy-like metrics (avg@k, pass@k, maj@k), as every table shows them, with a `unit` column.
_ABLATION_SCORES = ("mean", "ci_low", "ci_high", "std", "delta", "diff_ci_low", "diff_ci_high", "start")
_SIGNIFICANCE_SCORES = ("diff", "ci_low", "ci_high")
_DETECTION_SCORES = ("diff", "cs_low", "cs_high", "detectable_80")


def _in_points(frame: Any, columns: Sequence[str], percent: bool) -> Any:
    """``frame`` with its score ``columns`` in points and a ``unit`` column ("percent" or
    "metric": a metric such as a loss is written in its own unit)."""
    frame = frame.copy()
    if percent:
        for column in columns:
            if column in frame.columns:
                frame[column] = frame[column] * 100.0
    frame["unit"] = "percent" if percent else "metric"
    return frame


def display_path(path: str | os.PathLike[str], root: str | os.PathLike[str] | None) -> str:
    """``path`` relative to the repository ``root`` when it lies inside it (reports that are
    committed must not name one machine's directories); other paths unchanged."""
    if root is None:
        return str(path)
    try:
        return Path(path).resolve().relative_to(Path(root).resolve()).as_posix() or "."
    except (ValueError, OSError):
        return str(path)


def display_uri(uri: str, root: str | os.PathLike[str] | None) -> str:
    """A tracking URI as a reader of the report can use it: a SQLite or file store inside
    the repository as a relative URI (``sqlite:///mlflow.db``: what ``mlflow ui
    --backend-store-uri`` takes when run from the repository root), credentials dropped."""
    import urllib.parse

    for prefix in ("sqlite:///", "file://"):
        if uri.startswith(prefix):
            rest = uri[len(prefix):]
            if rest.startswith("/") or prefix == "file://":
                shown = display_path(rest, root)
                return f"{prefix}{shown}"
            return uri
    parsed = urllib.parse.urlsplit(uri)
    if parsed.username or parsed.password:
        host = parsed.hostname or ""
        netloc = f"{host}:{parsed.port}" if parsed.port else host
        return urllib.parse.urlunsplit(parsed._replace(netloc=netloc))
    return uri


@dataclass
class Report:
    run_set: RunSet
    table: AblationTable
    significance: pd.DataFrame
    cost: pd.DataFrame
    plots: list[Plot] = field(default_factory=list)
    command: str = ""
    created: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    root: str | None = None  # the repository root: paths and URIs under it are shown relative to it
    detection: pd.DataFrame | None = None  # per comparison: interval, detectable effect (report.detect)
    detection_options: DetectionOptions | None = None

    @property
    def title(self) -> str:
        return f"Ablation report: {self.run_set.sweep}"

    @property
    def meta(self) -> list[str]:
        rs = self.run_set
        skipped = ", ".join(f"{n} {s}" for s, n in sorted(rs.skipped.items()))
        names = {}
        if not rs.frame.empty:
            found = rs.frame.groupby("benchmark")["metric"].max()
            for bench in rs.benchmarks:
                if bench in found.index:
                    names[bench] = str(found[bench]).replace("_at_", "@")
        shown = display_uri(rs.uri, self.root)
        if shown != rs.uri and shown.startswith(("sqlite:///", "file://")) and not shown.startswith("sqlite:////"):
            shown += " (relative to the repository root)"  # a report names no machine's folders
        lines = [
            f"Sweep {rs.sweep}; MLflow experiment {rs.experiment} at {shown}",
            f"{len(rs.runs)} finished runs" + (f" (not counted: {skipped})" if skipped else "")
            + (f"; parent run {rs.parent_run_id}" if rs.parent_run_id else ""),
        ]
        if names:
            lines.append("Metric per benchmark: " + ", ".join(f"{b} {m}" for b, m in names.items()))
        if self.command or self.created:
            lines.append(f"Generated {self.created} by `{self.command}`".replace(" by ``", ""))
        return lines

    def rich(self) -> list:
        return rich_tables(self.table, self.significance, self.cost, title=self.title)


def build_report(
    run_set: RunSet,
    *,
    baseline: str = "base",
    significance: bool = True,
    plots: bool = True,
    curve_metrics: Sequence[str] = CURVE_METRICS,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    command: str = "",
    start: dict[tuple[str, ...], dict[str, float]] | None = None,
    start_notes: Sequence[str] = (),
    root: str | os.PathLike[str] | None = None,
    detection: DetectionOptions | None = None,
) -> Report:
    """Tables, paired tests and small-seed intervals (``eval.json`` artifacts), plots (metric
    histories). ``start``: row -> benchmark -> the starting model's score
    (:func:`bicc_lab.report.start.start_scores`). ``root``: the repository root, for
    relative paths in the report."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    problems = load_problem_scores(run_set) if significance else None
    timings["problems_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    table = build_ablation(run_set, baseline=baseline, problems=problems, start=start, n_resamples=n_resamples)
    table.notes.extend(start_notes)
    table.metric = run_set.metric.spec.replace("_at_", "@")
    cost = build_cost(run_set, baseline=baseline)
    detection = detection or DetectionOptions()
    detected = detection_frame(run_set.frame, run_set.row_keys, baseline=baseline, options=detection)
    table.open_rows = open_rows(detected, run_set.row_keys) if detection.mark_open else set()
    if table.open_rows:
        shown = ", ".join("/".join(row) for row in sorted(table.open_rows))
        table.notes.append(
            f"(open): a comparison of the row is not resolved yet (interval across 0 and wider than the "
            f"target): {shown}; see 'What the seeds can detect'"
        )
    timings["tables_s"] = time.perf_counter() - t0
    rendered: list[Plot] = []
    if plots:
        t0 = time.perf_counter()
        curves = load_curves(run_set, curve_metrics)
        timings["curves_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        acc, notes = accuracy_plot(table)
        if acc is not None:
            rendered.append(acc)
        curve_list, more = curve_plots(run_set, curves, table.arms, table.rows)
        rendered.extend(curve_list)
        table.notes.extend(notes + more)
        timings["plots_s"] = time.perf_counter() - t0
    return Report(
        run_set=run_set,
        table=table,
        significance=table.significance_frame(),
        cost=cost,
        plots=rendered,
        command=command,
        created=time.strftime("%Y-%m-%d %H:%M"),
        timings=timings,
        root=None if root is None else str(root),
        detection=detected,
        detection_options=detection,
    )


def _outputs(report: Report, formats: Iterable[str]) -> dict[str, bytes]:
    """File name (relative to the report folder) -> content."""
    fmts = set(formats)
    rs = report.run_set
    out: dict[str, bytes] = {}
    if "md" in fmts:
        md = render_markdown(report.table, title=report.title, meta=report.meta, significance=report.significance)
        if report.detection is not None and not report.detection.empty:
            effect = report.detection_options.effect if report.detection_options else None
            scale = 100.0 if _percent(report.table) else 1.0
            md += "\n## What the seeds can detect\n\n" + detection_markdown(
                report.detection, rs.row_keys, scale, effect
            ) + "\n"
        if report.plots:
            md += "\n## Plots\n\n" + "\n".join(
                f"![{p.caption}]({PLOTS_DIR}/{p.name}.png)" for p in report.plots
            ) + "\n"
        out["ablation.md"] = md.encode()
        out["cost.md"] = cost_markdown(report.cost, rs.row_keys, title=f"Cost per arm: {rs.sweep}",
                                       baseline=report.table.baseline).encode()
    if "tex" in fmts:
        label = "tab:ablation-" + "".join(ch if ch.isalnum() else "-" for ch in rs.sweep)
        methods = report.table.ci_methods
        how = ", ".join(text for key, text in (("t", "t-interval over 3+ seeds"),
                                               ("bootstrap", "bootstrap over problems and seeds below 3 seeds"))
                        if key in methods) or "no interval"
        start = "; start: the model before training" if report.table.start else ""
        caption = (f"Ablation on {tex_escape(rs.sweep)}: {tex_escape(report.table.metric)}, mean and "
                   f"{report.table.confidence:.0%} CI ({how}); ($\\Delta$) vs baseline{start}.")
        out["ablation.tex"] = render_latex(report.table, caption=caption, label=label).encode()
    if "csv" in fmts:
        percent = _percent(report.table)
        ablation = _in_points(report.table.to_frame(), _ABLATION_SCORES, percent)
        out["ablation.csv"] = ablation.to_csv(index=False).encode()
        significance = _in_points(report.significance, _SIGNIFICANCE_SCORES, percent)
        out["significance.csv"] = significance.to_csv(index=False).encode()
        out["cost.csv"] = report.cost.to_csv(index=False).encode()
        if report.detection is not None:
            detection_frame = _in_points(report.detection, _DETECTION_SCORES, percent)
            out["detection.csv"] = detection_frame.to_csv(index=False).encode()
    if "html" in fmts:
        images = {p.name: (p.caption, p.png) for p in report.plots}
        detection = None
        if report.detection is not None:
            effect = report.detection_options.effect if report.detection_options else None
            detection = detection_rows(report.detection, rs.row_keys, 100.0 if _percent(report.table) else 1.0, effect)
        out["report.html"] = render_html(
            report.table, title=report.title, meta=report.meta, significance=report.significance,
            cost=report.cost, images=images, detection=detection,
        ).encode()
    for p in report.plots:
        out[f"{PLOTS_DIR}/{p.name}.png"] = p.png
        out[f"{PLOTS_DIR}/{p.name}.svg"] = p.svg
    return out


def write_report(report: Report, out_dir: str | os.PathLike[str], formats: Iterable[str] = FORMATS) -> list[Path]:
    """Write the report into ``out_dir`` without ever exposing a half-written file.

    Everything is written into a temporary folder next to ``out_dir`` first; then each
    file is moved in with ``os.replace`` (atomic on one filesystem) and ``plots/`` is
    swapped as a whole, so plots of an earlier report that no longer apply disappear.
    Files in ``out_dir`` that the report does not write (a README, say) are kept.
    """
    target = Path(out_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    contents = _outputs(report, formats)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        for name, data in contents.items():
            path = tmp / name
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        target.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []
        for name in contents:
            if "/" in name:
                continue
            os.replace(tmp / name, target / name)
            written.append(target / name)
        if (tmp / PLOTS_DIR).is_dir():
            old = None
            if (target / PLOTS_DIR).exists():
                old = tmp / ".plots-old"
                os.replace(target / PLOTS_DIR, old)
            os.replace(tmp / PLOTS_DIR, target / PLOTS_DIR)
            written.extend(target / n for n in contents if n.startswith(PLOTS_DIR + "/"))
        return written
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def log_report(report: Report, out_dir: str | os.PathLike[str]) -> str | None:
    """Log the report folder as artifacts (``report/``) of the sweep's parent run.

    Returns the parent run id, or None when the sweep has no parent run.
    """
    rs = report.run_set
    if not rs.parent_run_id or rs.client is None:
        return None
    rs.client.log_artifacts(rs.parent_run_id, str(out_dir), artifact_path=REPORT_ARTIFACT_DIR)
    return rs.parent_run_id
