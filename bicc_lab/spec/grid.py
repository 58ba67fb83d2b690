"""Grid expansion of a sweep into cells, and the identity of a run.

Identity rule
-------------
A run's identity is the sha256 of the *canonical JSON* of its resolved
:class:`ExperimentConfig`: ``model_dump(mode="json")`` with every default
filled in, keys sorted, compact separators, and the keys in
:data:`IDENTITY_EXCLUDE` removed. Those are the keys that cannot change any
number the run produces, only where it is labelled, tracked, written or read from:

- ``name``: the experiment's label;
- ``tracking.*``: the MLflow URI and experiment;
- ``train.output_dir``: where checkpoints are written;
- ``data.data_dir`` and ``eval.data_dir``: where the same named data files are read.

Everything else is in, including keys that only change how something is computed
(``model.attn_implementation``, ``train.use_vllm``, ``eval.backend``) or what is
logged (``train.logging_steps``), because they can change the recorded numbers.
Consequences: writing a key explicitly with its default value, reordering keys,
or writing ``2e-4`` instead of ``0.0002`` keeps the id; adding a new key to the
schema, or changing a default, changes every id (the code that trains changed).

``config_hash`` is the full hex digest, ``cell_id`` its first 12 hex characters.
``train_id`` also leaves out ``eval.*`` (runs that differ only in evaluation share
a trained model).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bicc_lab.spec.errors import Loc, SpecError
from bicc_lab.spec.models import ExperimentConfig, arm
from bicc_lab.spec.schema import validate_model
from bicc_lab.spec.yamlio import KeyLoc, LocMap, put

if TYPE_CHECKING:
    from bicc_lab.spec.load import Sweep

__all__ = [
    "IDENTITY_EXCLUDE",
    "NAMED_AXES",
    "Axis",
    "Cell",
    "LazyCells",
    "arm",
    "canonical_json",
    "config_hash",
    "config_id",
    "expand",
    "identity_dict",
    "model_short_name",
    "train_id",
]

IDENTITY_EXCLUDE: tuple[str, ...] = (
    "name",
    "tracking",
    "train.output_dir",
    "data.data_dir",
    "eval.data_dir",
)
"""Dotted keys left out of a run's identity (where/how it is labelled, tracked, written, read)."""

TRAIN_IDENTITY_EXCLUDE: tuple[str, ...] = IDENTITY_EXCLUDE + ("eval",)

NAMED_AXES: tuple[str, ...] = ("model.name", "variant", "bicc.enabled", "rcc.enabled", "seed")
"""Axes already spelled by the ``model/variant/arm/sSEED`` part of a cell name."""

ID_LENGTH = 12


# --------------------------------------------------------------------------- identity


def identity_dict(
    config: ExperimentConfig, exclude: Sequence[str] = IDENTITY_EXCLUDE
) -> dict[str, Any]:
    """The resolved config as JSON-able data, defaults included, ``exclude`` keys removed."""
    data = config.model_dump(mode="json")
    for key in exclude:
        parts = key.split(".")
        node: Any = data
        for part in parts[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(parts[-1], None)
    return data


def canonical_json(config: ExperimentConfig, exclude: Sequence[str] = IDENTITY_EXCLUDE) -> str:
    """Sorted-key, compact JSON of :func:`identity_dict`: the text that is hashed."""
    return json.dumps(
        identity_dict(config, exclude),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        default=str,
    )


def config_hash(config: ExperimentConfig) -> str:
    """Full sha256 hex digest of :func:`canonical_json`."""
    return hashlib.sha256(canonical_json(config).encode("utf-8")).hexdigest()


def config_id(config: ExperimentConfig) -> str:
    """The short id of a run: the first 12 hex characters of :func:`config_hash`."""
    return config_hash(config)[:ID_LENGTH]


def train_id(config: ExperimentConfig) -> str:
    """Like :func:`config_id` but ignoring ``eval.*``: same id, same trained model."""
    text = canonical_json(config, TRAIN_IDENTITY_EXCLUDE)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:ID_LENGTH]


