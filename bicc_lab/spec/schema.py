"""Walking the config schema: known keys, did-you-mean, and one-line validation errors.

The pydantic models are the schema. This module answers "is ``bicc.contxt_fraction``
a key?" (with a suggestion when it is not), lists every key with its default and
description, and turns a pydantic ``ValidationError`` into one :class:`SpecError`
that points at the file, line and column of the offending value.
"""

from __future__ import annotations

import difflib
import re
import types
from collections.abc import Iterator
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticUndefined

from bicc_lab.spec.errors import Loc, SpecError, show_value
from bicc_lab.spec.fields import FieldProblem
from bicc_lab.spec.models import ExperimentConfig
from bicc_lab.spec.yamlio import LocMap

__all__ = [
    "FREE",
    "check_keys",
    "dotted",
    "iter_keys",
    "resolve_key",
    "section_of",
    "suggest_key",
    "validate_model",
]


class _Free:
    """Marker: a free-form mapping (any key below it is allowed)."""

    def __repr__(self) -> str:
        return "FREE"


FREE = _Free()


def dotted(path: tuple[Any, ...]) -> str:
    """``("train", "extra", 0)`` -> ``"train.extra[0]"``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + str(part)
    return text


def section_of(annotation: Any) -> type[BaseModel] | _Free | None:
    """The model class under a field annotation, FREE for a dict, None for a leaf value."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return section_of(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        for arg in get_args(annotation):
            found = section_of(arg)
            if found is not None:
                return found
        return None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if annotation is dict or origin is dict:
        return FREE
    return None


def _fields(model: type[BaseModel]) -> dict[str, Any]:
    return dict(model.model_fields)


def iter_keys(
    model: type[BaseModel] = ExperimentConfig, prefix: str = ""
) -> Iterator[tuple[str, Any, Any, str]]:
    """Every leaf key of ``model``: (dotted key, annotation, default, description).

    Sections are descended into; free-form mappings (``train.extra``) are leaves.
    A required key's default is ``...``.
    """
    for name, info in _fields(model).items():
        key = f"{prefix}{name}"
        sub = section_of(info.annotation)
        if isinstance(sub, type):
            yield from iter_keys(sub, key + ".")
            continue
        if info.default is not PydanticUndefined:
            default = info.default
        elif info.default_factory is not None:
            default = info.default_factory()
        else:
            default = ...
        yield key, info.annotation, default, info.description or ""


