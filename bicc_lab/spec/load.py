"""Loading experiment and sweep YAML files, with ``--set`` overrides and one-line errors.

Every mistake raises :class:`SpecError` (a ``ValueError``) whose ``str()`` is one
line: what is wrong, ``at path/to/file.yaml:LINE:COL`` (or ``at --set key``), and a
hint (``did you mean ...``, the valid values). Examples::

    unknown key 'bicc.contxt_fraction' at sweeps/x.yaml:7:5; did you mean 'bicc.context_fraction'?
    unknown variant 'drgrpo' at sweeps/x.yaml:7:5; did you mean 'dr_grpo'? valid: aspo, dapo, ...
    invalid value for 'train.max_steps' at experiments/x.yaml:4:14; expected an integer, got 'abc'

Precedence in a sweep cell, lowest first: the base experiment file, the sweep's
``set:``, ``--set`` overrides of experiment keys, the cell's grid/zip values, the
sweep's ``tracking:``. ``--set`` keys that start with a sweep key (``grid.``,
``set.``, ``zip``, ``exclude``, ``max_parallel``, ``gpus``, ``search.``, ``seeds.``,
``tracking.``, ``name``, ``base``) edit the sweep file itself; after ``grid.`` and
``set.`` the rest is one dotted key (``--set grid.train.learning_rate=[1e-3,2e-4]``).
"""

from __future__ import annotations

import copy
import difflib
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bicc_lab.spec.errors import Loc, SpecError, display_path, show_value
from bicc_lab.spec.fields import PATH_NAME_HINT, path_name_problem
from bicc_lab.spec.grid import Axis, Cell, LazyCells, build_cells, format_value, rule_matches
from bicc_lab.spec.models import ExperimentConfig, SweepConfig
from bicc_lab.spec.schema import check_keys, resolve_key, validate_model
from bicc_lab.spec.seeds import SeedPolicy, check_seed_policy
from bicc_lab.spec.yamlio import (
    KeyLoc,
    LocMap,
    missing_reason,
    parse_value,
    put,
    read_yaml,
    subtree,
)

__all__ = [
    "Override",
    "SpecError",
    "Sweep",
    "load_experiment",
    "load_experiment_located",
    "load_sweep",
    "parse_override",
    "parse_overrides",
    "validate_experiment",
    "with_overrides",
]

SWEEP_KEYS: tuple[str, ...] = tuple(SweepConfig.model_fields)


@dataclass(frozen=True)
class Override:
    """One ``--set KEY=VALUE``: the dotted key, its parts, and the YAML-parsed value."""

    key: str
    value: Any
    origin: Loc | None = None  # where it is written when not on the command line (--set-file)

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(self.key.split("."))

    @property
    def label(self) -> str:
        return str(self.origin) if self.origin is not None else f"--set {self.key}"

    @property
    def loc(self) -> Loc:
        return self.origin if self.origin is not None else Loc(label=self.label)

    def value_locs(self) -> dict[tuple[Any, ...], KeyLoc]:
        return {(): KeyLoc(self.loc, self.loc)}


def parse_override(item: str) -> Override:
    """Parse ``"train.max_steps=10"``; the value is YAML (``true``, ``1e-3``, ``[a, b]``, empty = null).

    Raises:
        SpecError: no ``=``, an empty or malformed key, or a value that is not YAML.
    """
    if not isinstance(item, str) or "=" not in item:
        raise SpecError(
            f"--set expects KEY=VALUE, got {show_value(item)}",
            hint="e.g. --set train.max_steps=10",
        )
    key, _, text = item.partition("=")
    key = key.strip()
    label = f"--set {key}" if key else "--set"
    if not key or any(not part or part != part.strip() or " " in part for part in key.split(".")):
        raise SpecError(
            f"invalid key {key!r} in --set {item!r}",
            hint="expected a dotted key such as train.max_steps",
        )
    return Override(key=key, value=parse_value(text, label))


