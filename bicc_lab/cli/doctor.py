"""`bicc-lab doctor`: check the environment a run needs.

Without a config it checks what every run needs (Python, torch, the pinned stack, a data
dir that exists when one is set). Given an experiment or sweep config, it also checks what
that config needs: each benchmark's file (or the hub), vLLM for ``eval.backend: vllm`` or
``train.use_vllm``, submitit for ``launch.kind: slurm``. A missing requirement exits 1, so
that a CI step or a job script can run ``bicc-lab doctor CONFIG`` before the real work.
"""

from __future__ import annotations

import platform
import sys
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import typer

from bicc_lab.cli._common import fail, overrides_argument, with_overrides
from bicc_lab.tasks.data_dir import DATA_DIR_ENV, resolve_data_dir

HELP = (
    "Check the environment: Python, torch and its device, the pinned stack, the data dir; given a "
    "config, also what it needs (benchmark files, vLLM, submitit). Exits 1 when something needed is "
    "missing.\n\n"
    "Example: bicc-lab doctor sweeps/quickstart.yaml --data-dir ../shared/data --json"
)

# What the training and evaluation path was tested with (pyproject pins these).
STACK = {
    "transformers": "5.23.0",
    "trl": "1.16.0",
    "accelerate": "1.15.0",
    "datasets": "5.2.0",
    "lm-eval": "0.4.13",
    "math-verify": "0.9.0",
    "antlr4-python3-runtime": "4.11.0",
    "mlflow": "3.17.2",
    "optuna": None,
    "pydantic": None,
    "typer": None,
}
BENCHMARK_FILES = (
    "math500.jsonl", "aime24.jsonl", "aime25.jsonl", "amc23.jsonl",
    "gsm8k_test.jsonl", "minerva_math.jsonl", "olympiadbench.jsonl",
)
#: Exit code when something a run needs is missing (2 stays a mistake in the command line).
MISSING_EXIT = 1


@dataclass
class Check:
    """One row of the report. ``ok`` False with ``required`` True makes doctor exit 1."""

    component: str
    value: str
    status: str
    ok: bool = True
    required: bool = True


def doctor(
    config: Path = typer.Argument(
        None, help="Optional experiment or sweep YAML: also check what its runs need.", show_default=False
    ),
    overrides: list[str] = overrides_argument(),
    set_: list[str] = typer.Option([], "--set", help="Override a dotted key of the config, e.g. --set eval.backend=vllm."),
    data_dir: str = typer.Option(
        None, "--data-dir", envvar=DATA_DIR_ENV, help="Directory with benchmark JSONL files."
    ),
    as_json: bool = typer.Option(
        False, "--json", help="Print one JSON object {ok, config, checks: [...]} (for scripts) instead of the table."
    ),
) -> None:
    """Check the environment a run needs and report what is missing."""
    items = with_overrides(overrides, set_)
    if config is not None and "=" in config.name and not config.exists():
        fail(f"{config} looks like an override, not a config: bicc-lab doctor CONFIG.yaml KEY=VALUE ...")
    if config is None and items:
        fail("overrides need a config: bicc-lab doctor CONFIG.yaml KEY=VALUE ...")
    needs = _needs(config, items) if config is not None else None  # a bad config: exit 2 first

    checks = _environment_checks()
    checks.append(_data_dir_check(data_dir, needs))
    if needs is not None:
        checks += _config_checks(needs, data_dir)
    else:
        checks += [_optional_package("vllm", "eval.backend: vllm"), _optional_package("submitit", "launch.kind: slurm")]

    missing = [c for c in checks if c.required and not c.ok]
    if as_json:
        import json

        typer.echo(json.dumps(
            {"ok": not missing, "config": str(config) if config else None, "checks": [asdict(c) for c in checks]},
            indent=2,
        ))
    else:
        _print_table(checks, missing)
    if missing:
        raise typer.Exit(MISSING_EXIT)


# ------------------------------------------------------------------ what is checked


def _environment_checks() -> list[Check]:
    checks = []
    ok = sys.version_info >= (3, 11)
    checks.append(Check("python", platform.python_version(), "ok" if ok else "need >= 3.11", ok))

    import torch  # the one heavy import doctor needs: it reports the device

    if torch.cuda.is_available():
        device = f"cuda x{torch.cuda.device_count()} ({torch.cuda.get_device_name(0)})"
        bf16 = torch.cuda.is_bf16_supported()
    else:
        device, bf16 = "cpu", False
    checks.append(Check("torch", torch.__version__, device + (", bf16" if bf16 else "")))

    for package, pinned in STACK.items():
        installed = _version(package)
        if installed is None:
            checks.append(Check(package, "missing", "install the project: make install", ok=False))
            continue
        # Another version is a warning, not a failure: it may work, it was not tested.
        status = "ok" if pinned is None or installed == pinned else f"tested with {pinned}"
        checks.append(Check(package, installed, status))
    return checks


