"""`bicc-lab sweep plan|run|status`: grids over model × variant × BICC × RCC × seed."""

from __future__ import annotations

from pathlib import Path

import typer

from bicc_lab.cli._common import not_built

app = typer.Typer(
    help="Grids over model × variant × BICC × RCC × seed.\n\nExample: bicc-lab sweep plan sweeps/quickstart.yaml",
    no_args_is_help=True,
)

SET_HELP = "Override a dotted key in every cell, e.g. --set train.max_steps=50 (repeatable)."


@app.command("plan", help="Show the cells of a sweep and their state, without running anything.\n\nExample: bicc-lab sweep plan sweeps/quickstart.yaml")
def plan(
    sweep: Path = typer.Argument(..., help="Sweep YAML, e.g. sweeps/quickstart.yaml."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
) -> None:
    not_built("sweep plan", "issue 4: sweeps")


@app.command("run", help="Train and evaluate every unfinished cell (resumable).\n\nExample: bicc-lab sweep run sweeps/quickstart.yaml --max-parallel 2")
def run(
    sweep: Path = typer.Argument(..., help="Sweep YAML, e.g. sweeps/quickstart.yaml."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    max_parallel: int = typer.Option(None, "--max-parallel", help="Cells running at once (default: the sweep's max_parallel)."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Also rerun cells that failed before."),
) -> None:
    not_built("sweep run", "issue 4: sweeps")


@app.command("status", help="Progress of a sweep and its key metrics so far.\n\nExample: bicc-lab sweep status sweeps/quickstart.yaml")
def status(sweep: Path = typer.Argument(..., help="Sweep YAML, e.g. sweeps/quickstart.yaml.")) -> None:
    not_built("sweep status", "issue 4: sweeps")