# --------------------------------------------------------------------------- cells


@dataclass(frozen=True)
class Cell:
    """One resolved run of a sweep.

    Attributes:
        config: the validated experiment config of this cell.
        axes: the grid/zip values of this cell, by dotted key, in axis order.
        name: readable and unique within the sweep, e.g. ``tiny/grpo/bicc+rcc/s0``
            (model short name / variant / arm / seed, then ``key=value`` for the
            other axes that vary).
        cell_id: 12 hex characters, see the module docstring.
        config_hash: the full sha256 the id is cut from.
        index: position in the expansion order.
        locs: where each key of ``config`` is written (base file, sweep file or ``--set``),
            so that checks after loading (the preflight) can point at a file:line.
    """

    config: ExperimentConfig
    axes: dict[str, Any]
    name: str
    cell_id: str
    config_hash: str
    index: int = 0
    locs: LocMap = field(default_factory=dict, repr=False, compare=False)

    @property
    def arm(self) -> str:
        """``base``, ``rcc``, ``bicc`` or ``bicc+rcc``."""
        return arm(self.config)

    @property
    def train_id(self) -> str:
        """Id of the trained model (ignores ``eval.*``)."""
        return train_id(self.config)


@dataclass(frozen=True)
class Axis:
    """One grid or zip axis: a dotted key and its values (with where each is written)."""

    key: str
    values: list[Any]
    key_loc: Loc
    value_locs: list[dict[tuple[Any, ...], KeyLoc]] = field(default_factory=list, repr=False)
    group: int = 0  # axes with the same group move together (a zip group)

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(self.key.split("."))


def expand(sweep: Sweep) -> list[Cell]:
    """The cells of ``sweep`` (already expanded and validated by ``load_sweep``)."""
    return list(sweep.cells)


def model_short_name(name: str) -> str:
    """``Qwen/Qwen3-4B-Instruct-2507`` -> ``Qwen3-4B-Instruct-2507``; ``/ckpt/step-100/`` -> ``step-100``."""
    stripped = name.replace("\\", "/").rstrip("/")
    return stripped.rsplit("/", 1)[-1] or name


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) != isinstance(b, bool):
        return False
    return a == b


def rule_matches(rule_value: Any, value: Any) -> bool:
    """An exclude value matches an axis value when equal, or (a list) when it contains it."""
    if _same(rule_value, value):
        return True
    if isinstance(rule_value, list) and not isinstance(value, list):
        return any(_same(item, value) for item in rule_value)
    return False


