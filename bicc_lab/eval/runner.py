"""Evaluate a model on the ``bicc_*`` benchmarks through ``lm_eval.simple_evaluate``.

``evaluate`` samples k answers per problem (``repeats: k`` + ``take_first_k``),
grades them with math-verify (gold first) and returns an ``EvalResult``: per
benchmark avg@k, pass@1, pass@k, maj@k and n, plus a per-problem table with the
k correctness values of every problem for paired statistics.

Data files are bound before the model is loaded, so a missing benchmark file
fails fast with ``EvalDataError`` (one line).
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bicc_lab.eval import scoring
from bicc_lab.eval.data import EvalDataError, check_benchmarks, get_benchmark
from bicc_lab.eval.metrics import aggregate
from bicc_lab.tasks.data_dir import resolve_data_dir
from bicc_lab.units import SCORE_SCALE, SCORE_UNIT, is_score

log = logging.getLogger(__name__)

BACKENDS = ("hf", "vllm")
#: always leave this share of the context (at most PROMPT_RESERVE_MAX tokens) for the prompt
PROMPT_RESERVE_FRACTION = 0.25
PROMPT_RESERVE_MAX = 1024
RESULT_FORMAT = 1


# ------------------------------------------------------------------ results


@dataclass
class BenchmarkResult:
    benchmark: str
    task: str
    n: int
    k: int
    metrics: dict[str, float]  # "avg@k", "pass@1", "pass@k" (k > 1), "maj@k"
    source: str = ""  # where the docs came from (file path, hub id, generated)
    distinct_fraction: float | None = None  # share of problems with >1 distinct sample
    lm_eval: dict[str, Any] = field(default_factory=dict)  # lm-eval's aggregated numbers


@dataclass
class EvalResult:
    benchmarks: dict[str, BenchmarkResult]
    problems: list[dict[str, Any]]
    config: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    #: lm-eval's own per-document records by task name (``log_samples=True``); kept out
    #: of ``to_dict``: they are written as lm-eval's ``samples_<task>_<date>.jsonl``.
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict, repr=False)

    def metrics(self) -> dict[str, float]:
        """Flat ``{"math500/avg@4": 0.5, "math500/n": 500, ...}`` (for trackers)."""
        out: dict[str, float] = {}
        for name, b in self.benchmarks.items():
            for key, value in b.metrics.items():
                out[f"{name}/{key}"] = value
            out[f"{name}/n"] = b.n
        return out

    def problems_for(self, benchmark: str) -> list[dict[str, Any]]:
        return [p for p in self.problems if p["benchmark"] == benchmark]

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``eval.json``): scores in points (``"score_unit": "percent"``), as every
        output shows them; lm-eval's own numbers (``lm_eval``) stay in lm-eval's fractions."""
        benchmarks = {}
        for k, v in self.benchmarks.items():
            d = asdict(v)
            d["metrics"] = {m: _to_points(m, x) for m, x in v.metrics.items()}
            benchmarks[k] = d
        return {
            "format": RESULT_FORMAT,
            "score_unit": SCORE_UNIT,
            "benchmarks": benchmarks,
            "problems": self.problems,
            "config": self.config,
            "warnings": self.warnings,
            "seconds": self.seconds,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EvalResult:
        """Back from :meth:`to_dict`, scores in fractions again (the statistics' unit); a file
        without ``score_unit`` was written by an older version, in fractions."""
        scale = SCORE_SCALE if d.get("score_unit") == SCORE_UNIT else 1.0
        benchmarks = {}
        for k, v in d["benchmarks"].items():
            metrics = {m: x / scale if is_score(m) and isinstance(x, int | float) else x
                       for m, x in (v.get("metrics") or {}).items()}
            benchmarks[k] = BenchmarkResult(**{**v, "metrics": metrics})
        return cls(
            benchmarks=benchmarks,
            problems=list(d["problems"]),
            config=dict(d.get("config", {})),
            warnings=list(d.get("warnings", [])),
            seconds=float(d.get("seconds", 0.0)),
        )

    def to_json(self, path: str | os.PathLike[str]) -> Path:
        """Write atomically: a temp file in the same folder, then ``os.replace``."""
        from bicc_lab.fileio import write_atomic

        text = json.dumps(self.to_dict(), indent=1, ensure_ascii=False, default=str) + "\n"
        return write_atomic(path, text)

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> EvalResult:
        with open(path, encoding="utf-8") as fh:
            return cls.from_dict(json.load(fh))


def _to_points(name: str, value: Any) -> Any:
    return value * SCORE_SCALE if is_score(name) and isinstance(value, int | float) else value


# ------------------------------------------------------------------ helpers


def clamp_max_new_tokens(requested: int, context: int | None) -> tuple[int, str | None]:
    """Never generate past the model context: at most ``context - reserve`` new
    tokens, the reserve being 25% of the context (at most 1024 tokens) for the
    prompt. Returns the value to use and a warning when it was clamped."""
    if requested < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {requested}")
    if not context or context <= 1:
        return requested, None
    reserve = max(1, min(PROMPT_RESERVE_MAX, int(context * PROMPT_RESERVE_FRACTION)))
    allowed = max(1, context - reserve)
    if requested > allowed:
        return allowed, (
            f"max_new_tokens={requested} does not fit the model context of {context} tokens; "
            f"using {allowed} (leaving {context - allowed} for the prompt)"
        )
    return requested, None


def generation_kwargs(temperature: float, top_p: float, max_new_tokens: int | None) -> dict[str, Any]:
    """lm-eval generation kwargs. Never a ``seed``: a per-request seed would make
    the k repeats of a prompt identical on vLLM."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if temperature == 0:
        gen: dict[str, Any] = {"do_sample": False, "temperature": 0.0}
    else:
        gen = {"do_sample": True, "temperature": float(temperature), "top_p": float(top_p)}
    if max_new_tokens is not None:
        gen["max_gen_toks"] = int(max_new_tokens)
    return gen


def parse_limit(value: str | int | float | None) -> int | float | None:
    """lm-eval's ``--limit``: a count (``5``, ``5.0``) or, below 1.0, a fraction of each
    benchmark (``0.1``: ``ceil(0.1 * n)`` problems). None stays None."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"limit must be a number (a count, or a fraction below 1.0), got {value!r}") from None
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"limit must be > 0 (a count, or a fraction below 1.0), got {value!r}")
    if number < 1.0:
        return number
    if number != int(number):
        raise ValueError(f"limit {value!r}: a count must be whole (a fraction is below 1.0)")
    return int(number)


