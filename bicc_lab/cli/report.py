"""`bicc-lab report`: ablation tables and plots from MLflow."""

from __future__ import annotations

import typer

from bicc_lab.cli._common import not_built

HELP = (
    "Ablation tables (mean ± 95% CI over seeds, Δ vs baseline, paired tests) and plots.\n\n"
    "Example: bicc-lab report sweeps/quickstart.yaml --format md,html"
)


def report(
    sweep: str = typer.Argument(..., help="Sweep YAML or MLflow experiment name."),
    out_dir: str = typer.Option(None, "--out", help="Output directory (default reports/<sweep>/)."),
) -> None:
    """Build ablation tables and plots for a sweep."""
    not_built("report", "issue 6: reports")
