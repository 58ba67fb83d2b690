"""Checks of a sweep's ``search:`` block against its base config, and ``--set-file`` files.

:class:`~bicc_lab.spec.sweep_sections.SearchConfig` validates the block on its own (types, bounds,
choices). What needs the resolved base config happens here, with the file positions:
every bound and choice must give a valid config when applied to the base (``type: float``
on an integer key, a choice a ``Literal`` key does not take, ...), every ``enqueue`` entry
must lie in its distribution, and an ``eval/...`` objective needs evaluation enabled.

Imports: pydantic, PyYAML and the standard library only.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bicc_lab.spec.errors import Loc, SpecError, show_value
from bicc_lab.spec.models import ExperimentConfig
from bicc_lab.spec.sweep_sections import SearchConfig, SearchParam
from bicc_lab.spec.yamlio import LocMap, read_yaml

__all__ = ["check_search", "in_distribution", "param_value", "read_set_file", "set_items"]


def param_value(param: SearchParam, value: Any) -> Any:
    """``value`` as the distribution hands it to the config (ints for ``type: int``)."""
    if param.type == "int" and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def in_distribution(param: SearchParam, value: Any) -> bool:
    """Whether ``value`` is one the distribution can produce."""
    if param.type == "categorical":
        return any(type(value) is type(c) and value == c for c in param.choices or [])
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if param.type == "int" and not float(value).is_integer():
        return False
    assert param.low is not None and param.high is not None
    return param.low - 1e-12 <= float(value) <= param.high + 1e-12 and math.isfinite(value)


def _loc(locs: LocMap, path: tuple[Any, ...], fallback: Loc) -> Loc:
    for cut in range(len(path), 0, -1):
        entry = locs.get(path[:cut])
        if entry is not None:
            return entry.value if cut == len(path) else (entry.key or entry.value)
    return fallback


def _check_value(
    base: ExperimentConfig, key: str, value: Any, what: str, loc: Loc, hint_type: str | None
) -> None:
    from bicc_lab.spec.load import with_overrides

    try:
        with_overrides(base, {key: value})
    except SpecError as exc:
        hint = exc.hint or exc.message
        if hint_type:
            hint += f" (use type: {hint_type})"
        raise SpecError(
            f"search.params.{key}: {what} {show_value(value)} is not a valid value of '{key}'",
            loc,
            key=f"search.params.{key}",
            hint=hint,
        ) from None


def check_search(
    search: SearchConfig, base: ExperimentConfig, locs: LocMap, fallback: Loc
) -> None:
    """Check ``search`` against the resolved base config; raise one located SpecError."""
    for key, param in search.params.items():
        at = ("search", "params", key)
        if param.type == "categorical":
            for index, choice in enumerate(param.choices or []):
                sub = at + ("choices", index) if (at + ("choices", index)) in locs else at + (index,)
                _check_value(base, key, choice, "choice", _loc(locs, sub, fallback), None)
            continue
        for field in ("low", "high"):
            value = param_value(param, getattr(param, field))
            hint_type = "int" if param.type != "int" and _is_int_key(base, key) else None
            _check_value(base, key, value, field, _loc(locs, at + (field,), fallback), hint_type)

    for index, entry in enumerate(search.enqueue):
        for key, value in entry.items():
            param = search.params[key]
            loc = _loc(locs, ("search", "enqueue", index, key), fallback)
            if not in_distribution(param, value):
                raise SpecError(
                    f"search.enqueue[{index}]: {show_value(value)} is outside the distribution of '{key}'",
                    loc,
                    key=f"search.enqueue.{key}",
                    hint=_describe(param),
                )
            _check_value(base, key, param_value(param, value), "value", loc, None)

    objective = search.objective
    if objective.startswith("eval/") and not base.eval.enabled and "eval.enabled" not in search.params:
        raise SpecError(
            f"search.objective '{objective}' is an evaluation metric but eval.enabled is false",
            _loc(locs, ("search", "objective"), fallback),
            key="search.objective",
            hint="enable evaluation, or optimise a training metric such as reward",
        )


def _is_int_key(base: ExperimentConfig, key: str) -> bool:
    node: Any = base
    for part in key.split("."):
        node = getattr(node, part, None) if not isinstance(node, dict) else node.get(part)
    return isinstance(node, int) and not isinstance(node, bool)


def _describe(param: SearchParam) -> str:
    if param.type == "categorical":
        return "choices: " + ", ".join(show_value(c) for c in param.choices or [])
    return f"{param.type} in [{param.low:g}, {param.high:g}]"


# --------------------------------------------------------------------------- --set-file


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def read_set_file(path: str | Path) -> dict[str, Any]:
    """A YAML mapping of dotted keys (nested mappings are flattened) -> values.

    This is what ``bicc-lab tune best --out`` writes; ``--set-file`` applies it as if each
    entry were a ``--set key=value``. Raises SpecError (one line, file:line) on anything else.
    """
    data, locs, shown = read_yaml(path, what="overrides file")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SpecError(
            f"an overrides file must be a mapping of dotted keys to values, got {show_value(data)}",
            Loc(file=shown, line=1, col=1),
            hint="e.g. rcc.coef: 0.5",
        )
    return _flatten(data)


def read_set_file_located(path: str | Path) -> list[Any]:
    """:func:`read_set_file` as ``Override`` entries located at their line in the file, so
    that a mistake in one (an unknown key, a bad value) names the file, not ``--set``."""
    from bicc_lab.spec.load import Override

    data, locs, shown = read_yaml(path, what="overrides file")
    read_set_file(path)  # the same checks (a mapping)
    out: list[Any] = []

    def walk(node: dict[str, Any], path: tuple[str, ...]) -> None:
        for key, value in node.items():
            here = path + (key,)
            if isinstance(value, dict) and value:
                walk(value, here)
                continue
            entry = locs.get(here)
            where = (entry.key or entry.value) if entry is not None else Loc(file=shown)
            out.append(Override(key=".".join(here), value=value, origin=where))

    if isinstance(data, dict):
        walk(data, ())
    return out


def set_items(overrides: dict[str, Any]) -> list[str]:
    """``{"rcc.coef": 0.5}`` -> ``["rcc.coef=0.5"]`` (values as JSON, which YAML reads back)."""
    import json

    return [f"{key}={json.dumps(value)}" for key, value in overrides.items()]
