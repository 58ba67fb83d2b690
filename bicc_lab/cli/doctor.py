"""`bicc-lab doctor`: check the environment a run needs."""

from __future__ import annotations

import platform
import sys
from importlib import metadata

import typer

from bicc_lab.tasks.data_dir import DATA_DIR_ENV, resolve_data_dir

HELP = (
    "Check the environment: Python, torch and its device, the pinned stack, the data dir.\n\n"
    "Example: bicc-lab doctor --data-dir ../shared/data"
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


def doctor(
    data_dir: str = typer.Option(
        None, "--data-dir", envvar=DATA_DIR_ENV, help="Directory with benchmark JSONL files."
    ),
) -> None:
    """Check the environment a run needs and report what is missing."""
    problems = 0
    rows: list[tuple[str, str, str]] = []
    ok = sys.version_info >= (3, 11)
    problems += not ok
    rows.append(("python", platform.python_version(), "ok" if ok else "need >= 3.11"))

    import torch  # the one heavy import doctor needs: it reports the device

    if torch.cuda.is_available():
        device = f"cuda x{torch.cuda.device_count()} ({torch.cuda.get_device_name(0)})"
        bf16 = torch.cuda.is_bf16_supported()
    else:
        device, bf16 = "cpu", False
    rows.append(("torch", torch.__version__, device + (", bf16" if bf16 else "")))

    for package, pinned in STACK.items():
        try:
            installed = metadata.version(package)
        except metadata.PackageNotFoundError:
            rows.append((package, "missing", "install the project: make install"))
            problems += 1
            continue
        status = "ok" if pinned is None or installed == pinned else f"tested with {pinned}"
        rows.append((package, installed, status))

    directory = resolve_data_dir(data_dir)
    if directory is not None:
        present = [f for f in BENCHMARK_FILES if (directory / f).is_file()]
        missing = [f for f in BENCHMARK_FILES if f not in present]
        status = "ok" if not missing else "missing: " + ", ".join(missing)
        rows.append(("data dir", str(directory), status))
    else:
        rows.append(("data dir", "not set", f"benchmarks load from the hub (set --data-dir or {DATA_DIR_ENV})"))

    from rich.table import Table

    from bicc_lab.cli._common import console

    table = Table(title="bicc-lab doctor")
    for column in ("component", "version / value", "status"):
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    console().print(table)
    if problems:
        raise typer.Exit(1)
