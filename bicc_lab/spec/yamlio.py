"""Safe YAML reading that remembers where every key and value is.

:func:`read_yaml` returns the plain data (dicts, lists, scalars) together with a
:data:`LocMap` from key paths (tuples of keys and list indices) to the
:class:`KeyLoc` of that entry: where its key is written and where its value
starts. Differences from ``yaml.safe_load``:

- YAML 1.2 style floats without a dot (``1e-3``, ``2E+4``) are floats, not strings;
- dates stay strings (configs never want ``datetime.date``);
- a key written twice in one mapping is an error, not "last one wins";
- a YAML tag is an error unless it names a plain type (``!!str``, ``!!int``, ``!!float``,
  ``!!bool``, ``!!null``; ``!!map`` / ``!!seq`` on mappings / lists). SafeLoader alone would
  ignore a tag such as ``!!python/object/apply:os.system`` on a list or mapping (we build
  those nodes ourselves), so such a config would load as if the tag were not there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bicc_lab.fileio import missing_reason
from bicc_lab.spec.errors import Loc, SpecError, display_path

__all__ = [
    "KeyLoc",
    "LocMap",
    "SpecLoader",
    "parse_value",
    "missing_reason",
    "put",
    "read_yaml",
    "read_yaml_text",
    "subtree",
]

Path_ = tuple[Any, ...]


@dataclass(frozen=True)
class KeyLoc:
    """Where an entry of a mapping or list is: its key (None for list items) and its value."""

    key: Loc | None
    value: Loc


LocMap = dict[Path_, KeyLoc]


class SpecLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 floats (``1e-3``) and dates kept as strings."""


SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)
SpecLoader.add_constructor("tag:yaml.org,2002:timestamp", SpecLoader.construct_yaml_str)


_YAML = "tag:yaml.org,2002:"
_PLAIN_SCALAR_TAGS = frozenset(
    _YAML + name for name in ("str", "int", "float", "bool", "null", "timestamp")
)


def _loc(file: str, mark: Any) -> Loc:
    return Loc(file=file, line=mark.line + 1, col=mark.column + 1)


def _yaml_error(exc: yaml.YAMLError, file: str, what: str = "invalid YAML") -> SpecError:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    message = f"{what}: {problem}"
    if context:
        message += f" ({context})"
    return SpecError(message, _loc(file, mark) if mark is not None else Loc(file=file))


def read_yaml_text(text: str, file: str) -> tuple[Any, LocMap]:
    """Parse ``text`` (named ``file`` in errors) into data and a location map.

    Raises:
        SpecError: broken YAML (the parser's line and column), a duplicate key,
            an unsafe tag, or a non-string mapping key.
    """
    loader = SpecLoader(text)
    try:
        node = loader.get_single_node()
        locs: LocMap = {}
        if node is None:
            return None, locs
        _check_expanded_size(node, file)
        data = _build(loader, node, (), locs, file, set())
        return data, locs
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, file) from None
    finally:
        loader.dispose()


MAX_NODES = 100_000
"""The most values (scalars, lists, mappings) a config file may expand to once its aliases
are resolved: a few hundred bytes of nested anchors ("billion laughs") expand to gigabytes."""


