"""`bicc-lab eval`: score a model on math benchmarks through lm-eval.

The flags an lm-eval user types mean what they mean in ``lm-eval run`` (0.4.13):
``--model_args``, ``--batch_size``, ``--limit`` (a count, or below 1.0 a fraction of each
benchmark), ``--log_samples``, ``--output_path``, ``--apply_chat_template``,
``--system_instruction``, ``--seed``, ``--device``. ``--model`` is the model itself (as in
``model.name``); lm-eval's ``--model hf --model_args pretrained=X`` is accepted too.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import typer

from bicc_lab.cli._common import fail

HELP = (
    "Evaluate a model on math benchmarks (avg@k, pass@k, maj@k) through lm-eval.\n\n"
    "Example: bicc-lab eval --model runs/train/tiny/final --benchmarks math500,aime24 --samples 32 "
    "--limit 0.1 --model_args dtype=bfloat16 --output_path results/ --log_samples"
)

_RUN_ID = re.compile(r"[0-9a-f]{32}")


def evaluate(
    model: str = typer.Option(
        None,
        "--model",
        help="What to evaluate, as in model.name: tiny, tiny:<variant>, a model directory or a hub id "
        "(lm-eval's '--model hf|vllm --model_args pretrained=X' also works).",
    ),
    run: str = typer.Option(
        None,
        "--run",
        help="A training run directory (its final/ model is evaluated and, when it is tracked, the "
        "results join its MLflow run), or an MLflow run id to log into (its model: --model, else the "
        "run's output_dir tag).",
    ),
    benchmarks: str = typer.Option(
        "math500,aime24,aime25,amc23", "--benchmarks", help="Comma-separated benchmark names."
    ),
    samples: int = typer.Option(32, "--samples", help="Samples per problem (k of avg@k / pass@k)."),
    limit: str = typer.Option(
        None,
        "--limit",
        "-L",
        help="As lm-eval: the first N problems of each benchmark, or below 1.0 a fraction of each "
        "(0.1: ceil(0.1 n) problems).",
    ),
    data_dir: Path = typer.Option(
        None, "--data-dir", envvar="BICC_LAB_DATA_DIR", help="Directory with the benchmark JSONL files."
    ),
    model_args: str = typer.Option(
        None,
        "--model_args",
        "-a",
        help="As lm-eval: key=val,key=val (or a JSON object) for the HF / vLLM model, e.g. "
        "dtype=bfloat16,revision=main,trust_remote_code=True.",
    ),
    batch_size: str = typer.Option(
        None, "--batch_size", "-b", help="As lm-eval: an integer, 'auto' or 'auto:N' (default 8 for hf, auto for vllm)."
    ),
    device: str = typer.Option(None, "--device", help="As lm-eval: cuda, cuda:0, cpu, ... (default: cuda if present)."),
    apply_chat_template: bool = typer.Option(
        None,
        "--apply_chat_template/--no_apply_chat_template",
        help="Prompts through the tokenizer's chat template (default: yes for the math benchmarks when "
        "the tokenizer has one, never for arith).",
    ),
    system_instruction: str = typer.Option(None, "--system_instruction", help="As lm-eval: a system prompt."),
    seed: str = typer.Option(
        None,
        "--seed",
        help="As lm-eval: one integer for its python, numpy, torch and fewshot seeds, or 3-4 "
        "comma-separated values (None leaves one unset). Default 0 for all four.",
    ),
    temperature: float = typer.Option(0.6, "--temperature", help="Sampling temperature (0: greedy)."),
    top_p: float = typer.Option(0.95, "--top-p", help="Nucleus sampling."),
    max_new_tokens: int = typer.Option(None, "--max-new-tokens", help="Generation budget (capped by the model context)."),
    backend: str = typer.Option("hf", "--backend", help="lm-eval backend: hf (CPU/GPU) or vllm (GPU)."),
    output_path: Path = typer.Option(
        None,
        "--output_path",
        "--output-path",
        "-o",
        help="As lm-eval: a .json file for the results (samples beside it), or a directory that gets "
        "<model>/results_<date>.json (and samples_<task>_<date>.jsonl).",
    ),
    out_alias: Path = typer.Option(None, "--out", hidden=True, help="Old name of --output-path (one more release)."),
    log_samples: bool = typer.Option(
        False,
        "--log_samples",
        "-s",
        help="As lm-eval: write every prompt and response (samples_<task>_<date>.jsonl) next to the results.",
    ),
    tracking_uri: str = typer.Option(
        None,
        "--tracking-uri",
        envvar="MLFLOW_TRACKING_URI",
        help="Log metrics and the per-problem table to this MLflow store (a new run in --experiment, "
        "or the run of --run).",
    ),
    mlflow_experiment: str = typer.Option(
        "eval", "--experiment", help="MLflow experiment of a new evaluation run."
    ),
) -> None:
    """Evaluate a model on math benchmarks."""
    out = output_path or out_alias
    if output_path is not None and out_alias is not None and output_path != out_alias:
        fail(f"--out {out_alias} and --output-path {output_path} disagree; give --output-path only")
    extra = _parse_model_args(model_args)
    model, backend = _model_and_backend(model, backend, extra)
    if backend not in ("hf", "vllm"):
        fail(f"--backend {backend!r}: expected hf or vllm")
    if samples < 1:
        fail("--samples must be >= 1")
    from bicc_lab.eval.runner import parse_limit, parse_seed

    try:
        limit_value = parse_limit(limit)
    except ValueError as exc:
        fail(f"--limit: {exc}")
    try:
        seeds = parse_seed(seed)
    except ValueError as exc:
        fail(f"--seed: {exc}")
    batch = _parse_batch_size(batch_size)

    # Where the results go in MLflow (checked now: a store fault or unknown run fails before
    # any model loads).
    run_dir, target_run = _resolve_run(run, model, tracking_uri)
    if run_dir is not None:
        model = str(run_dir / "final")
    if model is None:
        fail("give --model PATH (or --model_args pretrained=PATH), or --run RUN_DIR")
    if out is None and run_dir is not None:
        out = run_dir / "eval.json"
        if out.exists():  # the run's own evaluation stays: a new one goes beside it
            from datetime import datetime

            out = run_dir / f"eval-{datetime.now().strftime('%Y%m%dT%H%M%S')}.json"
            n = 1
            while out.exists():
                n += 1
                out = out.with_name(f"{out.stem.split('~')[0]}~{n}.json")
    if log_samples and out is None:
        fail("--log_samples needs --output_path (as in lm-eval), or --run RUN_DIR")

    from bicc_lab.preflight import EvalCheck, Write, preflight

    # The sampling flags, the model reference, every benchmark file, the backend, the device
    # and where the results go, before lm-eval or a model loads (not after the evaluation).
    writes = []
    if out is not None:
        flag = f"--output-path {out}" if output_path or out_alias else f"--run {run} (its eval.json)"
        writes.append(Write(out, flag, kind="file" if Path(out).suffix == ".json" else "dir"))
    preflight(
        EvalCheck(
            model,
            benchmarks,
            data_dir,
            backend=backend,
            device=device,
            temperature=temperature,
            top_p=top_p,
            max_new_tokens=max_new_tokens,
        ),
        writes=writes,
    )
    from bicc_lab.models.loading import resolve_model_path

    model_ref = resolve_model_path(model)  # `tiny` / `tiny:<variant>`: built once, then cached

    import torch

    from bicc_lab.eval.runner import evaluate as run_evaluation
    from bicc_lab.eval.runner import output_files, print_table, write_samples

    result = run_evaluation(
        model_ref,
        benchmarks,
        samples=samples,
        limit=limit_value,
        data_dir=data_dir,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        backend=backend,
        batch_size=batch,
        device=device or ("cuda" if torch.cuda.is_available() else "cpu"),
        seed=seeds,
        apply_chat_template=apply_chat_template,
        system_instruction=system_instruction,
        model_args=extra,
        keep_responses=log_samples,
        log_samples=log_samples,
    )
    print_table(result, title=f"{model} (k={samples})")
    written: list[Path] = []
    if out is not None:
        from datetime import datetime

        date_id = datetime.now().isoformat().replace(":", "-")  # lm-eval's file stamp
        results_file, samples_dir = output_files(out, model, date_id)
        written.append(result.to_json(results_file))
        if log_samples:
            written += write_samples(result, samples_dir, date_id)
        for path in written:
            typer.echo(f"wrote {path}")
    if target_run is not None:
        logged = _log_to_mlflow(target_run, result, model, written, experiment=mlflow_experiment)
        typer.echo(f"logged eval metrics and the per-problem table to MLflow run {logged}")


# ------------------------------------------------------------------ flags


def _parse_model_args(text: str | None) -> dict[str, Any]:
    """lm-eval's own parser: ``k=v,k=v`` (values: true/false, numbers, Python literals,
    else strings; commas inside brackets or quotes kept) or a JSON object."""
    if not text:
        return {}
    from lm_eval._cli.utils import key_val_to_dict, try_parse_json

    try:
        parsed = try_parse_json(text)
        if isinstance(parsed, dict):
            return parsed
        return key_val_to_dict(text)
    except ValueError as exc:
        fail(f"--model_args {text!r}: {exc} (expected key=val,key2=val2 or a JSON object)")


def _model_and_backend(model: str | None, backend: str, extra: dict[str, Any]) -> tuple[str | None, str]:
    """``--model_args pretrained=X`` names the model; lm-eval's ``--model hf|vllm`` then is the backend."""
    pretrained = extra.pop("pretrained", None)
    if pretrained is None:
        return model, backend
    if model in ("hf", "vllm"):
        return str(pretrained), model
    if model is not None and model != str(pretrained):
        fail(f"--model {model} and --model_args pretrained={pretrained} disagree; give one")
    return str(pretrained), backend