#: lm-eval's ``--seed`` slots, and its defaults for a partial list
SEED_SLOTS = ("python", "numpy", "torch", "fewshot")
LMEVAL_DEFAULT_SEEDS = (0, 1234, 1234, 1234)


def parse_seed(value: str | int | Sequence[int | None] | None) -> tuple[int | None, ...]:
    """lm-eval's ``--seed``: one integer for all four seeds (python, numpy, torch,
    fewshot), or 3-4 comma-separated values where ``None`` leaves a seed unset and a
    missing fourth takes lm-eval's default (1234). None: 0 for all four (ours)."""
    if value is None:
        return (0, 0, 0, 0)
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,) * 4
    items = value.split(",") if isinstance(value, str) else list(value)
    parsed: list[int | None] = []
    for item in items:
        text = str(item).strip()
        if item is None or text.lower() == "none":
            parsed.append(None)
            continue
        try:
            parsed.append(int(text))
        except ValueError:
            raise ValueError(f"seed {value!r}: {text!r} is not an integer or None") from None
    if len(parsed) == 1:
        return (parsed[0],) * 4
    if not 3 <= len(parsed) <= 4:
        raise ValueError(
            f"seed {value!r}: one integer, or 3-4 comma-separated values ({','.join(SEED_SLOTS)})"
        )
    return tuple(parsed) + LMEVAL_DEFAULT_SEEDS[len(parsed):]


def model_context_length(model: Any) -> int | None:
    """``max_position_embeddings`` (or an equivalent) of a model, a config or a
    local / hub path; None when unknown."""
    cfg = getattr(model, "config", model)
    if isinstance(model, (str, os.PathLike)):
        try:
            from transformers import AutoConfig

            cfg = AutoConfig.from_pretrained(str(model))
        except Exception:
            return None
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx"):
        v = getattr(cfg, attr, None)
        if isinstance(v, int) and v > 0:
            return v
    text_cfg = getattr(cfg, "text_config", None)
    if text_cfg is not None and text_cfg is not cfg:
        return model_context_length(text_cfg)
    return None