def parse_overrides(items: Iterable[str | Override] | None) -> list[Override]:
    """Parse every ``--set`` item (see :func:`parse_override`); an :class:`Override` (an
    entry of a ``--set-file``, located in that file) is taken as it is."""
    return [item if isinstance(item, Override) else parse_override(item) for item in (items or [])]


def _check_key(parts: tuple[str, ...], loc: Loc, *, what: str = "key") -> None:
    problem = resolve_key(parts)
    if problem is None:
        return
    _, message, suggestion = problem
    if what != "key" and message.startswith("unknown key "):
        message = f"unknown {what} " + message[len("unknown key ") :]
    raise SpecError(
        message,
        loc,
        key=".".join(parts),
        hint=f"did you mean '{suggestion}'?" if suggestion else None,
    )


def _top_mapping(data: Any, shown: str, what: str) -> dict[str, Any]:
    if data is None:
        raise SpecError(f"{what} is empty; expected a mapping of config keys", Loc(file=shown))
    if not isinstance(data, dict):
        raise SpecError(
            f"{what} must be a mapping of config keys, got {show_value(data)}",
            Loc(file=shown, line=1, col=1),
        )
    return data


def _apply_overrides(data: dict[str, Any], locs: LocMap, overrides: list[Override]) -> None:
    for override in overrides:
        _check_key(override.parts, override.loc)
        put(data, locs, override.parts, copy.deepcopy(override.value), override.value_locs())


def validate_experiment(data: Mapping[str, Any], source: str = "<config>") -> ExperimentConfig:
    """Validate a plain mapping (no file positions; errors are located at ``source``)."""
    return validate_model(ExperimentConfig, dict(data), {}, Loc(label=source))


def with_overrides(
    config: ExperimentConfig, overrides: Mapping[str, Any] | Iterable[str]
) -> ExperimentConfig:
    """A re-validated copy of ``config`` with dotted-key overrides applied.

    ``overrides`` is either ``{"rcc.coef": 0.5}`` or ``["rcc.coef=0.5"]`` (``--set`` syntax).
    """
    if isinstance(overrides, Mapping):
        parsed = [Override(key=str(k), value=v) for k, v in overrides.items()]
    else:
        parsed = parse_overrides(overrides)
    data = config.model_dump(mode="python")
    locs: LocMap = {}
    _apply_overrides(data, locs, parsed)
    return validate_model(ExperimentConfig, data, locs, Loc(label="<overrides>"))


def load_experiment(path: str | Path, overrides: Iterable[str] | None = None) -> ExperimentConfig:
    """Read and validate an experiment YAML, applying ``--set`` overrides on top.

    Raises:
        SpecError: any mistake, as one line with ``file:LINE:COL`` or ``--set key``.
    """
    return load_experiment_located(path, overrides)[0]


def load_experiment_located(
    path: str | Path, overrides: Iterable[str] | None = None
) -> tuple[ExperimentConfig, LocMap]:
    """:func:`load_experiment`, plus where each key is written (for checks after loading)."""
    parsed = parse_overrides(overrides)
    data, locs, shown = read_yaml(path, what="experiment file")
    data = _top_mapping(data, shown, "experiment file")
    sweepish = [key for key in ("base", "grid", "zip", "exclude") if key in data]
    if sweepish:
        raise SpecError(
            f"'{sweepish[0]}' is a sweep key: {shown} looks like a sweep file, not an experiment",
            locs[(sweepish[0],)].key,
            key=sweepish[0],
            hint="pass it to a `bicc-lab sweep` command",
        )
    fallback = Loc(file=shown)
    check_keys(data, locs, fallback)
    _apply_overrides(data, locs, parsed)
    return validate_model(ExperimentConfig, data, locs, fallback), locs


# --------------------------------------------------------------------------- sweeps


