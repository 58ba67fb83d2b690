"""`bicc-lab train`: one training run from one experiment config."""

from __future__ import annotations

from pathlib import Path

import typer

from bicc_lab.cli._common import fail, overrides_argument, with_overrides

HELP = (
    "Train one run from an experiment config (then evaluate it if eval.enabled).\n\n"
    "Example: bicc-lab train experiments/tiny.yaml variant=dapo bicc.enabled=true train.max_steps=2 "
    "(or --set variant=dapo ...)"
)


def default_output_dir(config) -> Path:
    from bicc_lab.spec import config_id

    return Path("runs") / "train" / f"{config.name}-{config.variant}-{config.arm}-s{config.seed}-{config_id(config)}"


def train(
    config: Path = typer.Argument(..., help="Experiment YAML, e.g. experiments/tiny.yaml."),
    overrides: list[str] = overrides_argument(),
    set_: list[str] = typer.Option(
        [], "--set", help="Override a dotted config key, e.g. --set rcc.coef=0.5 (repeatable)."
    ),
    output_dir: Path = typer.Option(
        None, "--output-dir", help="Where checkpoints and the final model go (default runs/train/<name>-<id>)."
    ),
    no_resume: bool = typer.Option(False, "--no-resume", help="Start over even if checkpoints exist."),
    no_eval: bool = typer.Option(False, "--no-eval", help="Skip the evaluation after training."),
    tracking_uri: str = typer.Option(
        None,
        "--tracking-uri",
        help="MLflow store of the run (default: tracking.uri of the config, else $MLFLOW_TRACKING_URI, "
        "else sqlite:///mlflow.db at the repository root).",
    ),
    mlflow_experiment: str = typer.Option(
        None, "--experiment", help="MLflow experiment (default: tracking.experiment, else the config's name)."
    ),
    no_tracking: bool = typer.Option(False, "--no-tracking", help="Log nothing to MLflow."),
    force: bool = typer.Option(
        False,
        "--force",
        help="Train again over a finished run in the output directory (its checkpoints, final model and "
        "results are replaced; a new MLflow run). Without it a finished run is never overwritten.",
    ),
) -> None:
    """Train one run from an experiment config."""
    from bicc_lab.preflight import RunCheck, Write, preflight
    from bicc_lab.spec.load import load_experiment_located

    experiment, locs = load_experiment_located(config, with_overrides(overrides, set_))
    from bicc_lab.envvars import env_int

    main_process = env_int("RANK", 0) == 0  # torchrun: the main process tracks
    uri = None
    uri_from = "tracking.uri"
    if main_process and not no_tracking:
        from bicc_lab.tracking.naming import (
            normalize_uri,
            resolve_tracking_uri,
            tracking_uri_source,
        )

        # As a sweep: tracking.uri, else $MLFLOW_TRACKING_URI, else the repository's mlflow.db.
        uri = normalize_uri(tracking_uri) if tracking_uri else resolve_tracking_uri(experiment.tracking.uri)
        uri_from = "--tracking-uri" if tracking_uri else tracking_uri_source(experiment.tracking.uri)
    out = output_dir or Path(experiment.train.output_dir or default_output_dir(experiment))
    # Everything a user can get wrong (model, data, benchmarks, train.extra, the output
    # directory, the store) is checked before the output directory, its config.yaml, an
    # MLflow run or any model exists.
    flag = f"--output-dir {output_dir}" if output_dir else f"output directory {out}"
    preflight(
        RunCheck(experiment, locs, evaluate=not no_eval),
        tracking_uri=uri,
        create_store=True,
        writes=[Write(out, flag)],
        tracking_from=uri_from,
    )
    if out.exists() and no_resume:
        fail(f"--no-resume given but {out} already exists; pick another --output-dir")
    if out.exists() and not out.is_dir():
        fail(f"--output-dir {out} is a file, not a directory")
    if not force and _finished(experiment, out, evaluate=experiment.eval.enabled and not no_eval):
        return
    if uri is None:
        if force:
            _clear_outputs(out)
        _train_and_evaluate(experiment, out, no_resume=no_resume, no_eval=no_eval, tracked=None)
        return

    from bicc_lab.launch.locks import LOCK_NAME, CellLock
    from bicc_lab.launch.single import TrackedTrain

    out.mkdir(parents=True, exist_ok=True)
    lock = CellLock(out / LOCK_NAME)
    if not lock.acquire():
        fail(f"{out} is being trained by another process (its {LOCK_NAME} is held)")
    try:
        if force:
            _clear_outputs(out)
        with TrackedTrain(experiment, out, uri, mlflow_experiment) as tracked:
            _train_and_evaluate(experiment, out, no_resume=no_resume, no_eval=no_eval, tracked=tracked)
        typer.echo(f"logged to MLflow run {tracked.run_id} (experiment {tracked.experiment!r}) in {uri}")
    finally:
        lock.release()


