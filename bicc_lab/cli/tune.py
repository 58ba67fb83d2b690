"""`bicc-lab tune`: Optuna studies over RCC coefficients (or any config key)."""

from __future__ import annotations

from pathlib import Path

import typer

from bicc_lab.cli._common import UserError, fail, overrides_argument, with_overrides
from bicc_lab.cli._common import console as _console

app = typer.Typer(
    help="Optuna search over RCC coefficients or any config key.\n\nExample: bicc-lab tune run sweeps/rcc_tune.yaml",
    no_args_is_help=True,
)

STUDY_HELP = "Sweep YAML with a `search:` block, e.g. sweeps/rcc_tune.yaml."
SET_HELP = "Override a dotted key of the base config or of the study, e.g. --set search.n_trials=4 (repeatable)."
SET_FILE_HELP = "YAML file of dotted-key overrides (as `tune best --out` writes), applied before --set."
RUNS_HELP = "Directory of the trials' outputs (default: runs/ at the repository root or cwd)."
REPORTS_HELP = "Where the plots go (default: reports/ at the repository root); <dir>/<study>/."
JSON_HELP = "Print one JSON object (for scripts) instead of the text."


def _setup(study: Path, set_: list[str], set_file: Path | None, runs_dir: Path | None, reports_dir: Path | None):
    """Load the study file; user mistakes end here with one line and exit 2."""
    from bicc_lab.spec import SpecError
    from bicc_lab.spec.search import read_set_file_located
    from bicc_lab.tune.setup import TuneError, prepare

    try:
        items = read_set_file_located(set_file) if set_file is not None else []
        return prepare(study, items + list(set_), runs_dir=runs_dir, reports_dir=reports_dir)
    except (SpecError, TuneError) as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot read {exc.filename or study}: {exc.strerror or exc}")


@app.command("run", help="Run (or resume) a study until n_trials trials finished.\n\nExample: bicc-lab tune run sweeps/rcc_tune.yaml --max-parallel 2")
def run(
    study: Path = typer.Argument(..., help=STUDY_HELP),
    overrides: list[str] = overrides_argument(),
    max_parallel: int = typer.Option(
        None, "--max-parallel", help="Trials running at once (default: search.n_jobs, 1); the name `sweep run` uses."
    ),
    n_jobs_alias: int = typer.Option(None, "--n-jobs", hidden=True, help="Old name of --max-parallel (one more release)."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    set_file: Path = typer.Option(None, "--set-file", help=SET_FILE_HELP),
    runs_dir: Path = typer.Option(None, "--runs-dir", help=RUNS_HELP),
    reports_dir: Path = typer.Option(None, "--reports-dir", help=REPORTS_HELP),
    grace: float = typer.Option(10.0, "--grace", help="Seconds between SIGTERM and SIGKILL when stopping trials on Ctrl-C."),
    launcher: str = typer.Option(None, "--launcher", help="local or slurm: where trials run (default: the file's launch.kind)."),
) -> None:
    from bicc_lab.sweep.context import TrackingUnavailable
    from bicc_lab.tune.runner import run_study
    from bicc_lab.tune.setup import TuneError

    if max_parallel is not None and n_jobs_alias is not None and max_parallel != n_jobs_alias:
        fail(f"--max-parallel {max_parallel} and its old name --n-jobs {n_jobs_alias} disagree; give one")
    n_jobs = max_parallel if max_parallel is not None else n_jobs_alias
    if n_jobs is not None and n_jobs < 1:
        fail(f"--max-parallel must be >= 1, got {n_jobs}")
    from bicc_lab.cli._common import check_grace

    check_grace(grace)
    setup = _setup(study, with_overrides(overrides, set_), set_file, runs_dir, reports_dir)
    from bicc_lab.preflight import Write, preflight, study_checks, sweep_writes

    # The base config, every categorical choice and enqueued set, where trials and plots
    # are written, and the store: before the study, a trial directory or an MLflow run exists.
    writes = sweep_writes(setup.ctx, str(runs_dir) if runs_dir else None, setup.study_name)
    writes.append(Write(setup.reports_dir, f"--reports-dir {reports_dir}" if reports_dir else f"reports directory {setup.reports_dir}"))
    preflight(study_checks(setup.sweep), tracking_uri=setup.ctx.store, create_store=True, tracking_from=setup.ctx.uri_from, writes=writes)
    try:
        outcome = run_study(setup, n_jobs=n_jobs, console=_console(), grace_s=grace, launcher_kind=launcher)
    except (TrackingUnavailable, TuneError) as exc:
        fail(str(exc))
    raise typer.Exit(outcome.exit_code)


@app.command("status", help="Trials table, best value and parameter importances; writes the plots.\n\nExample: bicc-lab tune status sweeps/rcc_tune.yaml")
def status(
    study: Path = typer.Argument(..., help=STUDY_HELP),
    overrides: list[str] = overrides_argument(),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    runs_dir: Path = typer.Option(None, "--runs-dir", help=RUNS_HELP),
    reports_dir: Path = typer.Option(None, "--reports-dir", help=REPORTS_HELP),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Write history/importance plots to reports/<study>/."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    from bicc_lab.tune.views import print_status

    setup = _setup(study, with_overrides(overrides, set_), None, runs_dir, reports_dir)
    raise typer.Exit(print_status(setup, _console(), reports=plots, as_json=as_json))


@app.command("best", help="Export the best parameters as overrides for `sweep run --set-file`.\n\nExample: bicc-lab tune best sweeps/rcc_tune.yaml --output-path best.yaml")
def best(
    study: Path = typer.Argument(..., help=STUDY_HELP),
    overrides: list[str] = overrides_argument(),
    output_path: Path = typer.Option(None, "--output-path", help="Write the overrides YAML to this file (default: print it)."),
    out_alias: Path = typer.Option(None, "--out", hidden=True, help="Old name of --output-path (one more release)."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    runs_dir: Path = typer.Option(None, "--runs-dir", help=RUNS_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the best trial (number, value, params) as one JSON object."),
) -> None:
    from bicc_lab.tune.views import best_json, write_best

    out = output_path or out_alias
    if out is not None:  # before the study is opened
        from bicc_lab.fileio import check_writable_file

        try:
            check_writable_file(out, f"--output-path {out}")
        except UserError as exc:
            fail(str(exc))
    setup = _setup(study, with_overrides(overrides, set_), None, runs_dir, None)
    try:
        text = write_best(setup, out)
        if as_json:
            typer.echo(best_json(setup, out))
            return
    except ValueError as exc:
        fail(str(exc))
    if out is None:
        typer.echo(text, nl=False)
    else:
        typer.echo(f"wrote {out}")
