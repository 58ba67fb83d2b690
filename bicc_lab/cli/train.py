"""`bicc-lab train`: one training run from one experiment config."""

from __future__ import annotations

from pathlib import Path

import typer

from bicc_lab.cli._common import not_built

HELP = (
    "Train one run from an experiment config (then evaluate it if eval.enabled).\n\n"
    "Example: bicc-lab train experiments/tiny.yaml --set variant=dapo --set bicc.enabled=true "
    "--set train.max_steps=2"
)


def train(
    config: Path = typer.Argument(..., help="Experiment YAML, e.g. experiments/tiny.yaml."),
    set_: list[str] = typer.Option(
        [], "--set", help="Override a dotted config key, e.g. --set rcc.coef=0.5 (repeatable)."
    ),
    output_dir: Path = typer.Option(None, "--output-dir", help="Where checkpoints and the final model go."),
) -> None:
    """Train one run from an experiment config."""
    not_built("train", "issue 3: TRL backend")