def _check_expanded_size(root: yaml.Node, file: str) -> None:
    """Refuse a document whose aliases would expand past :data:`MAX_NODES` values, before
    expanding it: the expanded size of each node is counted once (the composed graph shares
    aliased nodes), so this takes time in the file's size, not the expansion's."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: yaml.Node) -> int:
        known = sizes.get(id(node))
        if known is not None:
            return known
        if id(node) in active:
            raise SpecError("recursive YAML alias", _loc(file, node.start_mark))
        total = 1
        if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
            active.add(id(node))
            children = (
                [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else node.value
            )
            for child in children:
                total += size(child)
                if total > MAX_NODES:
                    break
            active.discard(id(node))
        sizes[id(node)] = total
        if total > MAX_NODES:
            raise SpecError(
                f"YAML aliases expand this document to more than {MAX_NODES:,} values",
                _loc(file, node.start_mark),
                hint="a config this large is almost surely nested anchors (*alias) repeating one another",
            )
        return total

    size(root)


def _shown_tag(tag: str) -> str:
    return "!!" + tag[len(_YAML) :] if tag.startswith(_YAML) else tag


def _check_tag(node: yaml.Node, file: str) -> None:
    """Only plain types: any other tag is refused where it is written (see the module doc)."""
    if isinstance(node, yaml.MappingNode):
        allowed = node.tag == _YAML + "map"
    elif isinstance(node, yaml.SequenceNode):
        allowed = node.tag == _YAML + "seq"
    else:
        allowed = node.tag in _PLAIN_SCALAR_TAGS
    if not allowed:
        raise SpecError(
            f"YAML tag '{_shown_tag(node.tag)}' is not allowed",
            _loc(file, node.start_mark),
            hint="configs hold plain values, lists and mappings only",
        )


def _build(
    loader: SpecLoader, node: yaml.Node, path: Path_, locs: LocMap, file: str, active: set[int]
) -> Any:
    if id(node) in active:
        raise SpecError("recursive YAML alias", _loc(file, node.start_mark))
    _check_tag(node, file)
    if isinstance(node, yaml.MappingNode):
        active.add(id(node))
        loader.flatten_mapping(node)  # resolves "<<" merge keys
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            _check_tag(key_node, file)
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                raise SpecError(
                    f"keys must be strings, got {key!r}", _loc(file, key_node.start_mark)
                )
            if key in result:
                raise SpecError(
                    f"duplicate key '{'.'.join(map(str, path + (key,)))}'",
                    _loc(file, key_node.start_mark),
                    hint=f"first written at {locs[path + (key,)].key}",
                )
            locs[path + (key,)] = KeyLoc(
                _loc(file, key_node.start_mark), _loc(file, value_node.start_mark)
            )
            result[key] = _build(loader, value_node, path + (key,), locs, file, active)
        active.discard(id(node))
        return result
    if isinstance(node, yaml.SequenceNode):
        active.add(id(node))
        items = []
        for index, item in enumerate(node.value):
            locs[path + (index,)] = KeyLoc(None, _loc(file, item.start_mark))
            items.append(_build(loader, item, path + (index,), locs, file, active))
        active.discard(id(node))
        return items
    return loader.construct_object(node, deep=True)


def read_yaml(path: str | Path, *, what: str = "config file") -> tuple[Any, LocMap, str]:
    """Read the YAML file at ``path``; returns (data, locations, display name of the file).

    Raises:
        SpecError: the file is missing, unreadable or not valid YAML.
    """
    shown = display_path(path)
    file = Path(path)
    if not file.exists():
        raise SpecError(f"{what} {missing_reason(file)}: {shown}")
    if file.is_dir():
        raise SpecError(f"{what} is a directory, expected a YAML file: {shown}")
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot read {what} {shown}: {exc}") from None
    data, locs = read_yaml_text(text, shown)
    return data, locs, shown


def parse_value(text: str, label: str) -> Any:
    """Parse one ``--set`` value as YAML (``true``, ``2``, ``1e-3``, ``[a, b]``, ``{k: v}``).

    An empty string is null. Raises SpecError naming ``label`` when it is not valid YAML
    or holds a tag that a config file may not hold either.
    """
    try:
        data, _ = read_yaml_text(text, label)
    except SpecError as exc:
        problem = exc.message.removeprefix("invalid YAML: ")
        raise SpecError(f"invalid YAML value {text!r}: {problem}", Loc(label=label)) from None
    return data


# --------------------------------------------------------------------------- tree edits


def subtree(locs: LocMap, prefix: tuple[Any, ...]) -> dict[tuple[Any, ...], KeyLoc]:
    """The locations at and below ``prefix``, keyed relative to it (``()`` is ``prefix`` itself)."""
    n = len(prefix)
    return {path[n:]: entry for path, entry in locs.items() if path[:n] == prefix}


def put(
    data: dict[str, Any],
    locs: LocMap,
    path: tuple[Any, ...],
    value: Any,
    value_locs: dict[tuple[Any, ...], KeyLoc],
) -> None:
    """Set ``path`` in ``data`` to ``value`` and keep ``locs`` in step.

    A mapping written over a mapping merges key by key (so ``bicc: {enabled: true}``
    keeps ``bicc.context_fraction``); anything else replaces. ``value_locs`` are the
    locations of ``value``, relative to it; missing intermediate sections are
    created and located at the value's key.
    """
    origin = value_locs.get(())
    node: dict[str, Any] = data
    for depth, part in enumerate(path[:-1]):
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
            here = path[: depth + 1]
            _drop(locs, here)
            if origin is not None:
                locs[here] = origin
        node = child
    last = path[-1]
    existing = node.get(last)
    if isinstance(existing, dict) and isinstance(value, dict):
        for key, item in value.items():
            sub = {rel[1:]: entry for rel, entry in value_locs.items() if rel[:1] == (key,)}
            if () not in sub and origin is not None:
                sub[()] = origin  # e.g. a --set mapping: its entries are located at the flag
            put(data, locs, path + (key,), item, sub)
        return
    node[last] = value
    _drop(locs, path)
    for rel, entry in value_locs.items():
        locs[path + rel] = entry


def _drop(locs: LocMap, prefix: tuple[Any, ...]) -> None:
    n = len(prefix)
    for path in [p for p in locs if p[:n] == prefix]:
        del locs[path]
