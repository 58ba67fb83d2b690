"""`bicc-lab sweep plan|run|status|cancel`: grids over model × variant × BICC × RCC × seed."""

from __future__ import annotations

from pathlib import Path

import typer

from bicc_lab.cli._common import console as _console
from bicc_lab.cli._common import fail, overrides_argument, with_overrides

app = typer.Typer(
    help="Grids over model × variant × BICC × RCC × seed: plan, run, status, cancel.\n\nExample: bicc-lab sweep plan sweeps/quickstart.yaml",
    no_args_is_help=True,
)

SET_HELP = "Override a dotted key in every cell, e.g. --set train.max_steps=50 (repeatable)."
RUNS_HELP = "Directory of the cells' outputs (default: runs/ at the repository root or cwd)."
JSON_HELP = "Print one JSON object (for scripts) instead of the table."


def _load(
    sweep: Path, set_: list[str], runs_dir: Path | None, set_file: Path | None = None, *, lazy: bool = False
):
    """Load and validate the sweep; user mistakes end here with one line and exit 2."""
    from bicc_lab.spec import SpecError, load_sweep
    from bicc_lab.sweep.context import SweepContext

    try:
        if set_file is not None:  # e.g. `bicc-lab tune best --out`; --set wins over it
            from bicc_lab.spec.search import read_set_file_located

            set_ = read_set_file_located(set_file) + list(set_)
        loaded = load_sweep(sweep, set_, lazy=lazy)
        if loaded.seed_policy is not None:
            from bicc_lab.sweep.seeds import resolve_benchmark

            loaded = resolve_benchmark(loaded)
    except SpecError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot read {exc.filename or sweep}: {exc.strerror or exc}")
    return SweepContext.of(loaded, runs_dir)


def _widened(ctx):
    """The sweep with every seed its ``seeds:`` policy may add (a mistake: one line, exit 2)."""
    from bicc_lab.spec import SpecError
    from bicc_lab.sweep.seeds import widened

    try:
        return widened(ctx.sweep)
    except SpecError as exc:
        fail(f"seeds: with seeds.max seeds, {exc}")


def _policy_state(ctx):
    """The seed policy replayed over the store's runs (see bicc_lab.sweep.seeds)."""
    from bicc_lab.sweep.seeds import read_policy_state
    from bicc_lab.tracking.check import StoreError

    try:
        return read_policy_state(ctx, _widened(ctx))
    except StoreError as exc:
        fail(str(exc))


def _print_policy(state) -> None:
    """Why each row of a sweep with ``seeds:`` is still open (plan and status)."""
    for line in state.lines():
        _console().print(line, markup=False, highlight=False, soft_wrap=True)


def _runs(ctx):
    """The sweep's runs in the store (one query), or None when nothing is tracked yet."""
    from bicc_lab.tracking.check import StoreError

    try:
        return ctx.read_runs()
    except StoreError as exc:  # (main maps it too; the typer app alone, e.g. in tests, not)
        fail(str(exc))


def _statuses(ctx):
    from bicc_lab.sweep.state import cell_statuses

    runs = _runs(ctx)
    return cell_statuses(ctx.sweep, ctx.runs_dir, runs), runs is not None


