"""`bicc-lab train`: one training run from one experiment config."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from bicc_lab.cli._common import fail

HELP = (
    "Train one run from an experiment config (then evaluate it if eval.enabled).\n\n"
    "Example: bicc-lab train experiments/tiny.yaml --set variant=dapo --set bicc.enabled=true "
    "--set train.max_steps=2"
)


def default_output_dir(config) -> Path:
    from bicc_lab.spec import config_id

    return Path("runs") / "train" / f"{config.name}-{config.variant}-{config.arm}-s{config.seed}-{config_id(config)}"


def train(
    config: Path = typer.Argument(..., help="Experiment YAML, e.g. experiments/tiny.yaml."),
    set_: list[str] = typer.Option(
        [], "--set", help="Override a dotted config key, e.g. --set rcc.coef=0.5 (repeatable)."
    ),
    output_dir: Path = typer.Option(
        None, "--output-dir", help="Where checkpoints and the final model go (default runs/train/<name>-<id>)."
    ),
    no_resume: bool = typer.Option(False, "--no-resume", help="Start over even if checkpoints exist."),
    no_eval: bool = typer.Option(False, "--no-eval", help="Skip the evaluation after training."),
) -> None:
    """Train one run from an experiment config."""
    from bicc_lab.preflight import RunCheck, preflight
    from bicc_lab.spec.load import load_experiment_located

    experiment, locs = load_experiment_located(config, set_)
    # Everything a user can get wrong (model, data, benchmarks, train.extra) is checked
    # before the output directory, its config.yaml or any model exists.
    preflight(RunCheck(experiment, locs, evaluate=not no_eval))
    out = output_dir or Path(experiment.train.output_dir or default_output_dir(experiment))
    if out.exists() and no_resume:
        fail(f"--no-resume given but {out} already exists; pick another --output-dir")
    if out.exists() and not out.is_dir():
        fail(f"--output-dir {out} is a file, not a directory")

    from bicc_lab.backends.trl.run import train_run

    result = train_run(experiment, out, resume=not no_resume)
    if int(os.environ.get("RANK", "0")) != 0:
        return  # torchrun / accelerate launch: the main process reports and evaluates
    typer.echo(
        f"trained {result.steps} steps in {result.wall_time_s:.1f} s"
        + (f" (resumed from {result.resumed_from})" if result.resumed_from else "")
        + f"; final model: {result.final_model_dir}"
    )
    if experiment.eval.enabled and not no_eval:
        from bicc_lab.eval.runner import evaluate_config, print_table

        evaluation = evaluate_config(experiment, result.final_model_dir, out_file=out / "eval.json")
        print_table(evaluation, title=f"{experiment.name} {experiment.variant} {experiment.arm} (k={experiment.eval.samples})")
        typer.echo(f"wrote {out / 'eval.json'}")
