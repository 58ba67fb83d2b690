"""`bicc-lab tune`: Optuna studies over RCC coefficients (or any config key)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from bicc_lab.cli._common import fail

app = typer.Typer(
    help="Optuna search over RCC coefficients or any config key.\n\nExample: bicc-lab tune run sweeps/rcc_tune.yaml",
    no_args_is_help=True,
)

STUDY_HELP = "Sweep YAML with a `search:` block, e.g. sweeps/rcc_tune.yaml."
SET_HELP = "Override a dotted key of the base config or of the study, e.g. --set search.n_trials=4 (repeatable)."
SET_FILE_HELP = "YAML file of dotted-key overrides (as `tune best --out` writes), applied before --set."
RUNS_HELP = "Directory of the trials' outputs (default: runs/ at the repository root or cwd)."
REPORTS_HELP = "Where the plots go (default: reports/ at the repository root); <dir>/<study>/."


def _console():
    from rich.console import Console

    if sys.stdout.isatty():
        return Console()
    return Console(width=int(os.environ.get("COLUMNS", "200")), soft_wrap=False)


def _setup(study: Path, set_: list[str], set_file: Path | None, runs_dir: Path | None, reports_dir: Path | None):
    """Load the study file; user mistakes end here with one line and exit 2."""
    from bicc_lab.spec import SpecError
    from bicc_lab.spec.search import read_set_file, set_items
    from bicc_lab.tune.runner import TuneError, prepare

    try:
        items = set_items(read_set_file(set_file)) if set_file is not None else []
        return prepare(study, items + list(set_), runs_dir=runs_dir, reports_dir=reports_dir)
    except (SpecError, TuneError) as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot read {exc.filename or study}: {exc.strerror or exc}")


@app.command("run", help="Run (or resume) a study until n_trials trials finished.\n\nExample: bicc-lab tune run sweeps/rcc_tune.yaml --n-jobs 2")
def run(
    study: Path = typer.Argument(..., help=STUDY_HELP),
    n_jobs: int = typer.Option(None, "--n-jobs", help="Trials running at once (default: search.n_jobs, 1)."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    set_file: Path = typer.Option(None, "--set-file", help=SET_FILE_HELP),
    runs_dir: Path = typer.Option(None, "--runs-dir", help=RUNS_HELP),
    reports_dir: Path = typer.Option(None, "--reports-dir", help=REPORTS_HELP),
    grace: float = typer.Option(10.0, "--grace", help="Seconds between SIGTERM and SIGKILL when stopping trials on Ctrl-C."),
) -> None:
    from bicc_lab.sweep.context import TrackingUnavailable
    from bicc_lab.tune.runner import TuneError, run_study

    if n_jobs is not None and n_jobs < 1:
        fail(f"--n-jobs must be >= 1, got {n_jobs}")
    setup = _setup(study, set_, set_file, runs_dir, reports_dir)
    try:
        outcome = run_study(setup, n_jobs=n_jobs, console=_console(), grace_s=grace)
    except (TrackingUnavailable, TuneError) as exc:
        fail(str(exc))
    raise typer.Exit(outcome.exit_code)


@app.command("status", help="Trials table, best value and parameter importances; writes the plots.\n\nExample: bicc-lab tune status sweeps/rcc_tune.yaml")
def status(
    study: Path = typer.Argument(..., help=STUDY_HELP),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    runs_dir: Path = typer.Option(None, "--runs-dir", help=RUNS_HELP),
    reports_dir: Path = typer.Option(None, "--reports-dir", help=REPORTS_HELP),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Write history/importance plots to reports/<study>/."),
) -> None:
    from bicc_lab.tune.views import print_status

    setup = _setup(study, set_, None, runs_dir, reports_dir)
    raise typer.Exit(print_status(setup, _console(), reports=plots))


@app.command("best", help="Export the best parameters as overrides for `sweep run --set-file`.\n\nExample: bicc-lab tune best sweeps/rcc_tune.yaml --out best.yaml")
def best(
    study: Path = typer.Argument(..., help=STUDY_HELP),
    out: Path = typer.Option(None, "--out", help="Write the overrides YAML here (default: print it)."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    runs_dir: Path = typer.Option(None, "--runs-dir", help=RUNS_HELP),
) -> None:
    from bicc_lab.tune.views import write_best

    setup = _setup(study, set_, None, runs_dir, None)
    try:
        text = write_best(setup, out)
    except ValueError as exc:
        fail(str(exc))
    if out is None:
        typer.echo(text, nl=False)
    else:
        typer.echo(f"wrote {out}")
