"""Small helpers shared by the CLI commands. Imports nothing heavy."""

from __future__ import annotations

import sys
from typing import NoReturn

import typer

USER_ERROR_EXIT = 2


class UserError(Exception):
    """A mistake in the user's input: reported as one line, exit code 2, no traceback."""


def fail(message: str) -> NoReturn:
    """Print one clear line to stderr and exit 2 (a user mistake, not a crash)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(USER_ERROR_EXIT)


def not_built(command: str, issue: str) -> NoReturn:
    """Commands that exist in the map but not yet in the code say so instead of pretending."""
    typer.echo(f"error: `bicc-lab {command}` is not built yet ({issue}).", err=True)
    raise typer.Exit(USER_ERROR_EXIT)


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean 'the user gave bad input' (mapped to exit 2 by main)."""
    errors: list[type[BaseException]] = [UserError]
    # Only types from modules already imported: importing them here would slow start-up.
    for module_name, attr in (
        ("bicc_lab.spec.load", "SpecError"),
        ("bicc_lab.models.loading", "ModelNotFoundError"),
        ("bicc_lab.tasks.math", "DataError"),
        ("bicc_lab.eval.data", "EvalDataError"),
        ("bicc_lab.algorithms.variants", "UnknownVariantError"),
    ):
        module = sys.modules.get(module_name)
        if module is not None and hasattr(module, attr):
            errors.append(getattr(module, attr))
    return tuple(errors)
