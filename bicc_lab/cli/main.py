"""`bicc-lab`: the command-line entry point.

Start-up must stay light (`bicc-lab --help` well under a second): this module and the
command modules import only typer/stdlib at import time; torch, transformers, trl, mlflow,
lm-eval, optuna and pandas are imported inside the command bodies.
"""

from __future__ import annotations

import sys

import typer

from bicc_lab import __version__
from bicc_lab.cli import data as data_cmd
from bicc_lab.cli import doctor as doctor_cmd
from bicc_lab.cli import evaluate as eval_cmd
from bicc_lab.cli import report as report_cmd
from bicc_lab.cli import sweep as sweep_cmd
from bicc_lab.cli import train as train_cmd
from bicc_lab.cli import tune as tune_cmd
from bicc_lab.errors import USER_ERROR_EXIT, UserError

app = typer.Typer(
    name="bicc-lab",
    help=(
        "Ablation harness for GRPO-family RL with BICC and RCC.\n\n"
        "Example: bicc-lab sweep run sweeps/quickstart.yaml && bicc-lab report sweeps/quickstart.yaml"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"bicc-lab {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Ablation harness for GRPO-family RL with BICC and RCC."""


app.add_typer(sweep_cmd.app, name="sweep")
app.command("train", help=train_cmd.HELP)(train_cmd.train)
app.command("eval", help=eval_cmd.HELP)(eval_cmd.evaluate)
app.command("report", help=report_cmd.HELP)(report_cmd.report)
app.add_typer(tune_cmd.app, name="tune")
app.add_typer(data_cmd.app, name="data")
app.command("doctor", help=doctor_cmd.HELP)(doctor_cmd.doctor)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry: user mistakes become one line on stderr and exit code 2."""
    try:
        app(args=argv, standalone_mode=True)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT)


if __name__ == "__main__":
    main()
