"""Field types and validation helpers shared by the config models of :mod:`bicc_lab.spec`.

``FieldProblem`` (a cross-field check that names its key), the lax-but-not-boolean
``Float``, ``PathName``, ``Variant``, the plugin import and ``_Section``, the strict base
of every config section.

Imports: pydantic, the standard library and the torch-free variant registry only (the
CLI imports this at start-up).
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    AllowInfNan,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Strict,
)

from bicc_lab.algorithms.registry import UnknownVariantError, get_variant
from bicc_lab.spec.errors import show_value

__all__ = [
    "FieldProblem",
    "path_name_problem",
]


class FieldProblem(ValueError):
    """A cross-field check failed; ``path`` is the offending key relative to the model.

    Raised inside model validators so that the loader can point at the right line
    (pydantic would otherwise attribute it to the whole section).
    """

    def __init__(
        self,
        path: tuple[str, ...],
        message: str,
        *,
        hint: str | None = None,
        also: tuple[tuple[str, ...], ...] = (),
    ) -> None:
        self.path = path
        self.hint = hint  # shown after the location
        self.also = also  # other keys involved, tried in order when ``path`` has no location
        super().__init__(f"{message}; {hint}" if hint else message)
        self.message = message


def _reject_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {'true' if value else 'false'}")
    return value


# Floats: lax (ints and "1e-3"-style strings are fine), but never booleans.
SEED_MAX = 2**32 - 1
"""The largest seed numpy's RandomState (seeded by transformers.set_seed) accepts."""

Float = Annotated[float, Strict(False), AllowInfNan(False), BeforeValidator(_reject_bool)]


def path_name_problem(value: str) -> str | None:
    """Why ``value`` cannot name a directory of its own (None: it can).

    Experiment, sweep and study names become ``runs/<sweep>/``, ``runs/train/<name>-<id>/``
    and ``reports/<study>/``; a separator or a ``.``/``..`` name would write outside them.
    """
    if "/" in value or "\\" in value:
        return f"name {value!r} contains a path separator"
    if value.strip() in (".", ".."):
        return f"name {value!r} is a relative directory, not a name"
    if "\0" in value:
        return f"name {value!r} contains a NUL character"
    return None


PATH_NAME_HINT = "names become directory names under runs/ and reports/"


def _path_name(value: str) -> str:
    problem = path_name_problem(value)
    if problem:
        raise FieldProblem((), problem, hint=PATH_NAME_HINT)
    return value


PathName = Annotated[str, AfterValidator(_path_name)]
"""A name that becomes one directory name (no separator, not ``.`` or ``..``)."""


def _registered_variant(value: str) -> str:
    try:
        get_variant(value)
    except UnknownVariantError as exc:
        raise FieldProblem((), f"unknown variant {show_value(value)}", hint=exc.hint) from None
    return value


Variant = Annotated[str, AfterValidator(_registered_variant)]
"""A name in the variant registry (``bicc_lab.algorithms.registry``), read at validation
time so that a variant registered by a plugin module is accepted."""

PLUGINS_HINT = "a plugin is a module importable from the current directory, PYTHONPATH or site-packages"


def import_plugins(names: Any) -> None:
    """Import each module of a config's ``plugins`` list (they register variants, losses).

    The current directory is searched last, as ``python -m`` would search it first: a
    ``my_variants.py`` next to the config works from the ``bicc-lab`` script and in the
    workers it starts, without shadowing an installed module of the same name.
    """
    if not isinstance(names, list):
        return  # the field's own validation reports the wrong type
    if names and os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    for index, name in enumerate(names):
        if not isinstance(name, str):
            continue
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - any failure of user code is one config error
            raise FieldProblem(
                ("plugins", index), f"cannot import plugin {name!r} ({type(exc).__name__}: {exc})", hint=PLUGINS_HINT
            ) from None


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
