"""README.md's "Command reference": every command's ``--help``, rendered the same on every machine.

::

    python -m bicc_lab.cli.reference          # rewrite the section of README.md (make docs)
    python -m bicc_lab.cli.reference --check  # exit 1 when README.md differs from --help

The section lies between :data:`START` and :data:`END`; everything else in README.md is left
as it is. The help is Click's plain text (no Rich boxes, colour or markup) at a fixed
:data:`WIDTH`, with the program named ``bicc-lab`` whatever the entry point was, so the
text depends neither on the terminal, nor on ``$COLUMNS``, nor on the installed path. Option
defaults are what the code declares; environment variables show as ``[env var: NAME]``,
never their current values. Like ``bicc-lab --help``, this imports typer and the command
modules only (no torch, transformers, mlflow or lm-eval).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["END", "START", "WIDTH", "check", "render", "render_section", "update_readme"]

START = "<!-- command-reference:start -->"
END = "<!-- command-reference:end -->"
WIDTH = 100
PROG = "bicc-lab"
README = Path(__file__).resolve().parents[2] / "README.md"
NOTE = (
    "<!-- generated from --help by `make docs` (python -m bicc_lab.cli.reference); "
    "edit the commands' help, not this text -->"
)


# Typer brings its own copy of Click (typer._click): the commands are duck-typed here, and each
# context is made by the command's own ``context_class``.


def _root() -> Any:
    import typer

    from bicc_lab.cli.main import app

    return typer.main.get_command(app)


def _context(command: Any, name: str, parent: Any) -> Any:
    # plain Click help: Typer would render Rich panels where a command asks for Rich markup
    if hasattr(command, "rich_markup_mode"):
        command.rich_markup_mode = None  # type: ignore[attr-defined]
    return command.context_class(
        command, info_name=name, parent=parent, terminal_width=WIDTH, max_content_width=WIDTH,
        color=False, resilient_parsing=True,
    )


def _walk(command: Any, name: str, parent: Any) -> Iterator[tuple[str, str]]:
    """(command path, help text) of ``command`` and of every subcommand, in the CLI's order."""
    ctx = _context(command, name, parent)
    text = command.get_help(ctx)
    yield ctx.command_path, "\n".join(line.rstrip() for line in text.splitlines())
    if hasattr(command, "list_commands"):  # a group
        for sub in command.list_commands(ctx):
            child = command.get_command(ctx, sub)
            if child is not None and not child.hidden:
                yield from _walk(child, sub, ctx)


def render() -> list[tuple[str, str]]:
    """(``bicc-lab sweep run``, its ``--help``) for every command, the root first."""
    return list(_walk(_root(), PROG, None))


def render_section() -> str:
    """The text between the markers: one collapsible block per command."""
    parts = [
        NOTE,
        "",
        f"Every command's `--help`, as `{PROG} COMMAND --help` prints it (at {WIDTH} columns).",
        "",
    ]
    for path, text in render():
        parts += [
            "<details>",
            f"<summary><code>{path}</code></summary>",
            "",
            "```text",
            text.replace("```", "`\u200b``"),  # never closes the fence early
            "```",
            "",
            "</details>",
            "",
        ]
    return "\n".join(parts).rstrip("\n")


def update_readme(text: str, section: str) -> str:
    """``text`` with the part between the markers replaced by ``section``.

    Raises:
        ValueError: the markers are missing, repeated or out of order.
    """
    if text.count(START) != 1 or text.count(END) != 1 or text.index(START) > text.index(END):
        raise ValueError(f"README.md needs one {START} line followed by one {END} line")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{section}\n{END}{tail}"


def check(readme: Path = README) -> bool:
    """Whether ``readme``'s section is what ``--help`` renders now."""
    text = readme.read_text(encoding="utf-8")
    return update_readme(text, render_section()) == text


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args not in ([], ["--check"]):
        print("usage: python -m bicc_lab.cli.reference [--check]", file=sys.stderr)
        return 2
    text = README.read_text(encoding="utf-8")
    new = update_readme(text, render_section())
    if args == ["--check"]:
        if new != text:
            print("README.md's command reference differs from the commands' --help: run `make docs`",
                  file=sys.stderr)
            return 1
        return 0
    if new != text:
        README.write_text(new, encoding="utf-8")
        print(f"updated the command reference in {README}")
    else:
        print(f"the command reference in {README} is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
