"""`bicc-lab report`: ablation tables and plots from MLflow."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import typer

from bicc_lab.cli._common import UserError, fail
from bicc_lab.cli._common import console as _console

HELP = (
    "Ablation tables (mean ± 95% CI, Δ vs baseline, the model before training, paired tests) and plots.\n\n"
    "Example: bicc-lab report sweeps/quickstart.yaml --format md,html --open"
)
FORMAT_NAMES = ("md", "tex", "csv", "html")


def _resolve(source: str, tracking_uri: str | None) -> tuple[str, str, str | None, dict, object]:
    """(experiment, tracking URI, sweep name or None, config hash -> cell config, the
    sweep's seed policy or None) of a sweep file or experiment name."""
    from bicc_lab.tracking.naming import normalize_uri, resolve_tracking_uri

    path = Path(source)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            fail(f"no sweep file {source}")
        from bicc_lab.spec import SpecError, load_sweep
        from bicc_lab.sweep.context import SweepContext

        try:
            ctx = SweepContext.of(load_sweep(path))
            policy = None
            if ctx.sweep.seed_policy is not None:
                from bicc_lab.sweep.seeds import resolve_benchmark

                policy = resolve_benchmark(ctx.sweep).seed_policy
        except SpecError as exc:
            fail(str(exc))
        except OSError as exc:
            fail(f"cannot read {source}: {exc.strerror or exc}")
        uri = normalize_uri(tracking_uri) if tracking_uri else ctx.uri
        configs = {cell.config_hash: cell.config for cell in ctx.sweep.cells}
        return ctx.experiment, uri, ctx.sweep.name, configs, policy
    uri = normalize_uri(tracking_uri) if tracking_uri else resolve_tracking_uri(None)
    return source, uri, None, {}, None


def _check_server(uri: str, experiment: str) -> None:
    """A wrong URI, a corrupt/foreign/locked store or an http(s) tracking server that does
    not answer fails in seconds, with one line (a report only reads: nothing is created)."""
    from bicc_lab.tracking.check import (
        StoreError,
        check_tracking_uri,
        quiet_store_logs,
        store_initialised,
    )
    from bicc_lab.tracking.naming import sqlite_path

    if uri.startswith(("http://", "https://")):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    try:
        check_tracking_uri(uri, create=False)
    except StoreError as exc:
        fail(str(exc))
    if not store_initialised(uri):  # an empty file would be turned into a store by MLflow
        fail(f"no MLflow store at {sqlite_path(uri)} (nothing was tracked there)")
    quiet_store_logs()  # a store error while reading is one line below, not a logged traceback


def _formats(text: str) -> list[str]:
    items = [f.strip().lower() for f in text.split(",") if f.strip()]
    bad = [f for f in items if f not in FORMAT_NAMES]
    if bad or not items:
        fail(f"--format: unknown format {', '.join(bad) or '(none)'}; expected a comma list of {','.join(FORMAT_NAMES)}")
    return items


def _command(argv: list[str], sweep: str, root: Path) -> str:
    """The command line as the report shows it: paths inside the repository relative to it."""
    from bicc_lab.report import display_path, display_uri

    args = argv[2:] if len(argv) > 2 and argv[1] == "report" else [sweep]
    shown = []
    for arg in args:
        if arg.startswith(("sqlite:///", "file://", "http://", "https://")):
            arg = display_uri(arg, root)
        elif os.path.isabs(arg) and Path(arg).exists():
            arg = display_path(arg, root)
        elif "=" in arg and arg.startswith("--") and os.path.isabs(arg.split("=", 1)[1]):
            flag, value = arg.split("=", 1)
            arg = f"{flag}={display_path(value, root)}"
        shown.append(shlex.quote(arg))
    return "bicc-lab report " + " ".join(shown)


def _open(path: Path, console) -> None:
    """Open the HTML report in the user's browser ($BROWSER is honoured by webbrowser)."""
    import webbrowser

    try:
        opened = webbrowser.open(path.resolve().as_uri())
    except webbrowser.Error:
        opened = False
    if not opened:
        console.print(f"could not start a web browser; open {path} yourself", markup=False, highlight=False)


def report(
    sweep: str = typer.Argument(..., help="Sweep YAML (e.g. sweeps/quickstart.yaml) or MLflow experiment name."),
    tracking_uri: str = typer.Option(None, "--tracking-uri", help="MLflow tracking URI (default: the sweep's, else $MLFLOW_TRACKING_URI, else mlflow.db at the repository root)."),
    out_dir: Path = typer.Option(None, "--out-dir", help="Output directory (default reports/<sweep>/)."),
    out_alias: Path = typer.Option(None, "--out", hidden=True, help="Old name of --out-dir (one more release)."),
    formats: str = typer.Option("md,tex,csv,html", "--format", help="Comma list of md, tex, csv, html (plots are always written)."),
    baseline: str = typer.Option("base", "--baseline", help="Arm the others are compared with: base, rcc, bicc or bicc+rcc."),
    metric: str = typer.Option("avg_at_k", "--metric", help="Eval metric of the tables: avg_at_k (any k), pass_at_1, pass_at_k, maj_at_k, ..."),
    filter_string: str = typer.Option("", "--filter", help="Extra MLflow search filter, e.g. \"params.train.max_steps = '200'\"."),
    resamples: int = typer.Option(10_000, "--resamples", help="Bootstrap resamples: paired tests, and the intervals of cells with fewer than 3 seeds."),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Draw training curves and the accuracy plot."),
    log: bool = typer.Option(True, "--log/--no-log", help="Log the report as artifacts of the sweep's parent run."),
    start: bool = typer.Option(
        None, "--start/--no-start",
        help="Score each base model before training, evaluated once and cached in $BICC_LAB_CACHE/start "
             "(default: tiny models only, as a hub model's evaluation can take GPU-hours); "
             "--no-start: cached scores only.",
        show_default=False,
    ),
    effect: float = typer.Option(
        None, "--effect",
        help="An effect of interest, in points (e.g. 2): the report says how many seeds each comparison needs to detect it.",
    ),
    open_browser: bool = typer.Option(False, "--open", help="Open report.html in the web browser ($BROWSER) when done."),
) -> None:
    """Build ablation tables and plots for a sweep."""
    fmts = _formats(formats)
    if resamples < 100:
        fail(f"--resamples must be >= 100, got {resamples}")
    if open_browser and "html" not in fmts:
        fail(f"--open shows report.html, but --format {formats} writes no html; add html")
    out_dir = out_dir or out_alias
    # Where the report goes, before MLflow is read and the statistics computed.
    from bicc_lab.fileio import check_writable_dir
    from bicc_lab.tracking.naming import project_root

    try:
        if out_dir is not None:
            check_writable_dir(out_dir, f"--out-dir {out_dir}")
        else:
            check_writable_dir(project_root() / "reports", f"reports directory {project_root() / 'reports'}")
    except UserError as exc:
        fail(str(exc))
    if effect is not None and not effect > 0:
        fail(f"--effect must be a positive number of points, got {effect}")
    experiment, uri, sweep_name, sweep_configs, policy = _resolve(sweep, tracking_uri)
    _check_server(uri, experiment)

    from mlflow.exceptions import MlflowException

    from bicc_lab.report import (
        ReportDataError,
        build_report,
        display_path,
        load_runs,
        log_report,
        write_report,
    )
    from bicc_lab.spec.models import ARMS
    from bicc_lab.tracking.naming import project_root

    try:
        run_set = load_runs(experiment, uri, metric=metric, filter_string=filter_string, sweep=sweep_name)
    except ReportDataError as exc:
        fail(str(exc))
    except MlflowException as exc:
        fail(f"MLflow at {uri}: {str(exc).splitlines()[0][:300]}")
    arms = set(run_set.runs["arm"])
    if baseline not in arms and baseline not in ARMS:
        fail(f"--baseline: no arm {baseline!r}; the runs have {', '.join(sorted(arms))}")
    from bicc_lab.report.start import start_scores

    console = _console()
    root = project_root()

    def say(text: str) -> None:
        console.print(text, markup=False, highlight=False)

    # The report's header names the store relative to the repository; this line, the one it read.
    say(f"read {len(run_set.runs)} finished runs of MLflow experiment {experiment!r} from {uri}")
    compute = "tiny" if start is None else "all" if start else "none"
    starting = start_scores(run_set, sweep_configs=sweep_configs, compute=compute, say=say)
    from bicc_lab.report.detect import DetectionOptions

    # (effects in the metric's units: points / 100 for the accuracy-like metrics)
    unit = 100.0 if run_set.metric.family in ("avg", "pass", "maj") else 1.0
    detection = DetectionOptions(effect=effect / unit if effect else None)
    if policy is not None:  # the interval sweep run decided with: its α, looks, comparisons
        detection = DetectionOptions(
            alpha=policy.alpha, looks=tuple(policy.looks()), half_width=policy.half_width,
            benchmarks=(policy.benchmark,), arms=policy.arms if baseline == policy.baseline else None,
            effect=detection.effect, mark_open=True,
        )
    rep = build_report(run_set, baseline=baseline, plots=plots, n_resamples=resamples,
                       command=_command(sys.argv, sweep, root), start=starting.scores,
                       start_notes=starting.notes, root=root, detection=detection)
    for renderable in rep.rich():
        console.print(renderable)
    target = out_dir or root / "reports" / _safe(run_set.sweep)
    written = write_report(rep, target, fmts)
    logged = None
    if log:
        try:
            logged = log_report(rep, target)
        except Exception as exc:  # noqa: BLE001 - the files are written; say what failed
            console.print(f"[yellow]could not log the report to MLflow: {type(exc).__name__}: {exc}[/]")
    where = f"; logged to MLflow run {logged} under report/" if logged else ""
    console.print(f"wrote {len(written)} files to {display_path(target, root)}{where}", markup=False, highlight=False)
    if open_browser:
        _open(target / "report.html", console)


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name) or "report"