@dataclass
class Sweep:
    """A loaded sweep: its validated spec, the resolved base and the expanded cells.

    Attributes:
        name: ``name:`` of the sweep file, else the file's stem.
        path: the sweep file.
        spec: the validated sweep block (grid, zip, exclude, search, ...).
        base_path: the base experiment file (resolved relative to the sweep file).
        base_config: base + ``set`` + experiment ``--set`` overrides, validated.
        axes: the grid and zip axes, in order (grid first, then each zip group).
        cells: every cell, in expansion order (first axis outermost); with ``lazy``
            loading a :class:`~bicc_lab.spec.grid.LazyCells` that builds them on each walk.
        overrides: the ``--set`` items the sweep was loaded with.
    """

    name: str
    path: Path
    spec: SweepConfig
    base_path: Path
    base_config: ExperimentConfig
    axes: list[Axis]
    cells: Sequence[Cell]
    overrides: list[str] = field(default_factory=list)
    seed_policy: SeedPolicy | None = None  # the ``seeds:`` block, resolved against the grid

    @property
    def axis_keys(self) -> list[str]:
        """Dotted keys of the axes, in order."""
        return [axis.key for axis in self.axes]

    def cell(self, ref: str) -> Cell:
        """The cell whose id, id prefix (>= 4 chars) or name is ``ref``."""
        for cell in self.cells:
            if ref in (cell.cell_id, cell.name, cell.config_hash):
                return cell
        matches = [
            cell for cell in self.cells if len(ref) >= 4 and cell.config_hash.startswith(ref)
        ]
        if len(matches) == 1:
            return matches[0]
        raise SpecError(
            f"no cell {ref!r} in sweep '{self.name}'",
            hint=f"{len(self.cells)} cells; see `bicc-lab sweep plan`",
        )

    def __len__(self) -> int:
        return len(self.cells)


def _axes_from(
    block: Any, locs: LocMap, prefix: tuple[Any, ...], group: int | None, shown: str
) -> list[Axis]:
    """Axes of a grid block (``group=None``: each axis its own group) or of one zip group."""
    axes = []
    for position, (key, values) in enumerate(block.items()):
        entry = locs.get(prefix + (key,))
        key_loc = entry.key if entry and entry.key else Loc(file=shown)
        _check_key(tuple(key.split(".")), key_loc, what="grid axis")
        if not values:
            raise SpecError(
                f"axis '{key}' has no values", entry.value if entry else key_loc, key=key
            )
        value_locs = []
        for index in range(len(values)):
            sub = subtree(locs, prefix + (key, index))
            if () not in sub:
                where = entry.value if entry else key_loc
                sub[()] = KeyLoc(key_loc, where)
            value_locs.append(sub)
        own_group = position if group is None else group
        axes.append(
            Axis(
                key=key,
                values=list(values),
                key_loc=key_loc,
                value_locs=value_locs,
                group=own_group,
            )
        )
    return axes


def _check_grid_size(axes: list[Axis], limit: int, locs: LocMap, fallback: Loc) -> None:
    """The number of cells, from the axes' lengths alone (before any cell is built), against
    ``max_cells``: a few short lines of axes can ask for millions of cells."""
    lengths: dict[int, tuple[str, int]] = {}
    for axis in axes:
        lengths.setdefault(axis.group, (axis.key, len(axis.values)))
    total = 1
    for _, n in lengths.values():
        total *= n
    if total <= limit:
        return
    factors = " x ".join(f"{n} {key}" for key, n in lengths.values())
    entry = locs.get(("max_cells",))
    raise SpecError(
        f"the grid has {total:,} cells ({factors}), more than max_cells = {limit:,}",
        entry.value if entry else fallback,
        key="max_cells",
        hint=f"shrink an axis, or raise the limit with --set max_cells={total}",
    )


