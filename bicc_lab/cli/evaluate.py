"""`bicc-lab eval`: score a model on math benchmarks through lm-eval.

The flags mean what they mean in ``lm-eval run`` (0.4.13), spelled as there (the dash
spelling is a hidden alias, see ``lmeval_flags``): ``--tasks``/``-t``, ``--model hf|vllm``
with ``--model_args pretrained=X``, ``--gen_kwargs``, ``--num_fewshot``, ``--limit``,
``--samples`` (document indices per task), ``--include_path``, ``--trust_remote_code``,
``--apply_chat_template [NAME]`` (off unless given), ``--batch_size``, ``--device``,
``--seed`` (lm-eval's defaults), ``--system_instruction``, ``--output_path``,
``--log_samples``. Ours on top: ``--model tiny|DIR|HUB_ID`` names the model itself (as
``model.name`` does), ``--repeats`` is the number of samples per problem (the k of avg@k;
lm-eval's task key ``repeats``), ``--run`` / ``--tracking_uri`` log to MLflow.

Our benchmarks (math500, aime24, ...; ``bicc_*`` task names too) are graded by our runner
(avg@k, pass@k, maj@k, the per-problem table); any other task name is handed to lm-eval's
own ``run`` with the same flags, so its output is lm-eval's.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import typer

from bicc_lab.cli._common import fail
from bicc_lab.cli.lmeval_flags import (
    LmEvalStyleCommand,
    parse_chat_template,
    parse_doc_selection,
    parse_key_values,
)

HELP = (
    "Evaluate a model on math benchmarks (avg@k, pass@k, maj@k) or any lm-eval task, with "
    "lm-eval's flags.\n\n"
    "Example: bicc-lab eval --model tiny --tasks math500 --limit 3\n\n"
    "Example: bicc-lab eval --model hf --model_args pretrained=runs/train/tiny/final,dtype=bfloat16 "
    "-t math500,aime24 --repeats 32 --output_path results/ --log_samples"
)
#: ``app.command("eval", cls=COMMAND_CLASS)``: lm-eval's argument shapes (nargs, optional value).
COMMAND_CLASS = LmEvalStyleCommand
DEFAULT_TASKS = "math500,aime24,aime25,amc23"

_RUN_ID = re.compile(r"[0-9a-f]{32}")


def evaluate(
    model: str = typer.Option(
        None,
        "--model",
        help="lm-eval's backend hf or vllm (the model in --model_args pretrained=...), or the model "
        "itself as in model.name: tiny, tiny:<variant>, a model directory or a hub id.",
    ),
    model_args: str = typer.Option(
        None,
        "--model_args",
        "-a",
        help="As lm-eval: key=val,key=val (or a JSON object) for the HF / vLLM model, e.g. "
        "pretrained=DIR,dtype=bfloat16,revision=main.",
    ),
    tasks: str = typer.Option(
        None,
        "--tasks",
        "-t",
        help=f"As lm-eval: comma-separated tasks. Ours: {DEFAULT_TASKS}, gsm8k, minerva, olympiad, arith "
        f"(default {DEFAULT_TASKS}); any other lm-eval task runs through lm-eval itself.",
    ),
    benchmarks_alias: str = typer.Option(None, "--benchmarks", hidden=True, help="Old name of --tasks."),
    repeats: int = typer.Option(
        None,
        "--repeats",
        help="Samples per problem, the k of avg@k / pass@k / maj@k (lm-eval's task key 'repeats'; "
        "default 1; the paper's k per benchmark is in experiments/paper.yaml).",
    ),
    samples_per_problem_alias: int = typer.Option(
        None, "--samples_per_problem", hidden=True, help="Another name of --repeats."
    ),
    samples: str = typer.Option(
        None,
        "--samples",
        "-E",
        help="As lm-eval: the documents to evaluate, a JSON object of task -> indices, e.g. "
        "'{\"math500\": [0, 4, 7]}' (exclusive with --limit). Samples per problem: --repeats.",
    ),
    limit: str = typer.Option(
        None,
        "--limit",
        "-L",
        help="As lm-eval: the first N problems of each task, or below 1.0 a fraction of each "
        "(0.1: ceil(0.1 n) problems).",
    ),
    num_fewshot: int = typer.Option(
        None, "--num_fewshot", "-f", help="As lm-eval: examples in the few-shot context (ours default to 0)."
    ),
    gen_kwargs: str = typer.Option(
        None,
        "--gen_kwargs",
        help="As lm-eval: generation settings merged over each task's, e.g. temperature=0,max_gen_toks=512 "
        "(wins over --temperature, --top_p, --max_new_tokens).",
    ),
    include_path: Path = typer.Option(
        None, "--include_path", help="As lm-eval: a directory of extra task YAMLs (its tasks go through lm-eval)."
    ),
    trust_remote_code: bool = typer.Option(
        False, "--trust_remote_code", help="As lm-eval: allow the model's and datasets' code from the Hub."
    ),
    apply_chat_template: str = typer.Option(
        None,
        "--apply_chat_template",
        metavar="[NAME]",
        help="As lm-eval: prompts through the tokenizer's chat template (a NAME picks one of its "
        "templates); off when not given.",
    ),
    no_chat_alias: bool = typer.Option(
        False, "--no_apply_chat_template", hidden=True, help="Old switch: plain prompts (now the default)."
    ),
    system_instruction: str = typer.Option(None, "--system_instruction", help="As lm-eval: a system prompt."),
    batch_size: str = typer.Option(
        None, "--batch_size", "-b", help="As lm-eval: an integer, 'auto' or 'auto:N' (default 8 for hf, auto for vllm)."
    ),
    device: str = typer.Option(None, "--device", help="As lm-eval: cuda, cuda:0, cpu, ... (default: cuda if present)."),
    seed: str = typer.Option(
        None,
        "--seed",
        help="As lm-eval: one integer for its python, numpy, torch and fewshot seeds, or 3-4 "
        "comma-separated values (None leaves one unset); default 0,1234,1234,1234 as lm-eval.",
    ),
    temperature: float = typer.Option(
        None, "--temperature", help="Sampling temperature (0: greedy; default 0.6 for ours, the task's for lm-eval's)."
    ),
    top_p: float = typer.Option(None, "--top_p", help="Nucleus sampling (default 0.95 for ours, the task's for lm-eval's)."),
    max_new_tokens: int = typer.Option(None, "--max_new_tokens", help="Generation budget (capped by the model context; default: each task's, 32 for the tiny models)."),
    backend: str = typer.Option(None, "--backend", hidden=True, help="Old name of --model hf|vllm."),
    output_path: Path = typer.Option(
        None,
        "--output_path",
        "-o",
        help="As lm-eval: a .json file for the results (samples beside it), or a directory that gets "
        "<model>/results_<date>.json (and samples_<task>_<date>.jsonl).",
    ),
    out_alias: Path = typer.Option(None, "--out", hidden=True, help="Old name of --output_path (one more release)."),
    log_samples: bool = typer.Option(
        False,
        "--log_samples",
        "-s",
        help="As lm-eval: write every prompt and response (samples_<task>_<date>.jsonl) next to the results.",
    ),
    run: str = typer.Option(
        None,
        "--run",
        help="A training run directory (its final/ model is evaluated and, when it is tracked, the "
        "results join its MLflow run), or an MLflow run id to log into (its model: --model, else the "
        "run's output_dir tag).",
    ),
    data_dir: Path = typer.Option(
        None, "--data_dir", envvar="BICC_LAB_DATA_DIR", help="Directory with the benchmark JSONL files."
    ),
    tracking_uri: str = typer.Option(
        None,
        "--tracking_uri",
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
        fail(f"--out {out_alias} and --output_path {output_path} disagree; give --output_path only")
    tasks = _one_of(("--tasks", tasks), ("--benchmarks", benchmarks_alias)) or DEFAULT_TASKS
    k = _one_of(("--repeats", repeats), ("--samples_per_problem", samples_per_problem_alias))
    k = 1 if k is None else k
    if k < 1:
        fail(f"--repeats must be >= 1, got {k}")
    chat: bool | str = parse_chat_template(apply_chat_template)
    if no_chat_alias and chat:
        fail("--apply_chat_template and --no_apply_chat_template disagree; give one")
    extra = parse_key_values("--model_args", model_args)
    if trust_remote_code:
        extra["trust_remote_code"] = True  # as lm-eval: the model may run its hub code
    generation = parse_key_values("--gen_kwargs", gen_kwargs)
    selection = parse_doc_selection(samples)
    if selection is not None and limit is not None:
        fail("--samples and --limit exclude each other (as in lm-eval): give one")
    if num_fewshot is not None and num_fewshot < 0:
        fail(f"--num_fewshot must be >= 0, got {num_fewshot}")
    model, backend = _model_and_backend(model, backend, extra)
    ours, others = _split_tasks(tasks)
    if include_path is not None and not others:
        fail(f"--include_path {include_path} adds lm-eval tasks, but --tasks names only our benchmarks "
             f"({', '.join(ours)}): name the tasks of that directory in --tasks")
    if others:
        from bicc_lab.cli.lmeval_delegate import run_lm_eval

        if ours:
            fail(
                f"--tasks mixes our benchmarks ({', '.join(ours)}) with lm-eval tasks ({', '.join(others)}): "
                "run them as two commands (ours are graded by bicc-lab, the others by lm-eval)"
            )
        if run is not None or tracking_uri:
            fail("--run / --tracking_uri log our benchmarks' per-problem tables; lm-eval's own tasks are not logged to MLflow")
        if model is None:
            fail("give --model PATH (or --model hf --model_args pretrained=PATH)")
        if k != 1:
            fail(f"--repeats {k} is for our benchmarks; an lm-eval task's repeats are set in its YAML")
        # Our sampling flags are generation settings there, under lm-eval's names; --gen_kwargs wins.
        sampling = {"temperature": temperature, "top_p": top_p, "max_gen_toks": max_new_tokens}
        merged = {key: v for key, v in sampling.items() if v is not None} | generation
        if merged:
            import json

            gen_kwargs = json.dumps(merged)
        run_lm_eval(
            model=model, backend=backend, model_args=extra, tasks=others, include_path=include_path,
            limit=limit, samples=samples, num_fewshot=num_fewshot, gen_kwargs=gen_kwargs,
            apply_chat_template=chat, system_instruction=system_instruction, batch_size=batch_size,
            device=device, seed=seed, output_path=out, log_samples=log_samples,
            trust_remote_code=trust_remote_code,
        )
        return
    if selection is not None:
        unknown = [name for name in selection if name not in _task_names(ours)]
        if unknown:
            fail(f"--samples names {', '.join(unknown)}, not among --tasks {tasks}")
    benchmarks = ",".join(ours)
    temperature = 0.6 if temperature is None else temperature  # eval.temperature's default
    top_p = 0.95 if top_p is None else top_p
    if max_new_tokens is None and "max_gen_toks" not in generation and (model or "").split(":")[0] == "tiny":
        # The tiny models answer in a few tokens and never stop on a math prompt: the tasks'
        # 4096-token budget (768 after the context cap) made a first `--limit 3` take minutes.
        from bicc_lab.spec.sections import EvalConfig

        max_new_tokens = EvalConfig.model_fields["max_new_tokens"].default
    from bicc_lab.eval.runner import LMEVAL_DEFAULT_SEEDS, parse_limit, parse_seed

    try:
        limit_value = parse_limit(limit)
    except ValueError as exc:
        fail(f"--limit: {exc}")
    try:
        seeds = parse_seed(seed) if seed is not None else LMEVAL_DEFAULT_SEEDS
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
        flag = f"--output_path {out}" if output_path or out_alias else f"--run {run} (its eval.json)"
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
        samples=k,  # the runner's name for samples per problem
        limit=limit_value,
        data_dir=data_dir,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        backend=backend,
        batch_size=batch,
        device=device or ("cuda" if torch.cuda.is_available() else "cpu"),
        seed=seeds,
        apply_chat_template=chat,
        system_instruction=system_instruction,
        model_args=extra,
        keep_responses=log_samples,
        log_samples=log_samples,
        gen_kwargs=generation,
        num_fewshot=num_fewshot,
        doc_indices=selection,
    )
    print_table(result, title=f"{model} (k={k})")
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


def _one_of(*named: tuple[str, Any]) -> Any:
    """The value of a flag given under one of its names (a new one and an old alias)."""
    given = [(flag, value) for flag, value in named if value is not None]
    if len({value for _, value in given}) > 1:
        fail(" and ".join(f"{flag} {value}" for flag, value in given) + " disagree; give one")
    return given[0][1] if given else None


def _split_tasks(text: str) -> tuple[list[str], list[str]]:
    """(our benchmark names, other task names) of ``--tasks a,b``, in the order given."""
    from bicc_lab.eval.data import EvalDataError, get_benchmark

    ours, others = [], []
    for name in (n.strip() for n in text.split(",")):
        if not name:
            continue
        try:
            bench = get_benchmark(name).name
        except EvalDataError:
            others.append(name)
            continue
        if bench not in ours:
            ours.append(bench)
    if not ours and not others:
        fail(f"--tasks {text!r}: no task named")
    return ours, others


def _task_names(benchmarks: list[str]) -> set[str]:
    """Every name a benchmark answers to (math500, bicc_math500, math-500, ...)."""
    from bicc_lab.eval.data import BENCHMARKS

    names = set()
    for name in benchmarks:
        bench = BENCHMARKS[name]
        names |= {bench.name, bench.task, *bench.aliases}
    return names


def _model_and_backend(model: str | None, backend: str | None, extra: dict[str, Any]) -> tuple[str | None, str]:
    """(the model, the backend). lm-eval's ``--model hf|vllm`` is the backend, and
    ``--model_args pretrained=X`` names the model; ours: ``--model X`` is the model (hf)."""
    pretrained = extra.pop("pretrained", None)
    if model in ("hf", "vllm"):
        if backend is not None and backend != model:
            fail(f"--model {model} and --backend {backend} disagree; give --model only")
        if pretrained is None:
            fail(f"--model {model} is lm-eval's backend: name the model with --model_args pretrained=PATH_OR_HUB_ID")
        return str(pretrained), model
    if backend is not None and backend not in ("hf", "vllm"):
        fail(f"--backend {backend!r}: expected hf or vllm")
    if pretrained is not None and model is not None and model != str(pretrained):
        fail(f"--model {model} and --model_args pretrained={pretrained} disagree; give one")
    return (str(pretrained) if pretrained is not None else model), backend or "hf"


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
        import bicc_lab
        from bicc_lab.tracking.naming import git_commit

        # The tags a training run has, so that an eval run leads to its code and its files too.
        tags = {Tag.MODEL: model, Tag.GIT_COMMIT: git_commit(), Tag.VERSION: bicc_lab.__version__}
        if files:
            tags["output_dir"] = str(Path(files[0]).resolve().parent)
        _, run_id = create_run(tracker, experiment, f"eval {model}", EVAL_ROLE, tags)
        tracker.log_params(run_id, flatten({"eval": result.config}))
    else:
        run_id = target["run_id"]
    log_evaluation(tracker, run_id, result, step=step, files=files)
    if target.get("new"):
        tracker.set_status(run_id, "FINISHED")
    return run_id
