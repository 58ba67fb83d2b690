"""`bicc-lab data`: inspect the benchmark and training data the project can find."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from bicc_lab.cli._common import console, fail
from bicc_lab.tasks.data_dir import DATA_DIR_ENV, resolve_data_dir

app = typer.Typer(
    help="Inspect benchmark and training data files.\n\nExample: bicc-lab data list --data-dir ../shared/data",
    no_args_is_help=True,
)


@app.command("list", help="List the JSONL files in the data dir with row counts and fields.\n\nExample: bicc-lab data list --data-dir ../shared/data")
def list_files(
    data_dir: Path = typer.Option(None, "--data-dir", envvar=DATA_DIR_ENV, help="Data directory."),
) -> None:
    directory = resolve_data_dir(data_dir)
    if directory is None:
        fail(f"no data dir: pass --data-dir DIR or set {DATA_DIR_ENV}")
    if not directory.is_dir():
        fail(f"data dir {directory} does not exist")
    files = sorted(directory.glob("*.jsonl"))
    if not files:
        fail(f"no .jsonl files in {directory}")
    from rich.table import Table

    table = Table(title=f"data in {directory}")
    for column in ("file", "rows", "fields"):
        table.add_column(column)
    for path in files:
        with path.open(encoding="utf-8") as handle:
            first = handle.readline()
            rows = 1 + sum(1 for _ in handle) if first else 0
        fields = ", ".join(json.loads(first)) if first else ""
        table.add_row(path.name, str(rows), fields)
    console().print(table)