def _parse_batch_size(text: str | None) -> int | str | None:
    if text is None:
        return None
    if text == "auto" or re.fullmatch(r"auto:\d+", text):
        return text
    if text.isdigit() and int(text) >= 1:
        return int(text)
    fail(f"--batch_size {text!r}: expected an integer >= 1, 'auto' or 'auto:N' (as in lm-eval)")


# ------------------------------------------------------------------ MLflow


def _resolve_run(run: str | None, model: str | None, tracking_uri: str | None) -> tuple[Path | None, dict | None]:
    """(run directory or None, where to log or None). The target is
    ``{"uri", "run_id"}`` for an existing run (a tracked run directory, or an id), or
    ``{"uri", "new": True}`` for a new evaluation run (a tracking URI without --run)."""
    from bicc_lab.tracking.check import check_tracking_uri
    from bicc_lab.tracking.naming import normalize_uri, resolve_tracking_uri

    if run is None:
        if not tracking_uri:
            return None, None
        uri = normalize_uri(tracking_uri)
        check_tracking_uri(uri, create=True)
        return None, {"uri": uri, "new": True}
    directory = Path(run)
    if directory.is_dir():
        if model is not None:
            fail(f"--run {run} is a run directory: its final/ model is evaluated; drop --model")
        if not (directory / "final").is_dir():
            fail(f"--run {run}: no final/ model in that directory (has the run finished?)")
        recorded = _recorded_run(directory)
        if recorded is None:  # not tracked: a new run where a store is named, else none
            if not tracking_uri:
                return directory, None
            uri = normalize_uri(tracking_uri)
            check_tracking_uri(uri, create=True)
            return directory, {"uri": uri, "new": True, "run_dir": directory}
        check_tracking_uri(recorded["uri"], create=False, what=f"tracking URI of {directory}")
        return directory, {**recorded, "run_dir": directory}
    if not _RUN_ID.fullmatch(run):
        fail(f"--run {run}: no such directory, and not an MLflow run id (32 hex digits)")
    uri = resolve_tracking_uri(tracking_uri)
    check_tracking_uri(uri, create=False)
    from bicc_lab.tracking.store import Tracker

    found = Tracker(uri, create=False).get(run)
    if found is None:
        fail(f"--run {run}: no such run in the MLflow store {uri}")
    if model is None:
        output_dir = found.tags.get("output_dir")
        if not output_dir or not (Path(output_dir) / "final").is_dir():
            fail(f"--run {run}: the run names no output_dir with a final/ model; give --model too")
        return Path(output_dir), {"uri": uri, "run_id": run, "run_dir": Path(output_dir)}
    return None, {"uri": uri, "run_id": run}