def _train_and_evaluate(experiment, out: Path, *, no_resume: bool, no_eval: bool, tracked) -> None:
    """Train, report, evaluate (``eval.enabled``); ``tracked`` (a ``TrackedTrain``, or
    None) logs each part to MLflow as a sweep cell would."""
    from bicc_lab.backends.trl.run import train_run

    result = train_run(
        experiment,
        out,
        resume=not no_resume,
        on_log=tracked.on_log if tracked else None,
        callbacks=tracked.callbacks() if tracked else (),
    )
    from bicc_lab.envvars import env_int

    if env_int("RANK", 0) != 0:
        return  # torchrun / accelerate launch: the main process reports and evaluates
    if tracked:
        tracked.trained(result)
    typer.echo(
        f"trained {result.steps} steps in {result.wall_time_s:.1f} s"
        + (f" (resumed from {result.resumed_from})" if result.resumed_from else "")
        + f"; final model: {result.final_model_dir}"
    )
    if experiment.eval.enabled and not no_eval:
        from bicc_lab.eval.runner import evaluate_config, print_table

        if tracked:
            tracked.evaluating()
        evaluation = evaluate_config(experiment, result.final_model_dir, out_file=out / "eval.json")
        print_table(evaluation, title=f"{experiment.name} {experiment.variant} {experiment.arm} (k={experiment.eval.samples})")
        typer.echo(f"wrote {out / 'eval.json'}")
        if tracked:
            tracked.evaluated(evaluation, out / "eval.json", step=result.steps)
    if tracked:
        tracked.finished(result.steps)


# What a finished run left in its output directory; --force removes it all (a new run).
_OUTPUTS = ("final", "train_result.json", "eval.json", "metrics.jsonl", "tracking.json", "mlflow_run_id")


def _finished(experiment, out: Path, *, evaluate: bool) -> bool:
    """True (after saying so) when ``out`` already holds this config's finished run, evaluated
    if ``evaluate``: nothing to do, and nothing it wrote is touched. A finished run of another
    config there is a mistake (exit 2). Trained but not evaluated: False (evaluate only)."""
    if not (out / "train_result.json").is_file():
        return False
    from bicc_lab.spec import config_hash

    if _saved_hash(out) != config_hash(experiment):
        fail(
            f"{out} holds a finished run of another config (its config.yaml differs); "
            "pass --force to replace it, or give another --output-dir"
        )
    if evaluate and not (out / "eval.json").is_file():
        return False
    what = "trained and evaluated" if (out / "eval.json").is_file() else "trained"
    typer.echo(
        f"{out} already holds this finished run ({what}); nothing to do, nothing overwritten "
        f"(--force trains it again; `bicc-lab eval --run {out}` adds an evaluation)"
    )
    return True


def _saved_hash(out: Path) -> str | None:
    import yaml

    from bicc_lab.spec import config_hash
    from bicc_lab.spec.load import validate_experiment

    try:
        return config_hash(validate_experiment(yaml.safe_load((out / "config.yaml").read_text())))
    except (OSError, ValueError, yaml.YAMLError):
        return None


def _clear_outputs(out: Path) -> None:
    """``--force``: remove what an earlier run wrote in ``out`` (its MLflow run stays in the
    store, and this one gets a new run)."""
    import shutil

    if not out.is_dir():
        return
    removed = []
    for path in sorted(out.iterdir()):
        name = path.name
        if name in _OUTPUTS or name.startswith(("checkpoint-", "torn")):
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
            removed.append(name)
    if removed:
        typer.echo(f"--force: removed {', '.join(removed)} from {out}")