def _all_paths(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = []
    for name, info in _fields(model).items():
        path = prefix + (name,)
        paths.append(path)
        sub = section_of(info.annotation)
        if isinstance(sub, type):
            paths.extend(_all_paths(sub, path))
    return paths


def suggest_key(
    parts: tuple[str, ...],
    index: int,
    model: type[BaseModel],
    root: type[BaseModel] = ExperimentConfig,
) -> str | None:
    """A close existing key for ``parts`` whose component ``index`` is unknown in ``model``."""
    bad = parts[index]
    prefix = parts[:index]
    # The right name in the wrong section (train.context_fraction -> bicc.context_fraction).
    candidates = _all_paths(root)
    by_last = [p for p in candidates if p[-1] == bad]
    if by_last:
        return ".".join(by_last[0])
    siblings = list(_fields(model))
    close = difflib.get_close_matches(bad, siblings, n=1, cutoff=0.7)
    if close:
        return ".".join(prefix + (close[0],))
    lasts = {p[-1]: p for p in reversed(candidates)}
    close = difflib.get_close_matches(bad, list(lasts), n=1, cutoff=0.8)
    if close:
        return ".".join(lasts[close[0]])
    return None


def resolve_key(
    parts: tuple[str, ...], root: type[BaseModel] = ExperimentConfig
) -> tuple[int, str, str | None] | None:
    """None when ``parts`` names a key of ``root`` (or a key inside a free-form mapping).

    Otherwise (index of the first bad component, problem, suggestion).
    """
    current: type[BaseModel] | _Free | None = root
    for index, part in enumerate(parts):
        if current is FREE:
            return None
        if current is None:
            return index - 1, f"'{'.'.join(parts[:index])}' is a value, not a section", None
        assert isinstance(current, type)
        fields = _fields(current)
        if part not in fields:
            return (
                index,
                f"unknown key '{'.'.join(parts)}'",
                suggest_key(parts, index, current, root),
            )
        current = section_of(fields[part].annotation)
    return None


def _loc_of(locs: LocMap, path: tuple[Any, ...], fallback: Loc, *, key: bool = False) -> Loc:
    """The location of ``path`` (its key when ``key``), else of its nearest ancestor."""
    entry = locs.get(path)
    if entry is not None:
        return (entry.key or entry.value) if key else entry.value
    for cut in range(len(path) - 1, 0, -1):
        entry = locs.get(path[:cut])
        if entry is not None:
            return entry.key or entry.value
    return fallback


def check_keys(
    data: Any,
    locs: LocMap,
    fallback: Loc,
    model: type[BaseModel] = ExperimentConfig,
    path: tuple[str, ...] = (),
    root: type[BaseModel] | None = None,
) -> None:
    """Raise SpecError at the first key in ``data`` that ``model`` does not know."""
    root = root or model
    if not isinstance(data, dict):
        return
    fields = _fields(model)
    for key, value in data.items():
        here = path + (key,)
        if key not in fields:
            suggestion = suggest_key(here, len(path), model, root)
            raise SpecError(
                f"unknown key '{'.'.join(here)}'",
                _loc_of(locs, here, fallback, key=True),
                key=".".join(here),
                hint=f"did you mean '{suggestion}'?" if suggestion else None,
            )
        sub = section_of(fields[key].annotation)
        if isinstance(sub, type) and isinstance(value, dict):
            check_keys(value, locs, fallback, sub, here, root)


# --------------------------------------------------------------------------- errors

_EXPECTED = {
    "int_type": "expected an integer",
    "int_parsing": "expected an integer",
    "int_from_float": "expected an integer",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "finite_number": "expected a finite number",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "string_type": "expected a string",
    "dict_type": "expected a mapping",
    "model_type": "expected a mapping",
    "model_attributes_type": "expected a mapping",
    "list_type": "expected a list",
    "none_required": "expected null",
}

_BOUNDS = {
    "greater_than": (">", "gt"),
    "greater_than_equal": (">=", "ge"),
    "less_than": ("<", "lt"),
    "less_than_equal": ("<=", "le"),
}


def _trim_loc(loc: tuple[Any, ...], data: Any, missing: bool) -> tuple[Any, ...]:
    """The part of pydantic's ``loc`` that is a real key path (drops union member tags)."""
    path: list[Any] = []
    node = data
    for index, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        elif missing and index == len(loc) - 1:
            path.append(part)
            break
        else:
            break
        path.append(part)
    return tuple(path)


def _error_to_spec(
    err: dict[str, Any], data: Any, locs: LocMap, fallback: Loc, prefix: tuple[Any, ...]
) -> tuple[SpecError, Loc]:
    kind = err["type"]
    path = _trim_loc(tuple(err["loc"]), data, kind == "missing")
    full = prefix + path
    key = dotted(full)
    value = err.get("input")
    ctx = err.get("ctx") or {}
    problem = ctx.get("error")

    if isinstance(problem, FieldProblem):
        candidates = [path + problem.path] + [path + extra for extra in problem.also]
        where = next((c for c in candidates if c in locs), candidates[0])
        loc = _loc_of(locs, where, fallback)
        return SpecError(
            problem.message, loc, key=dotted(prefix + candidates[0]), hint=problem.hint
        ), loc

    if kind == "missing":
        loc = _loc_of(locs, path, fallback)
        return SpecError(f"missing required key '{key}'", loc, key=key), loc

    loc = _loc_of(locs, path, fallback)
    if kind == "extra_forbidden":
        return SpecError(
            f"unknown key '{key}'", _loc_of(locs, path, fallback, key=True), key=key
        ), loc

    if kind == "literal_error":
        choices = re.findall(r"'((?:[^'\\]|\\.)*)'", str(ctx.get("expected", "")))
        close: list[str] = []
        if isinstance(value, str):
            lowered = {choice.lower(): choice for choice in choices}
            key_guess = value.lower().replace("-", "_").replace(".", "_")
            if key_guess in lowered:
                close = [lowered[key_guess]]
            else:
                close = [
                    lowered[c]
                    for c in difflib.get_close_matches(key_guess, list(lowered), n=1, cutoff=0.5)
                ]
        guess = f"did you mean '{close[0]}'? " if close else ""
        return (
            SpecError(
                f"invalid value {show_value(value)} for '{key}'",
                loc,
                key=key,
                hint=f"{guess}expected one of: {', '.join(choices)}",
            ),
            loc,
        )

    if kind in _BOUNDS:
        symbol, name = _BOUNDS[kind]
        expected = f"expected a number {symbol} {ctx.get(name)}"
    elif kind in _EXPECTED:
        expected = _EXPECTED[kind]
    elif kind == "too_short":
        expected = f"expected at least {ctx.get('min_length')} item(s)/character(s)"
    elif kind in ("value_error", "assertion_error") and problem is not None:
        expected = str(problem)
        if expected.endswith(f", got {show_value(value)}"):
            return SpecError(f"invalid value for '{key}'", loc, key=key, hint=expected), loc
    else:
        expected = str(err.get("msg", "invalid value")).replace("Value error, ", "")
    return SpecError(
        f"invalid value for '{key}'", loc, key=key, hint=f"{expected}, got {show_value(value)}"
    ), loc


def _sort_key(loc: Loc) -> tuple[int, str, int, int]:
    if loc.file is None:
        return (1, "", 0, 0)
    return (0, loc.file, loc.line or 0, loc.col or 0)


def validate_model(
    model: type[BaseModel],
    data: Any,
    locs: LocMap,
    fallback: Loc,
    *,
    prefix: tuple[Any, ...] = (),
    check_unknown: bool = True,
) -> Any:
    """Validate ``data`` as ``model``; any problem becomes one SpecError.

    Unknown keys are reported first (with a suggestion); then the first pydantic
    error by position in the file, with a count of the others.
    """
    if not isinstance(data, dict):
        raise SpecError(f"expected a mapping of keys, got {show_value(data)}", fallback)
    if check_unknown:
        check_keys(data, locs, fallback, model, ())
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        converted = [_error_to_spec(err, data, locs, fallback, prefix) for err in exc.errors()]
        converted.sort(key=lambda pair: _sort_key(pair[1]))
        first = converted[0][0]
        if len(converted) > 1:
            first = first.with_more(len(converted) - 1)
        raise first from None