@app.command(
    "plan",
    help="Show the cells of a sweep and their state, without running anything.\n\nExample: bicc-lab sweep plan sweeps/quickstart.yaml",
)
def plan(
    sweep: Path = typer.Argument(..., help="Sweep YAML, e.g. sweeps/quickstart.yaml."),
    overrides: list[str] = overrides_argument(),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    runs_dir: Path = typer.Option(None, "--runs-dir", help=RUNS_HELP),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    from bicc_lab.preflight import preflight, sweep_checks, sweep_writes
    from bicc_lab.sweep.state import iter_cell_statuses
    from bicc_lab.sweep.views import print_plan

    # Lazy: the cells are built (and checked) on each walk, never all held, so that a grid
    # raised past max_cells is planned in bounded memory; rows print as they come.
    ctx = _load(sweep, with_overrides(overrides, set_), runs_dir, lazy=True)
    # The checks of `sweep run` (a cell `run` would refuse is refused here too), except
    # whether this machine can fetch the models and data: a plan is made offline.
    preflight(
        sweep_checks(ctx.sweep), writes=sweep_writes(ctx, str(runs_dir) if runs_dir else None), available=False
    )
    runs = _runs(ctx)
    statuses = iter_cell_statuses(ctx.sweep, ctx.runs_dir, runs)
    if ctx.sweep.seed_policy is not None and as_json:  # one JSON object, the policy's rows in it
        from bicc_lab.sweep.views import plan_view, print_view

        view = plan_view(ctx, list(statuses), runs is not None)
        view.data["seed_policy"] = _policy_state(ctx).as_dict()
        print_view(_console(), view, as_json=True)
        return
    print_plan(_console(), ctx, statuses, runs is not None, as_json=as_json)
    if ctx.sweep.seed_policy is not None:
        _print_policy(_policy_state(ctx))


@app.command(
    "run",
    help=(
        "Train and evaluate every unfinished cell (resumable).\n\n"
        "Where cells run is the sweep's launch: block, or --set launch.*: e.g. --launcher slurm "
        "--set launch.partition=gpu --set launch.time_min=240 --set launch.gpus_per_node=8 "
        "(also launch.nodes, cpus_per_task, mem_gb, account, qos, constraint, setup).\n\n"
        "Example: bicc-lab sweep run sweeps/quickstart.yaml --max-parallel 2"
    ),
)
def run(
    sweep: Path = typer.Argument(..., help="Sweep YAML, e.g. sweeps/quickstart.yaml."),
    overrides: list[str] = overrides_argument(),
    set_: list[str] = typer.Option(
        [], "--set", help=SET_HELP + " SLURM resources too: --set launch.partition=gpu launch.time_min=240."
    ),
    set_file: Path = typer.Option(
        None,
        "--set-file",
        help="YAML file of dotted-key overrides (e.g. from `bicc-lab tune best --out`), applied before --set.",
    ),
    max_parallel: int = typer.Option(
        None, "--max-parallel", help="Cells running at once (default: the sweep's max_parallel)."
    ),
    retry_failed: bool = typer.Option(
        False, "--retry-failed", help="Also rerun cells that failed before."
    ),
    runs_dir: Path = typer.Option(None, "--runs-dir", help=RUNS_HELP),
    grace: float = typer.Option(
        10.0, "--grace", help="Seconds between SIGTERM and SIGKILL when stopping cells on Ctrl-C."
    ),
    launcher: str = typer.Option(
        None, "--launcher", help="local or slurm: where cells run (default: the sweep's launch.kind)."
    ),
    detach: bool = typer.Option(
        False, "--detach", help="SLURM: submit the jobs and return; `sweep run` again re-attaches."
    ),
    progress_every: float = typer.Option(
        30.0, "--progress-every",
        help="Piped/CI output: a line per training cell (step, reward, ETA) and the sweep's ETA every this "
        "many seconds (0: only on state changes).",
    ),
    progress_every_steps: int = typer.Option(
        None, "--progress-every-steps", help="Piped/CI output: also a cell's line every this many training steps."
    ),
) -> None:
    from bicc_lab.sweep.runner import run_sweep
    from bicc_lab.tracking.check import StoreError

    if launcher is not None and launcher not in ("local", "slurm"):
        fail(f"--launcher must be local or slurm, got {launcher!r}")
    from bicc_lab.cli._common import check_grace

    check_grace(grace)
    if progress_every < 0 or (progress_every_steps is not None and progress_every_steps < 1):
        fail("--progress-every must be >= 0 seconds and --progress-every-steps >= 1")

    ctx = _load(sweep, with_overrides(overrides, set_), runs_dir, set_file)
    parallel = max_parallel if max_parallel is not None else ctx.sweep.spec.max_parallel
    if parallel < 1:
        fail(f"--max-parallel must be >= 1, got {parallel}")
    kind = launcher or ctx.sweep.spec.launch.kind
    if detach and kind != "slurm":
        fail(f"--detach needs the slurm launcher ({sweep} runs its cells locally; they stop with `sweep run`)")
    from bicc_lab.preflight import preflight, sweep_checks, sweep_writes

    try:
        # Every cell, where it writes and the store, before any cell, cell directory or
        # MLflow run exists.
        preflight(
            sweep_checks(ctx.sweep), tracking_uri=ctx.store, create_store=True, tracking_from=ctx.uri_from,
            writes=sweep_writes(ctx, str(runs_dir) if runs_dir else None),
        )
        run_kwargs = dict(
            max_parallel=parallel, retry_failed=retry_failed, grace_s=grace,
            launcher_kind=launcher, detach=detach, ask_cancel=ask_cancel_jobs,
            progress_every_s=progress_every or None, progress_every_steps=progress_every_steps,
        )
        if ctx.sweep.seed_policy is not None:  # seeds added batch by batch (README: seed policy)
            from bicc_lab.sweep.seeds import run_with_policy

            outcome = run_with_policy(ctx, _widened(ctx), console=_console(), **run_kwargs)
        else:
            outcome = run_sweep(ctx, console=_console(), **run_kwargs)
    except StoreError as exc:
        fail(str(exc))
    raise typer.Exit(outcome.exit_code)


@app.command(
    "cancel",
    help=(
        "Stop a sweep's running cells and mark them KILLED; a later `sweep run` resumes them. Stops "
        "the `sweep run` driving it, local workers (SIGTERM, then SIGKILL after --grace) and the "
        "cells' SLURM jobs (scancel).\n\nExample: bicc-lab sweep cancel sweeps/quickstart.yaml"
    ),
)
def cancel(
    sweep: Path = typer.Argument(..., help="Sweep YAML, e.g. sweeps/quickstart.yaml."),
    overrides: list[str] = overrides_argument(),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    runs_dir: Path = typer.Option(None, "--runs-dir", help=RUNS_HELP),
    grace: float = typer.Option(10.0, "--grace", help="Seconds between SIGTERM and SIGKILL for local workers."),
    as_json: bool = typer.Option(False, "--json", help="Print what was stopped as one JSON object."),
) -> None:
    from bicc_lab.cli._common import check_grace
    from bicc_lab.sweep.cancel import cancel_sweep

    check_grace(grace)
    ctx = _load(sweep, with_overrides(overrides, set_), runs_dir)
    say = (lambda _m: None) if as_json else typer.echo
    result = cancel_sweep(ctx, grace_s=grace, say=say)
    if as_json:
        import dataclasses
        import json

        typer.echo(json.dumps(dataclasses.asdict(result), indent=2))
        return
    if not result.anything:
        typer.echo(f"nothing of sweep {ctx.sweep.name} is running (in {ctx.sweep_dir})")
        return
    if result.marked:
        typer.echo(f"marked KILLED: {', '.join(result.marked)}")
    typer.echo(f"`bicc-lab sweep run {sweep}` resumes the killed cells")


def ask_cancel_jobs(n: int) -> bool:
    """After Ctrl-C with SLURM jobs submitted: cancel them (True) or leave them queued."""
    import sys

    if not sys.stdin.isatty():
        return True  # nobody to ask (SIGTERM from a script): leave nothing behind
    try:
        return typer.confirm(f"\ncancel the {n} submitted SLURM job(s)? (no: leave them running)", default=False)
    except (typer.Abort, EOFError, KeyboardInterrupt):
        return True


@app.command(
    "status",
    help="Progress of a sweep and its key metrics so far.\n\nExample: bicc-lab sweep status sweeps/quickstart.yaml",
)
def status(
    sweep: Path = typer.Argument(..., help="Sweep YAML, e.g. sweeps/quickstart.yaml."),
    overrides: list[str] = overrides_argument(),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    runs_dir: Path = typer.Option(None, "--runs-dir", help=RUNS_HELP),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    from bicc_lab.sweep.views import print_view, status_view

    ctx = _load(sweep, with_overrides(overrides, set_), runs_dir)
    statuses, tracked = _statuses(ctx)
    view = status_view(ctx, statuses, tracked)
    state = _policy_state(ctx) if ctx.sweep.seed_policy is not None else None
    if state is not None and as_json:
        view.data["seed_policy"] = state.as_dict()
    print_view(_console(), view, as_json=as_json)
    if state is not None and not as_json:
        _print_policy(state)
