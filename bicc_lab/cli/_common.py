"""Small helpers shared by the CLI commands. Imports nothing heavy."""

from __future__ import annotations

from typing import NoReturn

import typer

from bicc_lab.console import PIPE_WIDTH, console
from bicc_lab.errors import USER_ERROR_EXIT, UserError

__all__ = [
    "OVERRIDES_HELP",
    "PIPE_WIDTH",
    "USER_ERROR_EXIT",
    "UserError",
    "check_grace",
    "console",
    "fail",
    "overrides_argument",
    "with_overrides",
]

OVERRIDES_HELP = (
    "Hydra-style overrides after the config, e.g. train.max_steps=3 rcc.coef=0.5: the same as "
    "--set KEY=VALUE (applied before any --set)."
)


def fail(message: str) -> NoReturn:
    """Print one clear line to stderr and exit 2 (a user mistake, not a crash)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(USER_ERROR_EXIT)


def overrides_argument():
    """The positional ``KEY=VALUE...`` after a config (Hydra's habit); see :func:`with_overrides`."""
    return typer.Argument(None, metavar="KEY=VALUE", help=OVERRIDES_HELP, show_default=False)


def with_overrides(positional: list[str] | None, set_: list[str]) -> list[str]:
    """Positional ``KEY=VALUE`` overrides, then ``--set`` ones (the later wins on the same key).

    Both go through the same parser (``spec.load.parse_override``), so a bad key or value gets
    the same message either way; only an item without ``=`` is caught here, because a stray
    word after the config is far more likely a misplaced argument than a malformed override.
    """
    for item in positional or []:
        if "=" not in item:
            fail(
                f"unexpected argument {item!r} after the config: overrides are KEY=VALUE "
                f"(e.g. train.max_steps=3) or --set KEY=VALUE"
            )
    return [*(positional or []), *set_]


def check_grace(grace: float) -> None:
    """``--grace``: a finite number of seconds >= 0 (a negative one would SIGKILL at once)."""
    import math

    if not math.isfinite(grace) or grace < 0:
        fail(f"--grace must be a number of seconds >= 0, got {grace:g}")