def load_sweep(
    path: str | Path, overrides: Iterable[str | Override] | None = None, *, lazy: bool = False
) -> Sweep:
    """Read a sweep, merge it over its base experiment, validate and expand every cell.

    ``lazy``: every cell is built and checked here as well, but not kept: ``Sweep.cells``
    builds them again on each walk (``sweep plan`` of a large grid, in bounded memory).

    Raises:
        SpecError: any mistake in the sweep file, the base file, an override or a
            cell (cell errors name the cell's axis values), as one line.
    """
    parsed = parse_overrides(overrides)
    sweep_path = Path(path)
    data, locs, shown = read_yaml(sweep_path, what="sweep file")
    data = _top_mapping(data, shown, "sweep file")
    fallback = Loc(file=shown)

    # Experiment keys written at the top level of a sweep are a common slip.
    if (
        "base" not in data
        and "name" in data
        and any(k in data for k in ("train", "model", "variant"))
    ):
        raise SpecError(
            f"{shown} looks like an experiment file, not a sweep (it has no 'base:')",
            Loc(file=shown, line=1, col=1),
            hint="a sweep names its experiment with base: path/to/experiment.yaml",
        )
    for key in data:
        if key not in SWEEP_KEYS and key in ExperimentConfig.model_fields:
            raise SpecError(
                f"unknown sweep key '{key}'",
                locs[(key,)].key,
                key=key,
                hint=f"experiment keys go under 'set:' (or under 'grid:' to vary them), e.g. set: {{{key}: ...}}",
            )

    sweep_level = [o for o in parsed if o.parts[0] in SWEEP_KEYS]
    experiment_level = [o for o in parsed if o.parts[0] not in SWEEP_KEYS]
    for override in sweep_level:
        parts = override.parts
        target: tuple[Any, ...] = (
            (parts[0], ".".join(parts[1:]))
            if parts[0] in ("grid", "set") and len(parts) > 1
            else parts
        )
        put(data, locs, target, copy.deepcopy(override.value), override.value_locs())

    spec = validate_model(SweepConfig, data, locs, fallback)
    name = spec.name or sweep_path.stem
    if spec.name is None and (problem := path_name_problem(name)):  # e.g. a file named "...yaml"
        raise SpecError(f"sweep {problem} (the file's stem)", fallback, key="name", hint=PATH_NAME_HINT)

    # Base experiment, relative to the sweep file.
    base_entry = locs.get(("base",))
    base_loc = base_entry.value if base_entry else fallback
    base_path = Path(os.path.normpath(sweep_path.parent / spec.base))
    if not base_path.is_file():
        state = "is a directory" if base_path.is_dir() else missing_reason(base_path)
        raise SpecError(
            f"base experiment file {state}: {display_path(base_path)}",
            base_loc,
            key="base",
            hint="'base' is relative to the sweep file",
        )
    base_data, base_locs, base_shown = read_yaml(base_path, what="base experiment file")
    base_data = _top_mapping(base_data, base_shown, "base experiment file")
    base_fallback = Loc(file=base_shown)
    check_keys(base_data, base_locs, base_fallback)

    # set: dotted or nested keys, in file order.
    set_block = data.get("set") or {}
    for key, value in set_block.items():
        entry = locs.get(("set", key))
        key_loc = entry.key if entry and entry.key else fallback
        parts = tuple(key.split("."))
        _check_key(parts, key_loc)
        value_locs = subtree(locs, ("set", key))
        put(base_data, base_locs, parts, copy.deepcopy(value), value_locs)
    _apply_overrides(base_data, base_locs, experiment_level)
    check_keys(base_data, base_locs, base_fallback)

    # Axes: grid axes each move alone; each zip group moves together.
    axes = _axes_from(data.get("grid") or {}, locs, ("grid",), None, shown)
    next_group = len(axes)
    for gi, group in enumerate(data.get("zip") or []):
        group_entry = locs.get(("zip", gi))
        group_loc = group_entry.value if group_entry else fallback
        if not group:
            raise SpecError("empty zip group", group_loc, key=f"zip[{gi}]")
        members = _axes_from(group, locs, ("zip", gi), next_group, shown)
        lengths = {axis.key: len(axis.values) for axis in members}
        if len(set(lengths.values())) > 1:
            described = ", ".join(f"{k} has {n}" for k, n in lengths.items())
            raise SpecError(
                f"zip group axes have different lengths ({described})", group_loc, key=f"zip[{gi}]"
            )
        axes.extend(members)
        next_group += 1

    seen: dict[str, Axis] = {}
    for axis in axes:
        for other_key, other in seen.items():
            a, b = axis.parts, other.parts
            if a == b or a[: len(b)] == b or b[: len(a)] == a:
                what = "is repeated" if a == b else f"overlaps axis '{other_key}'"
                raise SpecError(
                    f"axis '{axis.key}' {what}",
                    axis.key_loc,
                    key=axis.key,
                    hint=f"first at {other.key_loc}",
                )
        seen[axis.key] = axis

    for key in set_block:
        if key in seen:
            entry = locs.get(("set", key))
            raise SpecError(
                f"'{key}' is both in 'set' and an axis",
                entry.key if entry and entry.key else fallback,
                key=key,
                hint=f"the axis at {seen[key].key_loc} would override it; remove one",
            )
    for override in experiment_level:
        if override.key in seen:
            raise SpecError(
                f"'{override.key}' is an axis of this sweep",
                override.loc,
                key=override.key,
                hint=f"to change its values use --set grid.{override.key}=[...]",
            )

    # Exclude rules: keys must be axes, values must be among the axis values.
    excludes = data.get("exclude") or []
    for ei, rule in enumerate(excludes):
        rule_entry = locs.get(("exclude", ei))
        if not rule:
            raise SpecError(
                "empty exclude rule (it would exclude every cell)",
                rule_entry.value if rule_entry else fallback,
            )
        for key, value in rule.items():
            entry = locs.get(("exclude", ei, key))
            if key not in seen:
                close = difflib.get_close_matches(key, list(seen), n=1)
                raise SpecError(
                    f"exclude key '{key}' is not an axis of this sweep",
                    entry.key if entry and entry.key else fallback,
                    key=key,
                    hint=(f"did you mean '{close[0]}'? " if close else "")
                    + f"axes: {', '.join(seen) or 'none'}",
                )
            if not any(rule_matches(value, v) for v in seen[key].values):
                raise SpecError(
                    f"exclude value {show_value(value)} for '{key}' matches none of its axis values",
                    entry.value if entry else fallback,
                    key=key,
                    hint="axis values: " + ", ".join(format_value(v) for v in seen[key].values),
                )

    # search.params keys are config keys too.
    if spec.search is not None:
        for key in spec.search.params:
            entry = locs.get(("search", "params", key))
            _check_key(
                tuple(key.split(".")),
                entry.key if entry and entry.key else fallback,
                what="search parameter",
            )

    base_config = validate_model(ExperimentConfig, base_data, base_locs, base_fallback)
    if spec.search is not None:  # bounds, choices and enqueued values against the base
        from bicc_lab.spec.search import check_search

        check_search(spec.search, base_config, locs, fallback)

    _check_grid_size(axes, spec.max_cells, locs, fallback)
    tracking = {k: v for k, v in spec.tracking.model_dump().items() if v is not None}
    tracking_locs = {k: e for k in tracking if (e := locs.get(("tracking", k))) is not None}
    cells = (LazyCells if lazy else build_cells)(
        base_data=base_data,
        base_locs=base_locs,
        base_fallback=base_fallback,
        axes=axes,
        excludes=excludes,
        tracking=tracking,
        tracking_locs=tracking_locs,
        sweep_loc=fallback,
    )
    seed_policy = None
    if spec.seeds is not None:  # (a lazy walk builds the cells once more: the arms are theirs)
        arms = {cell.arm for cell in cells}
        benchmarks = [b for cell in cells for b in cell.config.eval.benchmarks]
        seed_policy = check_seed_policy(
            spec.seeds, data.get("grid") or {}, arms, benchmarks, base_config.eval.samples, locs, fallback
        )
    return Sweep(
        name=name,
        path=sweep_path,
        spec=spec,
        base_path=base_path,
        base_config=base_config,
        axes=axes,
        cells=cells,
        overrides=list(overrides or []),
        seed_policy=seed_policy,
    )
