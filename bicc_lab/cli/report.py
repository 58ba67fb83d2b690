"""`bicc-lab report`: ablation tables and plots from MLflow."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import typer

from bicc_lab.cli._common import fail

HELP = (
    "Ablation tables (mean ± 95% CI over seeds, Δ vs baseline, paired tests) and plots.\n\n"
    "Example: bicc-lab report sweeps/quickstart.yaml --format md,html"
)
FORMAT_NAMES = ("md", "tex", "csv", "html")


def _console():
    from rich.console import Console

    if sys.stdout.isatty():
        return Console()
    return Console(width=int(os.environ.get("COLUMNS", "200")), soft_wrap=False)


def _resolve(source: str, tracking_uri: str | None) -> tuple[str, str, str | None]:
    """(experiment, tracking URI, sweep name or None) of a sweep file or experiment name."""
    from bicc_lab.tracking.naming import normalize_uri, resolve_tracking_uri

    path = Path(source)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            fail(f"no sweep file {source}")
        from bicc_lab.spec import SpecError, load_sweep
        from bicc_lab.sweep.context import SweepContext

        try:
            ctx = SweepContext.of(load_sweep(path))
        except SpecError as exc:
            fail(str(exc))
        except OSError as exc:
            fail(f"cannot read {source}: {exc.strerror or exc}")
        uri = normalize_uri(tracking_uri) if tracking_uri else ctx.uri
        return ctx.experiment, uri, ctx.sweep.name
    uri = normalize_uri(tracking_uri) if tracking_uri else resolve_tracking_uri(None)
    return source, uri, None


def _check_server(uri: str, experiment: str) -> None:
    """An http(s) tracking server that does not answer fails in seconds, with one line."""
    if not uri.startswith(("http://", "https://")):
        return
    from bicc_lab.sweep.context import SweepContext, TrackingUnavailable

    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    try:
        SweepContext(sweep=None, uri=uri, experiment=experiment, runs_dir=Path(".")).check_reachable()  # type: ignore[arg-type]
    except TrackingUnavailable as exc:
        fail(str(exc))


def _formats(text: str) -> list[str]:
    items = [f.strip().lower() for f in text.split(",") if f.strip()]
    bad = [f for f in items if f not in FORMAT_NAMES]
    if bad or not items:
        fail(f"--format: unknown format {', '.join(bad) or '(none)'}; expected a comma list of {','.join(FORMAT_NAMES)}")
    return items


def report(
    sweep: str = typer.Argument(..., help="Sweep YAML (e.g. sweeps/quickstart.yaml) or MLflow experiment name."),
    tracking_uri: str = typer.Option(None, "--tracking-uri", help="MLflow tracking URI (default: the sweep's, else $MLFLOW_TRACKING_URI, else mlflow.db at the repository root)."),
    out_dir: Path = typer.Option(None, "--out", help="Output directory (default reports/<sweep>/)."),
    formats: str = typer.Option("md,tex,csv,html", "--format", help="Comma list of md, tex, csv, html (plots are always written)."),
    baseline: str = typer.Option("base", "--baseline", help="Arm the others are compared with: base, rcc, bicc or bicc+rcc."),
    metric: str = typer.Option("avg_at_k", "--metric", help="Eval metric of the tables: avg_at_k (any k), pass_at_1, pass_at_k, maj_at_k, ..."),
    filter_string: str = typer.Option("", "--filter", help="Extra MLflow search filter, e.g. \"params.train.max_steps = '200'\"."),
    resamples: int = typer.Option(10_000, "--resamples", help="Paired bootstrap resamples over problems."),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Draw training curves and the accuracy plot."),
    log: bool = typer.Option(True, "--log/--no-log", help="Log the report as artifacts of the sweep's parent run."),
) -> None:
    """Build ablation tables and plots for a sweep."""
    fmts = _formats(formats)
    if resamples < 100:
        fail(f"--resamples must be >= 100, got {resamples}")
    experiment, uri, sweep_name = _resolve(sweep, tracking_uri)
    _check_server(uri, experiment)

    from mlflow.exceptions import MlflowException

    from bicc_lab.report import ReportDataError, build_report, load_runs, log_report, write_report
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
    command = "bicc-lab report " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if len(sys.argv) > 2 and sys.argv[1] == "report" else f"bicc-lab report {shlex.quote(sweep)}"
    rep = build_report(run_set, baseline=baseline, plots=plots, n_resamples=resamples, command=command)
    console = _console()
    for renderable in rep.rich():
        console.print(renderable)
    target = out_dir or project_root() / "reports" / _safe(run_set.sweep)
    written = write_report(rep, target, fmts)
    logged = None
    if log:
        try:
            logged = log_report(rep, target)
        except Exception as exc:  # noqa: BLE001 - the files are written; say what failed
            console.print(f"[yellow]could not log the report to MLflow: {type(exc).__name__}: {exc}[/]")
    where = f"; logged to MLflow run {logged} under report/" if logged else ""
    console.print(f"wrote {len(written)} files to {target}{where}")


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name) or "report"
