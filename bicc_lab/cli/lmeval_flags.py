"""lm-eval's command-line habits for `bicc-lab eval`, in one place.

A user who types an ``lm-eval run`` command line should get what lm-eval would do with it:
the underscore spelling (``--model_args``) is the one shown, and the dash spelling
(``--model-args``) is accepted as a hidden alias of every flag; ``--tasks``,
``--model_args`` and ``--gen_kwargs`` take several space-separated words as lm-eval's
``nargs="+"`` does; ``--apply_chat_template`` takes an optional template name. Click has no
optional-value options nor ``nargs="+"`` options, so the argument list is rewritten to
Click's shape before parsing (``eval`` takes no positional arguments, so a bare word after
one of those flags can only be its value).
"""

from __future__ import annotations

import json
from typing import Any

from typer.core import TyperCommand

from bicc_lab.cli._common import fail

#: Flags that lm-eval declares ``nargs="+"``: their words are joined with commas
#: (``--tasks a b`` is ``--tasks a,b``; ``--gen_kwargs t=1 top_p=0.9`` is ``t=1,top_p=0.9``).
MULTI_WORD = ("--tasks", "-t", "--model_args", "-a", "--gen_kwargs")
#: lm-eval's ``--apply_chat_template`` alone means "the tokenizer's default template".
OPTIONAL_VALUE = {"--apply_chat_template": "true"}


class LmEvalStyleCommand(TyperCommand):
    """A Typer command that reads lm-eval's argument shapes (see the module docstring)."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        return super().parse_args(ctx, normalize_args(args, self._option_names()))

    def _option_names(self) -> set[str]:
        names: set[str] = set()
        for param in self.params:  # typer vendors its own click: duck-typed, not isinstance
            if getattr(param, "param_type_name", None) == "option":
                names.update(param.opts)
                names.update(param.secondary_opts)
        return names


def normalize_args(args: list[str], known: set[str]) -> list[str]:
    """The argument list in Click's shape: each flag in its declared spelling, one value
    per multi-word flag, a value after ``--apply_chat_template``."""
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":  # everything after is literal
            out += args[i - 1:]
            break
        if not arg.startswith("-"):
            out.append(arg)
            continue
        name, eq, value = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        name = _spelling(name, known)
        if eq:
            out.append(f"{name}={value}")
            continue
        out.append(name)
        if name in OPTIONAL_VALUE and (i >= len(args) or args[i].startswith("-")):
            out.append(OPTIONAL_VALUE[name])
        elif name in MULTI_WORD:
            words = []
            while i < len(args) and not args[i].startswith("-"):
                words.append(args[i])
                i += 1
            if words:
                out.append(",".join(words))
    return out


def _spelling(name: str, known: set[str]) -> str:
    """``--model-args`` -> ``--model_args`` (or back) when only the other one is declared."""
    if name in known:
        return name
    for other in (name[:2] + name[2:].replace("-", "_"), name[:2] + name[2:].replace("_", "-")):
        if other in known:
            return other
    return name


# ------------------------------------------------------------------ values


def parse_key_values(flag: str, text: str | None) -> dict[str, Any]:
    """lm-eval's own parser of ``--model_args`` / ``--gen_kwargs``: ``k=v,k=v`` (values:
    true/false, numbers, Python literals, else strings; commas inside brackets or quotes
    kept) or a JSON object."""
    if not text:
        return {}
    from lm_eval._cli.utils import key_val_to_dict, try_parse_json

    try:
        parsed = try_parse_json(text)
        if isinstance(parsed, dict):
            return parsed
        return key_val_to_dict(text)
    except ValueError as exc:
        fail(f"{flag} {text!r}: {exc} (expected key=val,key2=val2 or a JSON object)")


def parse_doc_selection(text: str | None) -> dict[str, list[int]] | None:
    """lm-eval's ``--samples``: a JSON object of task name -> document indices."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if isinstance(value, int) or (isinstance(text, str) and text.strip().isdigit()):
        fail(
            f"--samples {text}: --samples is lm-eval's document selection, a JSON object such as "
            "'{\"math500\": [0, 4, 7]}'; samples per problem (k of avg@k) is --repeats"
        )
    if not isinstance(value, dict) or not value or not all(
        isinstance(k, str) and isinstance(v, list) and v and all(isinstance(i, int) and i >= 0 for i in v)
        for k, v in value.items()
    ):
        fail(
            f"--samples {text!r}: expected a JSON object of task name -> list of document indices "
            "(integers >= 0), e.g. '{\"math500\": [0, 4, 7]}'"
        )
    return value


def parse_chat_template(text: str | None) -> bool | str:
    """lm-eval's ``--apply_chat_template [NAME]``: absent: off; alone: the tokenizer's
    default template; with a name: that template of the tokenizer."""
    if text is None:
        return False
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    return text.strip()
