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
from bicc_lab.cli import models as models_cmd
from bicc_lab.cli import report as report_cmd
from bicc_lab.cli import sweep as sweep_cmd
from bicc_lab.cli import train as train_cmd
from bicc_lab.cli import tune as tune_cmd
from bicc_lab.errors import USER_ERROR_EXIT, UserError

#: Every environment variable bicc-lab reads (README "Environment variables" has the same list).
ENVIRONMENT = {
    "BICC_LAB_DATA_DIR": "benchmark and training JSONL files (--data-dir wins over it)",
    "BICC_LAB_CACHE": "tiny-model, pulled-model and starting-score cache (default ~/.cache/bicc_lab)",
    "BICC_LAB_HEARTBEAT_S": "seconds between a running cell's heartbeats (default 15)",
    "BICC_LAB_STALE_AFTER_S": "a cell or trial whose heartbeat is older is taken as dead (default 60)",
    "BICC_LAB_STORE_WAIT_S": "seconds a locked SQLite tracking store is waited for (default 60)",
    "BICC_LAB_MP_START": "multiprocessing start method of the answer grader (default fork on Linux)",
    "BICC_LAB_ROLLOUT_DUMP": "directory: each rank writes its first training generation batch there (debugging)",
    "BICC_LAB_ROLLOUT_REPLAY": "file: the first training generation batch replays its completions (debugging)",
    "BICC_LAB_VLLM_SERVER_HOST": "set by the SLURM launcher: the node running trl vllm-serve (not for users)",
    "MLFLOW_TRACKING_URI": "tracking store when the sweep or config names none (default sqlite:///mlflow.db "
    "at the repo root); eval logs there when it is set",
}
# Click rewraps epilog paragraphs; \b keeps this block's lines as they are.
_NAME_WIDTH = max(len(k) for k in ENVIRONMENT) + 2
ENV_HELP = "Environment variables:\n\n\b\n" + "\n".join(f"  {k:<{_NAME_WIDTH}}{v}" for k, v in ENVIRONMENT.items())

app = typer.Typer(
    name="bicc-lab",
    help=(
        "Ablation harness for GRPO-family RL with BICC and RCC.\n\n"
        "Example: bicc-lab sweep run sweeps/quickstart.yaml && bicc-lab report sweeps/quickstart.yaml"
    ),
    epilog=ENV_HELP,
    no_args_is_help=True,
    add_completion=True,
    context_settings={"help_option_names": ["-h", "--help"]},
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
app.command("eval", help=eval_cmd.HELP, cls=eval_cmd.COMMAND_CLASS)(eval_cmd.evaluate)
app.command("report", help=report_cmd.HELP)(report_cmd.report)
app.add_typer(tune_cmd.app, name="tune")
app.add_typer(data_cmd.app, name="data")
app.add_typer(models_cmd.app, name="models")
app.command("doctor", help=doctor_cmd.HELP)(doctor_cmd.doctor)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry: user mistakes become one line on stderr and exit code 2.

    Every environment variable bicc-lab reads is checked first, before any command does
    its work (``preflight`` checks them again for callers of the library); help and shell
    completion work whatever the environment holds.
    """
    import os

    args = sys.argv[1:] if argv is None else argv
    try:
        if not any(a in ("-h", "--help", "--version") for a in args) and "_BICC_LAB_COMPLETE" not in os.environ:
            from bicc_lab.envvars import check_environment

            check_environment()
        app(args=argv, standalone_mode=True)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT)


if __name__ == "__main__":
    main()
