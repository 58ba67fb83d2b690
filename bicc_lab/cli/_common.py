"""Small helpers shared by the CLI commands. Imports nothing heavy."""

from __future__ import annotations

from typing import NoReturn

import typer

from bicc_lab.console import PIPE_WIDTH, console
from bicc_lab.errors import USER_ERROR_EXIT, UserError

__all__ = ["PIPE_WIDTH", "USER_ERROR_EXIT", "UserError", "check_grace", "console", "fail"]


def fail(message: str) -> NoReturn:
    """Print one clear line to stderr and exit 2 (a user mistake, not a crash)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(USER_ERROR_EXIT)



def check_grace(grace: float) -> None:
    """``--grace``: a finite number of seconds >= 0 (a negative one would SIGKILL at once)."""
    import math

    if not math.isfinite(grace) or grace < 0:
        fail(f"--grace must be a number of seconds >= 0, got {grace:g}")