def model_args_for(
    backend: str,
    model: str | os.PathLike[str],
    *,
    device: str = "cpu",
    dtype: str | None = None,
    seed: int = 0,
    max_model_len: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """lm-eval ``model_args`` for a path or hub id."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    args: dict[str, Any] = {"pretrained": str(model)}
    if backend == "hf":
        args["dtype"] = dtype or ("float32" if str(device).startswith("cpu") else "auto")
    else:
        # vLLM: one engine seed; repeats are separate requests without a
        # per-request seed, so they sample independently.
        args.update({"dtype": dtype or "auto", "seed": int(seed), "gpu_memory_utilization": 0.9})
        if max_model_len:
            args["max_model_len"] = int(max_model_len)
    args.update(dict(extra or {}))
    return args


def _has_chat_template(lm: Any) -> bool:
    tok = getattr(lm, "tokenizer", None)
    return bool(getattr(tok, "chat_template", None))


def _build_lm(
    model: Any,
    backend: str,
    *,
    tokenizer: Any,
    device: str,
    batch_size: int | str,
    dtype: str | None,
    seed: int,
    model_args: Mapping[str, Any] | None,
    max_model_len: int | None,
):
    import lm_eval.api.model
    import lm_eval.api.registry

    if isinstance(model, lm_eval.api.model.LM):
        return model
    if not isinstance(model, (str, os.PathLike)):
        if backend != "hf":
            raise ValueError("an in-memory model needs backend='hf'; pass a path for vllm")
        from lm_eval.models.huggingface import HFLM

        if tokenizer is None:
            raise ValueError("an in-memory model needs its tokenizer (tokenizer=...)")
        return HFLM(pretrained=model, tokenizer=tokenizer, device=device, batch_size=batch_size,
                    **dict(model_args or {}))
    args = model_args_for(backend, model, device=device, dtype=dtype, seed=seed,
                          max_model_len=max_model_len, extra=model_args)
    if tokenizer is not None:
        args["tokenizer"] = tokenizer
    cls = lm_eval.api.registry.get_model(backend)
    return cls.create_from_arg_obj(args, {"batch_size": batch_size, "device": device})


def _write_arith_file(directory: Path, arith: Mapping[str, Any] | None) -> Path:
    """The synthetic arithmetic test split as JSONL ({"prompt", "solution"})."""
    from bicc_lab.tasks.arithmetic import arithmetic_problems

    opts = dict(arith or {})
    rows = arithmetic_problems("test", **opts)
    path = directory / "arith_test.jsonl"
    with path.open("w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    return path


def _distinct_fraction(rows: Sequence[Mapping[str, Any]]) -> float | None:
    with_k = [r for r in rows if len(r.get("_responses", [])) > 1]
    if not with_k:
        return None
    return sum(len(set(r["_responses"])) > 1 for r in with_k) / len(with_k)


# ------------------------------------------------------------------ evaluate


def evaluate(
    model_path_or_obj: Any,
    benchmarks: str | Iterable[str],
    samples: int = 4,
    limit: int | float | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    temperature: float = 0.6,
    top_p: float = 0.95,
    max_new_tokens: int | None = None,
    backend: str = "hf",
    batch_size: int | str | None = None,
    device: str = "cpu",
    seed: int | str | Sequence[int | None] = 0,
    *,
    tokenizer: Any = None,
    dtype: str | None = None,
    apply_chat_template: bool | None = None,
    system_instruction: str | None = None,
    model_args: Mapping[str, Any] | None = None,
    keep_responses: bool = False,
    log_samples: bool = False,
    arith: Mapping[str, Any] | None = None,
    gen_kwargs: Mapping[str, Any] | None = None,
    num_fewshot: int | None = None,
    doc_indices: Mapping[str, Sequence[int]] | None = None,
) -> EvalResult:
    """Sample ``samples`` answers per problem on each benchmark and grade them.

    - ``model_path_or_obj``: a local path or hub id, an in-memory
      ``PreTrainedModel`` (with ``tokenizer=``), or an lm-eval ``LM``.
    - ``benchmarks``: names (``math500, aime24, aime25, amc23, gsm8k, minerva,
      olympiad, arith``; aliases such as ``arith_test``), a list or "a,b".
    - ``data_dir``: folder of the benchmark JSONL files, else
      ``$BICC_LAB_DATA_DIR``, else the hub ids.
    - ``max_new_tokens``: None keeps each task's default (4096 math, 8 arith);
      always clamped to the model context (with a warning).
    - ``apply_chat_template``: None = the tokenizer's chat template for the math
      benchmarks when it has one, plain prompts for ``arith`` (the tiny models
      are trained on plain prompts); True / False forces it for all.
    - ``batch_size``: None = 8 for hf, "auto" for vllm (all requests in one
      engine call, so the k repeats of a prompt are sampled together).
    - ``limit``: as lm-eval's: a count of problems per benchmark, or below 1.0 a
      fraction of each (``ceil(limit * n)``).
    - ``seed``: as lm-eval's ``--seed``: one integer for its four seeds (python,
      numpy, torch, fewshot) or a list of them (:func:`parse_seed`); the vLLM
      engine takes the first.
    - ``log_samples``: keep lm-eval's per-document records in ``result.samples``
      (``write_samples`` writes them as lm-eval does).
    - ``arith``: options of the arithmetic test split
      (``bicc_lab.tasks.arithmetic.arithmetic_problems``: digits, ops, n_test, seed).
    - ``gen_kwargs``, ``num_fewshot``, ``doc_indices``: lm-eval's ``--gen_kwargs`` (merged
      over the sampling arguments), ``--num_fewshot`` and ``--samples`` (benchmark or task
      name -> document indices; exclusive with ``limit``).
    """
    t0 = time.time()
    limit = parse_limit(limit)
    seeds = parse_seed(seed)
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    k = int(samples)
    if k < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    benches = check_benchmarks(benchmarks, data_dir)  # before lm-eval or a model loads
    notes: list[str] = []

    def warn(msg: str) -> None:
        notes.append(msg)
        warnings.warn(msg, stacklevel=3)
        log.warning(msg)

    if temperature == 0 and k > 1:
        warn(f"temperature=0 is greedy decoding: all {k} samples of a problem will be identical")
    gen = {**generation_kwargs(temperature, top_p, None), **dict(gen_kwargs or {})}
    if doc_indices is not None and limit is not None:
        raise ValueError("limit and doc_indices (lm-eval's --limit and --samples) exclude each other")
    if batch_size is None:
        batch_size = "auto" if backend == "vllm" else 8
    ddir = resolve_data_dir(data_dir)

    from bicc_lab.eval import lmeval

    tm = lmeval.task_manager(ddir)
    with tempfile.TemporaryDirectory(prefix="bicc_eval_") as tmp:
        # 1. data first (fails fast, before any model is loaded)
        tasks: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for b in benches:
            data_files = None
            if b.name == "arith" and not (ddir is not None and (ddir / b.filename).is_file()):
                data_files = _write_arith_file(Path(tmp), arith)
            cfg = lmeval.task_config(b, k=k, generation_kwargs=gen, data_files=data_files)
            try:
                tasks[b.name] = tm.load([cfg])["tasks"][b.task]
            except EvalDataError:
                raise
            except Exception as err:
                raise EvalDataError(f"{b.task}: could not build the task ({type(err).__name__}: {err})") from err
            local = ddir / b.filename if ddir is not None and b.filename else None
            if data_files is not None:
                sources[b.name] = f"generated: arithmetic test split {dict(arith or {})}"
            elif local is not None and local.is_file():
                sources[b.name] = str(local)
            elif not b.hub:
                sources[b.name] = f"generated: {b.name} test split"
            else:
                sources[b.name] = "hub: " + " or ".join(h.path for h in b.hub)

        # 2. model and context length
        max_model_len = None
        if backend == "vllm" and isinstance(model_path_or_obj, (str, os.PathLike)):
            max_model_len = (model_args or {}).get("max_model_len") or model_context_length(model_path_or_obj)
        lm = _build_lm(model_path_or_obj, backend, tokenizer=tokenizer, device=device,
                       batch_size=batch_size, dtype=dtype, seed=seeds[0] or 0, model_args=model_args,
                       max_model_len=max_model_len)
        try:
            context = int(lm.max_length)
        except Exception:
            context = model_context_length(getattr(lm, "model", model_path_or_obj))
        for b, task in zip(benches, tasks.values(), strict=True):
            want = next(v for v in (max_new_tokens, task.config.generation_kwargs.get("max_gen_toks"), 256) if v is not None)
            use, msg = clamp_max_new_tokens(int(want), context)
            if msg:
                warn(f"{b.name}: {msg}")
            task.config.generation_kwargs["max_gen_toks"] = use

        # 3. generate + grade, one simple_evaluate per chat-template setting
        has_template = _has_chat_template(lm)
        if apply_chat_template and not has_template:
            warn("apply_chat_template=True but the tokenizer has no chat template; using plain prompts")
        groups: dict[bool | str, list[str]] = {}  # a template name (lm-eval's) is kept as it is
        for b in benches:
            chat = has_template and (apply_chat_template if apply_chat_template is not None else b.name != "arith")
            groups.setdefault(chat if isinstance(chat, str) else bool(chat), []).append(b.name)
        selected = None if doc_indices is None else {
            get_benchmark(name).task: list(indices) for name, indices in doc_indices.items()
        }

        import lm_eval

        raw: dict[str, dict[str, Any]] = {}
        try:
            for chat, names in groups.items():
                res = lm_eval.simple_evaluate(
                    model=lm,
                    tasks=[tasks[n] for n in names],
                    task_manager=tm,
                    limit=limit,
                    samples=selected,
                    num_fewshot=num_fewshot,
                    log_samples=True,
                    apply_chat_template=chat,
                    system_instruction=system_instruction,
                    bootstrap_iters=0,
                    random_seed=seeds[0],
                    numpy_random_seed=seeds[1],
                    torch_random_seed=seeds[2],
                    fewshot_random_seed=seeds[3],
                )
                if res is None:  # non-zero rank in a distributed run
                    continue
                for n in names:
                    task_name = tasks[n].config.task
                    raw[n] = {
                        "results": res["results"].get(task_name, {}),
                        "samples": res["samples"].get(task_name, []),
                        "chat": chat,
                    }
        finally:
            scoring.clear_cache()

    # 4. per-problem table and benchmark metrics
    problems: list[dict[str, Any]] = []
    bench_results: dict[str, BenchmarkResult] = {}
    samples = {tasks[n].config.task: raw[n]["samples"] for n in raw} if log_samples else {}
    for b in benches:
        if b.name not in raw:
            continue
        rows = []
        for s in sorted(raw[b.name]["samples"], key=lambda s: s["doc_id"]):
            doc = s["doc"]
            resps = s["filtered_resps"][0] if s["filtered_resps"] else []
            resps = [resps] if isinstance(resps, str) else list(resps)
            correct = [bool(x) for x in s["correct"]]
            row = {
                "benchmark": b.name,
                "problem_id": doc["problem_id"],
                "doc_id": s["doc_id"],
                "gold": doc["gold"],
                "n_correct": sum(correct),
                "k": len(correct),
                "correct": correct,
                "maj_correct": bool(s["maj_at_k"]),
                "_responses": resps,
            }
            if keep_responses:
                row["prompt"] = s["arguments"][0][0] if s.get("arguments") else None
            rows.append(row)
        distinct = _distinct_fraction(rows) if temperature > 0 else None
        if distinct == 0.0 and len(rows) >= 2:
            warn(
                f"{b.name}: the {k} samples are identical for every problem; sampling is not "
                "taking effect (a per-request seed in the backend, or greedy decoding?)"
            )
        for row in rows:
            resps = row.pop("_responses")
            if keep_responses:
                row["responses"] = resps
        agg = aggregate(rows)
        metrics = {key: v for key, v in agg.items() if key != "n"}
        lm_res = {key: v for key, v in raw[b.name]["results"].items() if isinstance(v, (int, float)) and "stderr" not in key}
        lm_avg = lm_res.get(f"avg_at_k,{lmeval.FILTER_NAME}")
        if rows and lm_avg is not None and not math.isclose(lm_avg, metrics[f"avg@{k}"], abs_tol=1e-9):
            warn(f"{b.name}: lm-eval avg_at_k {lm_avg} differs from the per-problem table {metrics[f'avg@{k}']}")
        bench_results[b.name] = BenchmarkResult(
            benchmark=b.name, task=b.task, n=len(rows), k=k, metrics=metrics,
            source=sources.get(b.name, ""), distinct_fraction=distinct, lm_eval=lm_res,
        )
        problems.extend(rows)

    config = {
        "model": str(model_path_or_obj) if isinstance(model_path_or_obj, (str, os.PathLike)) else type(model_path_or_obj).__name__,
        "benchmarks": [b.name for b in benches],
        "samples": k,
        "limit": limit,
        "data_dir": str(ddir) if ddir else None,
        "temperature": temperature,
        "top_p": top_p,
        "max_new_tokens": {n: int(tasks[n].config.generation_kwargs["max_gen_toks"]) for n in tasks},
        "backend": backend,
        "batch_size": batch_size,
        "device": device,
        "seed": seeds[0] if len(set(seeds)) == 1 else list(seeds),
        "context_length": context,
        "chat_template": {n: raw[n]["chat"] for n in raw},
        "arith": dict(arith or {}),
        "model_args": {key: str(v) for key, v in (model_args or {}).items()},
        "gen_kwargs": {key: str(v) for key, v in (gen_kwargs or {}).items()},
        "num_fewshot": num_fewshot,
        "doc_indices": selected,
    }
    return EvalResult(benchmarks=bench_results, problems=problems, config=config,
                      warnings=notes, seconds=time.time() - t0, samples=samples)


# ------------------------------------------------------------------ lm-eval's output files


def output_files(output_path: str | os.PathLike[str], model_name: str, date_id: str) -> tuple[Path, Path]:
    """Where lm-eval's ``--output_path`` puts results and samples: a path ending in
    ``.json`` is the results file (ours keeps that exact name; lm-eval adds the date) with
    the samples beside it; any other path is a directory that gets
    ``<model, sanitized>/results_<date>.json`` and the samples next to it.
    Returns (results file, samples directory)."""
    from lm_eval.utils import sanitize_model_name

    path = Path(output_path)
    if path.suffix == ".json":
        return path, path.parent
    folder = path / sanitize_model_name(model_name)
    return folder / f"results_{date_id}.json", folder


def write_samples(result: EvalResult, directory: str | os.PathLike[str], date_id: str) -> list[Path]:
    """lm-eval's ``samples_<task>_<date>.jsonl``, one line per document, sanitized the way
    lm-eval's ``EvaluationTracker.save_results_samples`` does (``arguments`` as
    ``gen_args_i/arg_j``, responses as strings), so tools that read lm-eval's samples read these."""
    from lm_eval.utils import handle_non_serializable, sanitize_list

    from bicc_lab.fileio import write_atomic

    if not result.samples:
        raise ValueError("the evaluation kept no samples (evaluate(..., log_samples=True))")
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for task_name, records in result.samples.items():
        lines = []
        for record in records:
            sample = dict(record)
            sample["arguments"] = {
                f"gen_args_{i}": {f"arg_{j}": value for j, value in enumerate(arg)}
                for i, arg in enumerate(record.get("arguments", []))
            }
            sample["resps"] = sanitize_list(record.get("resps", []))
            sample["filtered_resps"] = sanitize_list(record.get("filtered_resps", []))
            sample["target"] = str(record.get("target"))
            lines.append(json.dumps(sample, default=handle_non_serializable, ensure_ascii=False))
        path = folder / f"samples_{task_name}_{date_id}.jsonl"
        write_atomic(path, "".join(line + "\n" for line in lines))
        written.append(path)
    return written


