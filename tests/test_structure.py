"""Package structure: imports point down the layers, and nothing points outside the repository."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "bicc_lab"

# Rank of each part of the package (a subpackage, or a top-level module): a module may import
# from a part of lower rank, or from its own part; never up or sideways. The order is
# cli -> tune -> sweep/report/preflight -> launch -> tracking -> eval/backends -> models ->
# spec -> tasks/algorithms/envvars -> console/fileio/progress -> errors. ``eval`` sits below
# ``launch`` because a sweep cell's worker evaluates the model it trained; ``models`` above
# ``spec`` because the tiny model is built from the config's ``model.tiny`` block; ``spec``
# above ``algorithms`` because config validation reads the torch-free variant registry.
LAYERS: dict[str, int] = {
    "cli": 10,
    "tune": 9,
    "sweep": 8,
    "report": 8,
    "preflight": 8,
    "launch": 7,
    "tracking": 6,
    "eval": 5,
    "backends": 5,
    "models": 4,
    "spec": 3,
    "tasks": 2,
    "algorithms": 2,
    "console": 1,
    "fileio": 1,
    "envvars": 2,
    "progress": 1,
    "units": 1,  # the one score unit, which every layer speaks
    "stats": 1,  # pure numpy / scipy: the seed policy (sweep) and the report share it
    "errors": 0,
    "__init__": 0,
}


def _part(module: str) -> str:
    """``bicc_lab.launch.worker`` -> ``launch``; ``bicc_lab`` itself -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_modules(path: Path) -> list[tuple[str, int]]:
    """Every ``bicc_lab`` module that ``path`` imports (lazy imports in functions too)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((name, node.lineno))
    return [(name, line) for name, line in found if name == "bicc_lab" or name.startswith("bicc_lab.")]


def import_edges() -> list[tuple[str, str, str]]:
    """(importing part, imported part, "file:line") for every import between two parts."""
    edges = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = _part(_module_name(path))
        for name, line in _imported_modules(path):
            target = _part(name)
            if target != source:
                edges.append((source, target, f"{path.relative_to(ROOT)}:{line}"))
    return edges


def test_every_part_of_the_package_has_a_layer():
    parts = {_part(_module_name(path)) for path in PACKAGE.rglob("*.py")}
    assert parts - set(LAYERS) == set(), "give the new part a rank in LAYERS"


def test_imports_point_down():
    wrong = [
        f"{where}: {source} (rank {LAYERS.get(source)}) imports {target} (rank {LAYERS.get(target)})"
        for source, target, where in import_edges()
        if LAYERS.get(target, 99) >= LAYERS.get(source, -1)
    ]
    assert wrong == []


# Modules of one part that must not import another (the layer ranks above see only parts):
# (importer, forbidden import, why).
FORBIDDEN: list[tuple[str, str, str]] = [
    ("bicc_lab.tune.views", "bicc_lab.tune.runner",
     "the views and the study loop imported each other; what both need lives in bicc_lab.tune.setup"),
]


def test_forbidden_module_imports():
    wrong = []
    for importer, forbidden, why in FORBIDDEN:
        path = ROOT / (importer.replace(".", "/") + ".py")
        assert path.is_file(), f"{importer}: no such module; update FORBIDDEN"
        for name, line in _imported_modules(path):
            if name == forbidden or name.startswith(forbidden + "."):
                wrong.append(f"{path.relative_to(ROOT)}:{line}: imports {name} ({why})")
    assert wrong == []


def test_the_layer_check_sees_lazy_and_relative_imports(tmp_path, monkeypatch):
    # The check itself: an upward import inside a function, written relatively, is found.
    package = tmp_path / "bicc_lab"
    (package / "tracking").mkdir(parents=True)
    (package / "tracking" / "__init__.py").write_text("")
    (package / "tracking" / "store.py").write_text("def f():\n    from ..launch import layout\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", package)
    assert import_edges() == [("tracking", "launch", "bicc_lab/tracking/store.py:2")]


def test_config_validation_does_not_import_torch():
    code = (
        "import sys\n"
        "from bicc_lab.spec import load_experiment\n"
        "config = load_experiment('experiments/tiny.yaml', ['variant=gspo'])\n"
        "assert config.variant == 'gspo'\n"
        "print(sorted(m for m in ('torch', 'transformers', 'trl') if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# Spelled in two pieces so that this file does not name them itself.
OUTSIDE = ("DESIGN" + ".md", "shared" + "/notes")


@pytest.mark.parametrize("folder", ["bicc_lab", "tests", "experiments", "sweeps", "benchmarks"])
def test_no_file_names_a_document_outside_the_repository(folder):
    hits = []
    for path in sorted((ROOT / folder).rglob("*")):
        if not path.is_file() or path.suffix not in (".py", ".yaml", ".yml", ".md", ".sh", ".toml", ".txt"):
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if any(name in line for name in OUTSIDE):
                hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert hits == []
