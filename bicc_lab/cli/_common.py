"""Small helpers shared by the CLI commands. Imports nothing heavy."""

from __future__ import annotations

from typing import NoReturn

import typer

from bicc_lab.errors import USER_ERROR_EXIT, UserError

__all__ = ["PIPE_WIDTH", "USER_ERROR_EXIT", "UserError", "console", "fail"]


def fail(message: str) -> NoReturn:
    """Print one clear line to stderr and exit 2 (a user mistake, not a crash)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(USER_ERROR_EXIT)


#: Width of a console that is not a terminal (a pipe, a file, a CI log): wide enough that
#: no Rich table ever shrinks, folds or drops a column; lines are not padded to it.
PIPE_WIDTH = 4096


def console(stderr: bool = False):
    """A Rich console: the terminal's width on a terminal; otherwise every column kept.

    ``$COLUMNS`` is ignored when the output is not a terminal: CI runners set it to 80,
    which made Rich cut the ablation table's CI and ratio columns from the quickstart log.
    """
    import sys

    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(stderr=stderr)
    return Console(stderr=stderr, width=PIPE_WIDTH, soft_wrap=False)