# ------------------------------------------------------------------ from a run config


def evaluate_config(config: Any, model_dir: str | os.PathLike[str], *, out_file: str | os.PathLike[str] | None = None,
                    data_dir: str | os.PathLike[str] | None = None) -> EvalResult:
    """Evaluate a trained run with the settings of its ``ExperimentConfig.eval`` block."""
    import torch

    spec = config.eval
    result = evaluate(
        str(model_dir),
        spec.benchmarks,
        samples=spec.samples,
        limit=spec.limit,
        data_dir=data_dir or spec.data_dir,
        temperature=spec.temperature,
        top_p=spec.top_p,
        max_new_tokens=spec.max_new_tokens,
        backend=spec.backend,
        device="cuda" if torch.cuda.is_available() else "cpu",
        seed=config.seed,
        dtype=None if config.model.dtype == "auto" else config.model.dtype,
        arith={"digits": config.data.digits},
    )
    if out_file is not None:
        result.to_json(out_file)
    return result


def print_table(result: EvalResult, title: str = "evaluation") -> None:
    """A Rich table: one row per benchmark with n, k and every metric."""
    from rich.table import Table

    from bicc_lab.console import console

    table = Table(title=title)
    metric_names: list[str] = []
    for bench in result.benchmarks.values():
        for key in bench.metrics:
            if key not in metric_names:
                metric_names.append(key)
    for column in ("benchmark", "n", "k", *metric_names):
        title = f"{column} (%)" if is_score(column) else column  # scores in points, as everywhere
        table.add_column(title, justify="left" if column == "benchmark" else "right")
    for name, bench in result.benchmarks.items():
        values = [f"{_to_points(m, bench.metrics[m]):.1f}" if m in bench.metrics else "—" for m in metric_names]
        table.add_row(name, str(bench.n), str(bench.k), *values)
    console().print(table)  # off a terminal: full width, every metric column kept
    for note in result.warnings:
        console(stderr=True).print(f"[yellow]warning:[/] {note}")