def format_value(value: Any, index: int | None = None) -> str:
    """A compact, path-safe rendering of an axis value for cell names."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = "null"
    elif isinstance(value, float):
        text = repr(value)
    elif isinstance(value, int):
        text = str(value)
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
        if len(text) > 24 and index is not None:
            text = f"#{index}"
    return text.replace("/", "_")


def _groups(axes: list[Axis]) -> list[list[Axis]]:
    groups: dict[int, list[Axis]] = {}
    for axis in axes:
        groups.setdefault(axis.group, []).append(axis)
    return [groups[g] for g in sorted(groups)]


def _iter_combos(
    axes: list[Axis], excludes: list[dict[str, Any]]
) -> Iterator[list[tuple[Axis, int]]]:
    """The (axis, value position) picks of each cell, in expansion order, minus excludes:
    positions only, so that the grid can be walked without building a cell."""
    ordered = _groups(axes)
    order = {id(axis): i for i, axis in enumerate(axes)}
    for positions in itertools.product(*(range(len(group[0].values)) for group in ordered)):
        picks = [
            (axis, pos) for group, pos in zip(ordered, positions, strict=True) for axis in group
        ]
        picks.sort(key=lambda pick: order[id(pick[0])])
        if excludes:
            values = {axis.key: axis.values[pos] for axis, pos in picks}
            if any(all(rule_matches(v, values[k]) for k, v in rule.items()) for rule in excludes):
                continue
        yield picks


def _short_keys(axes: list[Axis], excludes: list[dict[str, Any]]) -> tuple[dict[str, str], int]:
    """The axes a cell name spells (those not in the named part that take more than one
    value among the cells), by the shortest unambiguous key; and the number of cells."""
    seen: dict[int, set[int]] = {id(axis): set() for axis in axes}
    count = 0
    for picks in _iter_combos(axes, excludes):
        count += 1
        for axis, pos in picks:
            seen[id(axis)].add(pos)
    varying = [
        axis
        for axis in axes
        if axis.key not in NAMED_AXES
        and len({json.dumps(axis.values[pos], sort_keys=True, default=str) for pos in seen[id(axis)]})
        > 1
    ]
    lasts = [axis.key.rsplit(".", 1)[-1] for axis in varying]
    short = {
        axis.key: (last if lasts.count(last) == 1 else axis.key)
        for axis, last in zip(varying, lasts, strict=True)
    }
    return short, count


@dataclass
class _Builder:
    """What every cell of a sweep is built from (the merged base, the axes, tracking)."""

    base_data: dict[str, Any]
    base_locs: LocMap
    base_fallback: Loc
    axes: list[Axis]
    excludes: list[dict[str, Any]]
    tracking: dict[str, Any]
    tracking_locs: dict[tuple[Any, ...], KeyLoc]
    sweep_loc: Loc
    share_base: bool = False  # cells only read and dropped (a plan): see _data
    short: dict[str, str] = field(default_factory=dict)
    count: int = 0

    def __post_init__(self) -> None:
        self.short, self.count = _short_keys(self.axes, self.excludes)
        if not self.count:
            raise SpecError("the sweep has no cells left after 'exclude'", self.sweep_loc)

    def _data(self, picks: list[tuple[Axis, int]]) -> dict[str, Any]:
        """A copy of the base that the picks and tracking can be written into without
        changing the base: the sections on their paths are copied (the subtree at an axis
        key deeply, it may be merged into), the rest shared. Per cell this is a few small
        copies, not a deep copy of the whole config. A value typed ``Any`` (in
        ``train.extra``) stays shared with the base through validation, so cells that are
        kept (``build_cells``, which ``sweep run`` hands on) get a deep copy instead."""
        if not self.share_base:
            return copy.deepcopy(self.base_data)
        data = dict(self.base_data)
        copied = {id(data)}
        paths = [axis.parts for axis, _ in picks] + [("tracking", key) for key in self.tracking]
        for path in paths:
            node = data
            for part in path[:-1]:
                child = node.get(part)
                if not isinstance(child, dict):
                    break  # put() makes a new section here
                if id(child) not in copied:
                    child = dict(child)
                    node[part] = child
                    copied.add(id(child))
                node = child
            else:
                if isinstance(node.get(path[-1]), dict):  # put() merges a mapping into it
                    node[path[-1]] = copy.deepcopy(node[path[-1]])
        return data

    def cell(self, index: int, picks: list[tuple[Axis, int]]) -> Cell:
        data = self._data(picks)
        locs = dict(self.base_locs)
        for axis, pos in picks:
            put(data, locs, axis.parts, copy.deepcopy(axis.values[pos]), axis.value_locs[pos])
        for key, value in self.tracking.items():
            put(
                data,
                locs,
                ("tracking", key),
                value,
                {(): self.tracking_locs[key]} if key in self.tracking_locs else {},
            )
        values = {axis.key: axis.values[pos] for axis, pos in picks}
        try:
            config = validate_model(
                ExperimentConfig, data, locs, self.base_fallback,
                # The base's keys and the axes' keys are checked when loaded; only a
                # mapping as an axis value can bring a key the schema does not know.
                check_unknown=any(isinstance(axis.values[pos], dict) for axis, pos in picks),
            )
        except SpecError as exc:
            described = ", ".join(f"{k}={format_value(v)}" for k, v in values.items())
            raise exc.with_suffix(f"(in cell {described})") from None
        digest = config_hash(config)
        name = "/".join(
            [model_short_name(config.model.name), config.variant, arm(config), f"s{config.seed}"]
            + [
                f"{self.short[axis.key]}={format_value(axis.values[pos], pos)}"
                for axis, pos in picks
                if axis.key in self.short
            ]
        )
        return Cell(
            config=config,
            axes=values,
            name=name,
            cell_id=digest[:ID_LENGTH],
            config_hash=digest,
            index=index,
            locs=locs,
        )

    def cells(self) -> Iterator[Cell]:
        for index, picks in enumerate(_iter_combos(self.axes, self.excludes)):
            yield self.cell(index, picks)

    def duplicate_config(self, first: Cell, second: Cell) -> SpecError:
        return SpecError(
            f"cells '{first.name}' and '{second.name}' resolve to the same config (cell id {second.cell_id})",
            self.sweep_loc,
            hint="remove the duplicate axis value or add an 'exclude' rule",
        )


def _renamed(cell: Cell) -> Cell:
    """A cell whose name another cell shares, told apart by the start of its id."""
    return dataclasses.replace(cell, name=f"{cell.name}~{cell.cell_id[:6]}")


def build_cells(
    *,
    base_data: dict[str, Any],
    base_locs: LocMap,
    base_fallback: Loc,
    axes: list[Axis],
    excludes: list[dict[str, Any]],
    tracking: dict[str, Any],
    tracking_locs: dict[tuple[Any, ...], KeyLoc],
    sweep_loc: Loc,
) -> list[Cell]:
    """Cartesian product of the axis groups, minus excludes, each validated and named."""
    builder = _Builder(
        base_data, base_locs, base_fallback, axes, excludes, tracking, tracking_locs, sweep_loc
    )
    cells = list(builder.cells())

    by_hash: dict[str, Cell] = {}
    for cell in cells:
        other = by_hash.get(cell.config_hash)
        if other is not None:
            raise builder.duplicate_config(other, cell)
        by_hash[cell.config_hash] = cell

    seen: dict[str, int] = {}
    for cell in cells:
        seen[cell.name] = seen.get(cell.name, 0) + 1
    if any(count > 1 for count in seen.values()):
        cells = [_renamed(c) if seen[c.name] > 1 else c for c in cells]
    return cells


def _name_digest(name: str) -> bytes:
    return hashlib.blake2b(name.encode("utf-8"), digest_size=16).digest()


class LazyCells(Sequence[Cell]):
    """The cells of a sweep built one at a time, each time they are walked (``sweep plan``
    of a large grid): memory stays bounded whatever the number of cells.

    Construction walks the grid once, as :func:`build_cells` would, raising the same
    errors (a cell that does not validate, two cells of one config) and finding the
    names that two cells share; it keeps only a digest per cell (a few dozen bytes, not
    the ~16 KB of a built cell). Each later walk builds the same cells, named the same,
    as :func:`build_cells` returns. Indexing walks up to the index.
    """

    def __init__(self, **kwargs: Any) -> None:
        self._builder = _Builder(**kwargs, share_base=True)
        self._shared: set[bytes] = set()
        hashes: set[bytes] = set()
        names: set[bytes] = set()
        for cell in self._builder.cells():
            digest = bytes.fromhex(cell.config_hash)
            if digest in hashes:
                first = next(c for c in self._builder.cells() if c.config_hash == cell.config_hash)
                raise self._builder.duplicate_config(first, cell)
            hashes.add(digest)
            name = _name_digest(cell.name)
            if name in names:
                self._shared.add(name)
            names.add(name)

    def __iter__(self) -> Iterator[Cell]:
        for cell in self._builder.cells():
            yield _renamed(cell) if self._shared and _name_digest(cell.name) in self._shared else cell

    def __len__(self) -> int:
        return self._builder.count

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return list(itertools.islice(self, *index.indices(len(self))))
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return next(itertools.islice(self, index, None))
