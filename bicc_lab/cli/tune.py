"""`bicc-lab tune`: Optuna studies over RCC coefficients (or any config key)."""

from __future__ import annotations

from pathlib import Path

import typer

from bicc_lab.cli._common import not_built

app = typer.Typer(
    help="Optuna search over RCC coefficients or any config key.\n\nExample: bicc-lab tune run sweeps/rcc_tune.yaml",
    no_args_is_help=True,
)


@app.command("run", help="Run (or resume) a study until n_trials trials completed.\n\nExample: bicc-lab tune run sweeps/rcc_tune.yaml --n-jobs 2")
def run(
    study: Path = typer.Argument(..., help="Sweep YAML with a `search:` block."),
    n_jobs: int = typer.Option(1, "--n-jobs", help="Trials running at once."),
) -> None:
    not_built("tune run", "issue 7: tuning")


@app.command("status", help="Trials table, best value and parameter importances.\n\nExample: bicc-lab tune status sweeps/rcc_tune.yaml")
def status(study: Path = typer.Argument(..., help="Sweep YAML with a `search:` block.")) -> None:
    not_built("tune status", "issue 7: tuning")


@app.command("best", help="Export the best parameters as overrides.\n\nExample: bicc-lab tune best sweeps/rcc_tune.yaml --out best.yaml")
def best(
    study: Path = typer.Argument(..., help="Sweep YAML with a `search:` block."),
    out: Path = typer.Option(None, "--out", help="Write the overrides YAML here."),
) -> None:
    not_built("tune best", "issue 7: tuning")
