"""`SpecError` and source locations of config values.

Every mistake in a config file, a sweep file or a ``--set`` override becomes one
:class:`SpecError` whose ``str()`` is a single line naming where the mistake is
(``path/to/file.yaml:LINE:COL`` or ``--set key``), the dotted key and what was
expected. The CLI maps it to exit code 2.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from bicc_lab.errors import UserError

__all__ = ["Loc", "SpecError", "display_path", "show_value"]


@dataclass(frozen=True)
class Loc:
    """Where a value came from: a 1-based line and column in a file, or a label.

    ``label`` (e.g. ``"--set train.max_steps"``) is used when there is no file
    position, and as the whole location when ``file`` is None.
    """

    file: str | None = None
    line: int | None = None
    col: int | None = None
    label: str | None = None

    def __str__(self) -> str:
        if self.file is None:
            return self.label or "<config>"
        if self.line is None:
            return self.file
        if self.col is None:
            return f"{self.file}:{self.line}"
        return f"{self.file}:{self.line}:{self.col}"


class SpecError(UserError, ValueError):
    """A user mistake in a config; ``str()`` is exactly one line.

    Attributes:
        message: what is wrong, without the location.
        location: where (``file:LINE:COL`` or ``--set key``), or None.
        key: the dotted config key concerned, or None.
        hint: what would fix it (``did you mean ...``, valid values), or None.
    """

    def __init__(
        self,
        message: str,
        location: Loc | str | None = None,
        *,
        key: str | None = None,
        hint: str | None = None,
        suffix: str | None = None,
        more: int = 0,
    ) -> None:
        self.message = _one_line(message)
        self.location = str(location) if location is not None else None
        self.key = key
        self.hint = _one_line(hint) if hint else None
        self.suffix = _one_line(suffix) if suffix else None
        self.more = more
        text = self.message
        if self.location:
            text += f" at {self.location}"
        if self.suffix:
            text += f" {self.suffix}"
        if self.hint:
            text += f"; {self.hint}"
        if more:
            text += f" (+{more} more error{'s' if more > 1 else ''})"
        super().__init__(text)

    def with_suffix(self, suffix: str) -> SpecError:
        """The same error with ``suffix`` (e.g. ``(in cell variant=grpo)``) after the location."""
        merged = f"{self.suffix} {suffix}" if self.suffix else suffix
        return SpecError(
            self.message, self.location, key=self.key, hint=self.hint, suffix=merged, more=self.more
        )

    def with_more(self, more: int) -> SpecError:
        """The same error noting ``more`` further errors."""
        return SpecError(
            self.message, self.location, key=self.key, hint=self.hint, suffix=self.suffix, more=more
        )


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def show_value(value: Any, limit: int = 60) -> str:
    """A short one-line rendering of a user value: strings quoted, others as YAML would read."""
    if isinstance(value, str):
        text = repr(value)
    elif value is None:
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, dict):
        text = "a mapping {" + ", ".join(str(k) for k in list(value)[:5]) + "}"
    elif isinstance(value, list):
        text = "a list [" + ", ".join(show_value(v, 20) for v in value[:5]) + "]"
    else:
        text = repr(value)
    text = _one_line(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def display_path(path: str | os.PathLike[str]) -> str:
    """``path`` relative to the working directory when it lies below it, else absolute."""
    text = os.fspath(path)
    try:
        absolute = os.path.abspath(text)
        rel = os.path.relpath(absolute)
    except ValueError:  # different drive on Windows
        return text
    if rel == ".." or rel.startswith(".." + os.sep):
        return absolute
    return rel