def _recorded_run(directory: Path) -> dict[str, str] | None:
    """The MLflow run of a train output directory (``tracking.json``) or a sweep cell
    (``cell.json`` + ``mlflow_run_id``)."""
    from bicc_lab.launch import layout
    from bicc_lab.tracking.single import read_record

    record = read_record(directory)
    if record is not None:
        return {"uri": record["tracking_uri"], "run_id": record["run_id"]}
    run_id = layout.read_text(directory / layout.RUN_ID_FILE)
    spec = layout.read_json(directory / layout.CELL_SPEC)
    if run_id and isinstance(spec, dict) and spec.get("tracking_uri"):
        return {"uri": spec["tracking_uri"], "run_id": run_id.strip()}
    return None


def _log_to_mlflow(target: dict, result: Any, model: str, files: list[Path], *, experiment: str) -> str:
    """Metrics at the run's training step (0 for a new run), the per-problem table, files."""
    from bicc_lab.launch import layout
    from bicc_lab.tracking.naming import Tag, flatten
    from bicc_lab.tracking.single import EVAL_ROLE, create_run, log_evaluation
    from bicc_lab.tracking.store import Tracker

    tracker = Tracker(target["uri"], create=bool(target.get("new")))
    step = 0
    if target.get("run_dir") is not None:
        step = int((layout.read_json(Path(target["run_dir"]) / layout.TRAIN_RESULT) or {}).get("steps", 0))
    if target.get("new"):
        _, run_id = create_run(tracker, experiment, f"eval {model}", EVAL_ROLE, {Tag.MODEL: model})
        tracker.log_params(run_id, flatten({"eval": result.config}))
    else:
        run_id = target["run_id"]
    log_evaluation(tracker, run_id, result, step=step, files=files)
    if target.get("new"):
        tracker.set_status(run_id, "FINISHED")
    return run_id
