"""The Rich console every command prints through. Light: imports rich only when called.

On a terminal it is the terminal's width. Anywhere else (a pipe, a file, a CI log) it is
:data:`PIPE_WIDTH` wide, so no Rich table ever shrinks, folds or drops a column; lines
are not padded to that width. ``$COLUMNS`` is ignored off a terminal: CI runners set it
to 80, which made Rich cut the ablation table's CI and ratio columns from the quickstart's
own log.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["PIPE_WIDTH", "console"]

PIPE_WIDTH = 4096


def console(stderr: bool = False) -> Any:
    """A ``rich.console.Console`` for stdout (or stderr) as described above."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(stderr=stderr)
    return Console(stderr=stderr, width=PIPE_WIDTH, soft_wrap=False)
