"""`bicc-lab eval`: score a model on math benchmarks through lm-eval."""

from __future__ import annotations

from pathlib import Path

import typer

from bicc_lab.cli._common import fail

HELP = (
    "Evaluate a model on math benchmarks (avg@k, pass@k, maj@k) through lm-eval.\n\n"
    "Example: bicc-lab eval --model runs/train/tiny/final --benchmarks math500,aime24 --samples 32"
)


def evaluate(
    model: str = typer.Option(
        None,
        "--model",
        help="What to evaluate, as in model.name: tiny, tiny:<variant>, a model directory or a hub id.",
    ),
    run: Path = typer.Option(None, "--run", help="A training run directory (its final/ model is used)."),
    benchmarks: str = typer.Option(
        "math500,aime24,aime25,amc23", "--benchmarks", help="Comma-separated benchmark names."
    ),
    samples: int = typer.Option(32, "--samples", help="Samples per problem (k of avg@k / pass@k)."),
    limit: int = typer.Option(None, "--limit", help="Only the first N problems of each benchmark."),
    data_dir: Path = typer.Option(
        None, "--data-dir", envvar="BICC_LAB_DATA_DIR", help="Directory with the benchmark JSONL files."
    ),
    temperature: float = typer.Option(0.6, "--temperature", help="Sampling temperature (0: greedy)."),
    top_p: float = typer.Option(0.95, "--top-p", help="Nucleus sampling."),
    max_new_tokens: int = typer.Option(None, "--max-new-tokens", help="Generation budget (capped by the model context)."),
    backend: str = typer.Option("hf", "--backend", help="lm-eval backend: hf (CPU/GPU) or vllm (GPU)."),
    output_path: Path = typer.Option(
        None, "--output-path", help="Write the results as JSON to this file (lm-eval's name for it)."
    ),
    out_alias: Path = typer.Option(None, "--out", hidden=True, help="Old name of --output-path (one more release)."),
) -> None:
    """Evaluate a model on math benchmarks."""
    out = output_path or out_alias
    if (model is None) == (run is None):
        fail("give exactly one of --model PATH and --run RUN_DIR")
    if run is not None:
        if not (run / "final").is_dir():
            fail(f"--run {run}: no final/ model in that directory (has the run finished?)")
        model = str(run / "final")
    if backend not in ("hf", "vllm"):
        fail(f"--backend {backend!r}: expected hf or vllm")
    if samples < 1:
        fail("--samples must be >= 1")
    from bicc_lab.preflight import EvalCheck, preflight

    # The model reference and every benchmark file, before lm-eval, torch or a model loads.
    preflight(EvalCheck(model, benchmarks, data_dir))
    from bicc_lab.models.loading import resolve_model_path

    model_ref = resolve_model_path(model)  # `tiny` / `tiny:<variant>`: built once, then cached

    import torch

    from bicc_lab.eval.runner import evaluate as run_evaluation
    from bicc_lab.eval.runner import print_table

    result = run_evaluation(
        model_ref,
        benchmarks,
        samples=samples,
        limit=limit,
        data_dir=data_dir,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        backend=backend,
        device="cuda" if torch.cuda.is_available() else "cpu",
    )
    print_table(result, title=f"{model} (k={samples})")
    target = out or (run / "eval.json" if run is not None else None)
    if target is not None:
        result.to_json(target)
        typer.echo(f"wrote {target}")
    if run is not None:
        from bicc_lab.tracking.store import log_eval_to_run_dir

        logged = log_eval_to_run_dir(run, result, eval_file=target)
        if logged:
            typer.echo(f"logged eval metrics and {target.name} to MLflow run {logged}")
