"""`bicc-lab eval`: score a model on math benchmarks through lm-eval."""

from __future__ import annotations

from pathlib import Path

import typer

from bicc_lab.cli._common import not_built

HELP = (
    "Evaluate a model on math benchmarks (avg@k, pass@k, maj@k) through lm-eval.\n\n"
    "Example: bicc-lab eval --model runs/tiny-grpo/final --benchmarks math500,aime24 --samples 32"
)


def evaluate(
    model: str = typer.Option(None, "--model", help="Model directory or hub id to evaluate."),
    run: str = typer.Option(None, "--run", help="A training run directory (its final model is used)."),
    benchmarks: str = typer.Option(
        "math500,aime24,aime25,amc23", "--benchmarks", help="Comma-separated benchmark names."
    ),
    samples: int = typer.Option(32, "--samples", help="Samples per problem (k of avg@k / pass@k)."),
    limit: int = typer.Option(None, "--limit", help="Only the first N problems of each benchmark."),
    data_dir: Path = typer.Option(None, "--data-dir", help="Directory with the benchmark JSONL files."),
    out: Path = typer.Option(None, "--out", help="Write the results as JSON to this file."),
) -> None:
    """Evaluate a model on math benchmarks."""
    not_built("eval", "issue 5: evaluation")