def _data_dir_check(data_dir: str | None, needs: dict | None) -> Check:
    """The data dir: when one is set (flag, env or the config) it must be a directory."""
    explicit = data_dir or (needs or {}).get("data_dir")
    directory = resolve_data_dir(explicit)
    where = "--data-dir" if data_dir else ("the config's data_dir" if explicit else DATA_DIR_ENV)
    if directory is None:
        return Check("data dir", "not set", f"benchmarks load from the hub (set --data-dir or {DATA_DIR_ENV})")
    if not directory.is_dir():
        return Check("data dir", str(directory), f"not a directory (from {where})", ok=False)
    present = [f for f in BENCHMARK_FILES if (directory / f).is_file()]
    missing = [f for f in BENCHMARK_FILES if f not in present]
    # Without a config nothing says which benchmarks are needed: absent files are a note here,
    # and a failure below only for a benchmark the config evaluates.
    status = "ok" if not missing else "lacks: " + ", ".join(missing)
    return Check("data dir", str(directory), status)


def _needs(config: Path, items: list[str]) -> dict:
    """What the runs of ``config`` (an experiment, or a sweep: every cell) need from this machine."""
    import yaml

    from bicc_lab.spec import SpecError, load_sweep
    from bicc_lab.spec.load import load_experiment

    try:
        text = yaml.safe_load(config.read_text())
        if isinstance(text, dict) and "base" in text:  # a sweep or study file
            sweep = load_sweep(config, items, lazy=True)
            configs = [cell.config for cell in sweep.cells] or [sweep.base_config]
            launcher = sweep.spec.launch.kind
        else:
            configs = [load_experiment(config, items)]
            launcher = "local"
    except SpecError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot read {exc.filename or config}: {exc.strerror or exc}")
    except yaml.YAMLError as exc:
        fail(f"{config}: invalid YAML ({str(exc).splitlines()[0]})")
    benchmarks: list[str] = []
    for cfg in configs:
        if cfg.eval.enabled:
            benchmarks += [b for b in cfg.eval.benchmarks if b not in benchmarks]
    return {
        "benchmarks": benchmarks,
        "data_dir": next((c.eval.data_dir or c.data.data_dir for c in configs if c.eval.data_dir or c.data.data_dir), None),
        "vllm": sorted({"eval.backend: vllm" for c in configs if c.eval.enabled and c.eval.backend == "vllm"}
                       | {"train.use_vllm: true" for c in configs if c.train.use_vllm}),
        "launcher": launcher,
    }


def _config_checks(needs: dict, data_dir: str | None) -> list[Check]:
    from bicc_lab.eval.data import EvalDataError, check_benchmark

    checks = []
    where = data_dir or needs["data_dir"]
    for name in needs["benchmarks"]:
        try:
            bench = check_benchmark(name, where)
        except EvalDataError as exc:
            checks.append(Check(f"benchmark {name}", "missing", str(exc), ok=False))
            continue
        directory = resolve_data_dir(where)
        found = directory / bench.filename if directory and bench.filename and (directory / bench.filename).is_file() else None
        source = str(found) if found else ("generated" if bench.name == "arith" else "hub")
        checks.append(Check(f"benchmark {name}", source, "ok"))
    if needs["vllm"]:
        checks.append(_required_package("vllm", " and ".join(needs["vllm"])))
    else:
        checks.append(_optional_package("vllm", "eval.backend: vllm"))
    if needs["launcher"] == "slurm":
        checks.append(_required_package("submitit", "launch.kind: slurm"))
        import shutil

        for command in ("sbatch", "squeue", "scancel"):  # submitit submits, polls and cancels with these
            where = shutil.which(command)
            checks.append(Check(command, where or "missing", "ok" if where else
                                "needed by launch.kind: slurm: run on a SLURM login node", ok=where is not None))
    else:
        checks.append(_optional_package("submitit", "launch.kind: slurm"))
    return checks


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _required_package(package: str, because: str) -> Check:
    installed = _version(package)
    if installed is None:
        return Check(package, "missing", f"needed by {because}: pip install {package}", ok=False)
    return Check(package, installed, f"ok (needed by {because})")


def _optional_package(package: str, used_by: str) -> Check:
    installed = _version(package)
    return Check(package, installed or "not installed", f"only for {used_by}", required=False)


def _print_table(checks: list[Check], missing: list[Check]) -> None:
    from rich.table import Table

    from bicc_lab.cli._common import console

    table = Table(title="bicc-lab doctor")
    for column in ("component", "version / value", "status"):
        table.add_column(column)
    for check in checks:
        status = check.status if check.ok else f"MISSING: {check.status}"
        table.add_row(check.component, check.value, status)
    out = console()
    out.print(table)
    if missing:
        out.print(f"{len(missing)} missing: " + ", ".join(c.component for c in missing))
