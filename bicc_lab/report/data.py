"""MLflow -> pandas: the finished runs of a sweep as one tidy DataFrame.

One ``search_runs`` pass (pages of up to 50,000 runs) brings every child run with its
tags, params and latest metric values: enough for the ablation and cost tables. Metric
histories (training curves) and the per-problem eval artifacts (paired bootstrap) are
fetched only when asked for, and only for the metrics / runs that need them.

Names come from :mod:`bicc_lab.tracking.naming` (``Tag``, ``metric_key``) and
:mod:`bicc_lab.launch.layout` (``EVAL_FILE``), the modules that write them.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import re
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bicc_lab.errors import UserError
from bicc_lab.launch.layout import EVAL_FILE
from bicc_lab.spec.grid import NAMED_AXES, format_value, model_short_name
from bicc_lab.spec.models import ARMS
from bicc_lab.tracking.naming import Tag, metric_key, scores_as_fractions, sqlite_path

if TYPE_CHECKING:
    import pandas as pd
    from mlflow import MlflowClient

__all__ = [
    "CURVE_METRICS",
    "ReportDataError",
    "RunSet",
    "load_curves",
    "load_problem_scores",
    "load_runs",
    "metric_selector",
    "runs_to_frames",
]

#: Training metrics plotted as curves when a run logged them (TRL / bicc-lab log keys).
CURVE_METRICS: tuple[str, ...] = (
    "reward",
    "rcc/cov_r_delta",
    "contrast/margin",
    "bicc/logp_shift",
    "bicc/logp_shift_correct",
    "bicc/logp_shift_incorrect",
    "transfer/grad_cosine",
    "transfer/plain_logp_gain_correct",
    "transfer/plain_logp_gain_incorrect",
    "diagnostics/grad_variance",
)
#: Latest values kept as training summaries in the tidy frame (``final/<key>``).
SUMMARY_METRICS: tuple[str, ...] = (
    "reward", "loss", *CURVE_METRICS[1:], "perf/tokens_per_s",
    "bicc/logp_shift_per_token_correct", "bicc/logp_shift_per_token_incorrect",
    "bicc/logp_shift_n_correct", "bicc/logp_shift_n_incorrect",
)
WALL_TIME = "train/wall_time_s"
MEAN_STEP_TIME = "train/mean_step_time_s"
STEP_TIME = "step_time"
TOKENS = "num_tokens"  # TRL: cumulative input tokens seen
# Tokens per optimizer step, run means logged by the trainer: with gradient, and in no-grad passes.
GRAD_TOKENS = "tokens/grad_per_step"
NOGRAD_TOKENS = ("tokens/nograd_policy_per_step", "tokens/nograd_reference_per_step")
# Prompt + completion tokens of every rollout sampled per optimizer step (dynamic sampling's
# extra rounds included).
GENERATION_TOKENS = "tokens/generation_per_step"
# The process's peak memory in MiB (CUDA's peak allocation on a GPU, peak resident set on a CPU).
PEAK_MEMORY = "perf/peak_memory_mib"
# The forward path of a run's loss forward (``train.shared_prefix``): cost ratios compare arms on one path.
SHARED_PATH, PER_SEQUENCE_PATH, BICC_ONLY_PATH = "shared", "per-sequence", "shared (BICC only)"
EVAL_PREFIX = "eval/"
FINISHED = "FINISHED"
FAILED_STATUSES = ("FAILED", "KILLED")  # shown as failed rows; RUNNING runs are only counted
ROW_KEYS = ("model", "variant")
PAGE_SIZE = 50_000  # SEARCH_MAX_RESULTS_THRESHOLD of MLflow's stores
FALLBACK_PAGE_SIZE = 1_000


class ReportDataError(UserError):
    """Nothing to report (unknown experiment, no finished runs): one line, exit 2."""


# --------------------------------------------------------------------------- metric choice


@dataclass(frozen=True)
class MetricSelector:
    """Which eval metric the tables show: a family (``avg_at_k``) or one exact name."""

    spec: str
    prefix: str | None  # "avg" for avg_at_k
    exact: str | None

    def pick(self, names: Iterable[str]) -> tuple[str, int | None] | None:
        """The metric among ``names`` (of one benchmark) and its k; the largest k wins."""
        if self.exact is not None:
            if self.exact in names:
                m = re.fullmatch(r".+_at_(\d+)", self.exact)
                return self.exact, int(m.group(1)) if m else None
            return None
        best: tuple[str, int] | None = None
        pattern = re.compile(rf"{re.escape(self.prefix or '')}_at_(\d+)")
        for name in names:
            m = pattern.fullmatch(name)
            if m and (best is None or int(m.group(1)) > best[1]):
                best = (name, int(m.group(1)))
        return best

    @property
    def family(self) -> str:
        """``avg``, ``pass``, ``maj`` or the exact name's own prefix."""
        name = self.prefix if self.prefix is not None else (self.exact or "")
        return name.split("_at_")[0]

    def problem_score(self, k: int | None) -> Callable[[Mapping[str, Any]], float | None] | None:
        """Per-problem score of the chosen metric, for paired statistics (None: unsupported)."""
        family = self.family
        if family == "avg" or (family == "pass" and k == 1):
            return lambda p: _mean_correct(p)
        if family == "pass" and k:
            from bicc_lab.eval.metrics import pass_at_k

            def score(p: Mapping[str, Any]) -> float | None:
                correct = p.get("correct") or []
                n = len(correct)
                if n < k:
                    return None
                return pass_at_k(n, sum(bool(c) for c in correct), k)

            return score
        if family == "maj":
            return lambda p: None if p.get("maj_correct") is None else float(bool(p["maj_correct"]))
        return None


def _mean_correct(p: Mapping[str, Any]) -> float | None:
    correct = p.get("correct")
    if correct:
        return sum(bool(c) for c in correct) / len(correct)
    if p.get("k"):
        return float(p.get("n_correct", 0)) / float(p["k"])
    return None


def metric_selector(spec: str = "avg_at_k") -> MetricSelector:
    """``avg_at_k`` / ``avg@k`` (family, any k) or an exact name like ``pass_at_1``."""
    key = metric_key(spec.strip())
    m = re.fullmatch(r"(.+)_at_k", key)
    if m:
        return MetricSelector(spec, m.group(1), None)
    return MetricSelector(spec, None, key)


# --------------------------------------------------------------------------- the run set


@dataclass
class RunSet:
    """The finished runs of one sweep (experiment) and what the tables need of them.

    ``runs``: one row per finished child run (tags, axes, costs, every latest metric).
    ``frame``: the tidy table, one row per run × benchmark, with the chosen ``score``.
    ``failed``: one row per cell whose newest run FAILED or was KILLED and that has no
    finished run (row keys, arm, seed, status, the error's last line).
    """

    uri: str
    experiment: str
    experiment_id: str
    sweep: str
    parent_run_id: str | None
    metric: MetricSelector
    runs: pd.DataFrame
    frame: pd.DataFrame
    row_axes: list[str]  # grid axes besides model/variant/arm/seed, part of a row's key
    benchmarks: list[str]
    notes: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)  # our status -> count (not finished)
    artifact_uris: dict[str, str] = field(default_factory=dict)  # run_id -> artifact root
    client: Any = None
    failed: Any = None  # pd.DataFrame of failed cells (see above); None: not read

    @property
    def row_keys(self) -> list[str]:
        return [*ROW_KEYS, *self.row_axes]


def _client(uri: str) -> MlflowClient:
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


@contextlib.contextmanager
def _gc_paused():
    """Pause the cyclic garbage collector while MLflow builds ~100 ORM objects per run.

    The objects are all alive until the search returns, so collections find nothing to free
    but walk every object, again and again: on 1,000 runs this halves ``search_runs``'s time.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def search_all_runs(client: MlflowClient, experiment_id: str, filter_string: str) -> list[Any]:
    """Every active run matching ``filter_string``: pages of 50,000, following ``page.token``."""
    from mlflow.entities import ViewType
    from mlflow.exceptions import MlflowException

    page_size = PAGE_SIZE
    runs: list[Any] = []
    token = None
    while True:
        try:
            page = client.search_runs(
                [experiment_id],
                filter_string=filter_string,
                run_view_type=ViewType.ACTIVE_ONLY,
                max_results=page_size,
                page_token=token,
            )
        except MlflowException as exc:
            # A server with a lower cap on max_results: fall back to the default page size.
            if page_size != FALLBACK_PAGE_SIZE and "max_results" in str(exc).lower() and token is None:
                page_size = FALLBACK_PAGE_SIZE
                continue
            raise
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def load_runs(
    experiment: str,
    uri: str,
    *,
    metric: str | MetricSelector = "avg_at_k",
    filter_string: str = "",
    sweep: str | None = None,
) -> RunSet:
    """Read the FINISHED child runs of ``experiment`` at ``uri`` into a :class:`RunSet`.

    Raises:
        ReportDataError: no such store or experiment, or no finished runs.
    """
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        raise ReportDataError(f"no MLflow store at {db} (nothing was tracked there)")
    selector = metric if isinstance(metric, MetricSelector) else metric_selector(metric)
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ReportDataError(f"no MLflow experiment {experiment!r} at {uri}")
    filt = f"tags.{Tag.ROLE} = 'cell'"
    if filter_string.strip():
        filt += f" and {filter_string.strip()}"
    with _gc_paused():
        runs = search_all_runs(client, exp.experiment_id, filt)
        run_set = runs_to_frames(runs, selector, sweep=sweep)
        del runs
    if run_set.runs.empty:
        counts = ", ".join(f"{n} {s}" for s, n in sorted(run_set.skipped.items()))
        raise ReportDataError(
            f"experiment {experiment!r} at {uri} has no finished runs"
            + (f" ({counts})" if counts else "") + _other_kinds(client, exp.experiment_id)
        )
    run_set.uri = uri
    run_set.experiment = experiment
    run_set.experiment_id = exp.experiment_id
    run_set.client = client
    if run_set.sweep == "":
        run_set.sweep = experiment
    parents = search_all_runs(
        client, exp.experiment_id, f"tags.{Tag.ROLE} = 'sweep' and tags.{Tag.SWEEP} = '{_quote(run_set.sweep)}'"
    )
    if parents:
        parents.sort(key=lambda r: r.info.start_time or 0)
        run_set.parent_run_id = parents[0].info.run_id
    return run_set


def _other_kinds(client: Any, experiment_id: str) -> str:
    """What the experiment holds instead of sweep cells (e.g. `train` or `eval` runs): a
    report of an experiment of `train` runs said "no finished runs" without saying why."""
    from collections import Counter

    roles = Counter(r.data.tags.get(Tag.ROLE, "untagged") for r in search_all_runs(client, experiment_id, ""))
    roles.pop("cell", None)
    if not roles:
        return ""
    found = ", ".join(f"{n} {role} run{'s' if n > 1 else ''}" for role, n in sorted(roles.items()))
    return (f"; it holds {found}, and a report tables sweep cells (role=cell): run the configs as a sweep "
            "(bicc-lab sweep run SWEEP.yaml) and report that")


def _quote(value: str) -> str:
    return value.replace("'", "\\'")


def _bool_param(params: Mapping[str, str], key: str) -> bool:
    return str(params.get(key, "false")).lower() in ("true", "1")


def _arm_of(tags: Mapping[str, str], params: Mapping[str, str]) -> str:
    arm = tags.get(Tag.ARM)
    if arm:
        return arm
    bicc, rcc = _bool_param(params, "bicc.enabled"), _bool_param(params, "rcc.enabled")
    return "bicc+rcc" if bicc and rcc else "bicc" if bicc else "rcc" if rcc else "base"


def forward_path_of(params: Mapping[str, str]) -> str:
    """Which forward the run's loss took: ``shared`` (each distinct prompt of a group once)
    or ``per-sequence``. Runs from before ``train.shared_prefix`` shared BICC's conditioned
    forward only, when ``bicc.shared_prefix`` was on: their own label, so that no ratio
    compares such a BICC arm with a per-sequence baseline."""
    if "train.shared_prefix" in params:
        return SHARED_PATH if _bool_param(params, "train.shared_prefix") else PER_SEQUENCE_PATH
    if _bool_param(params, "bicc.enabled") and _bool_param(params, "bicc.shared_prefix"):
        return BICC_ONLY_PATH
    return PER_SEQUENCE_PATH


def _seed_of(tags: Mapping[str, str], params: Mapping[str, str]) -> int | None:
    for text in (tags.get(Tag.SEED), params.get("seed")):
        try:
            return int(str(text))
        except (TypeError, ValueError):
            continue
    return None


def _eval_metrics(metrics: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """``{"math500": {"avg_at_4": 0.5, "n": 500, ...}}`` from ``eval/<bench>/<metric>`` keys."""
    out: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        if not key.startswith(EVAL_PREFIX):
            continue
        rest = key[len(EVAL_PREFIX) :]
        if "/" not in rest:
            continue  # eval/seconds
        bench, name = rest.rsplit("/", 1)
        out.setdefault(bench, {})[name] = value
    return out


def runs_to_frames(runs: Sequence[Any], selector: MetricSelector, *, sweep: str | None = None) -> RunSet:
    """MLflow ``Run`` objects -> :class:`RunSet` (pure: no MLflow calls)."""
    import pandas as pd

    skipped: dict[str, int] = {}
    notes: list[str] = []
    records: list[dict[str, Any]] = []
    evals: dict[str, dict[str, dict[str, float]]] = {}
    artifact_uris: dict[str, str] = {}
    axis_values: dict[str, dict[str, Any]] = {}
    sweeps: dict[str, int] = {}
    by_hash: dict[str, tuple[float, str]] = {}
    failed_by_key: dict[str, tuple[float, dict[str, Any], dict[str, Any]]] = {}
    for run in runs:
        tags = run.data.tags
        status = tags.get(Tag.STATUS, run.info.status)
        if sweep is not None and tags.get(Tag.SWEEP, sweep) != sweep:
            continue
        short = _short_of(tags) if status == FINISHED else None
        if short is not None:  # marked FINISHED by an older bicc-lab, but trained less than asked
            skipped["SHORT"] = skipped.get("SHORT", 0) + 1
            record, axes = _failed_record(run, "FAILED")
            record["error"] = short
            key = record["config_hash"] or record["run_id"]
            if key not in failed_by_key or failed_by_key[key][0] < record["start_time"]:
                failed_by_key[key] = (record["start_time"], record, axes)
            continue
        if status != FINISHED:
            skipped[status] = skipped.get(status, 0) + 1
            if status in FAILED_STATUSES:
                record, axes = _failed_record(run, status)
                key = record["config_hash"] or record["run_id"]
                if key not in failed_by_key or failed_by_key[key][0] < record["start_time"]:
                    failed_by_key[key] = (record["start_time"], record, axes)
            continue
        params = run.data.params
        metrics = scores_as_fractions(run.data.metrics, tags)  # fractions, whichever unit was logged
        run_id = run.info.run_id
        start = run.info.start_time / 1000 if run.info.start_time else math.nan
        end = run.info.end_time / 1000 if run.info.end_time else math.nan
        digest = tags.get(Tag.CONFIG_HASH, "")
        if digest:  # one finished run per cell: the newest wins
            previous = by_hash.get(digest)
            if previous is not None:
                skipped["DUPLICATE"] = skipped.get("DUPLICATE", 0) + 1
                if previous[0] >= start:
                    continue
                records = [r for r in records if r["run_id"] != previous[1]]
            by_hash[digest] = (start, run_id)
        try:
            axes = json.loads(tags.get(Tag.AXES) or "{}")
        except json.JSONDecodeError:
            axes = {}
        axis_values[run_id] = axes if isinstance(axes, dict) else {}
        name = tags.get(Tag.SWEEP, "")
        sweeps[name] = sweeps.get(name, 0) + 1
        wall = metrics.get(WALL_TIME)
        if wall is None and not (math.isnan(start) or math.isnan(end)):
            wall = end - start
        step_time = metrics.get(MEAN_STEP_TIME, metrics.get(STEP_TIME))
        record = {
            "run_id": run_id,
            "run_name": tags.get(Tag.RUN_NAME, run.info.run_name or ""),
            "sweep": name,
            "cell_id": tags.get(Tag.CELL_ID, ""),
            "cell_name": tags.get(Tag.CELL_NAME, ""),
            "config_hash": digest,
            "model": model_short_name(tags.get(Tag.MODEL) or params.get("model.name") or "?"),
            "model_id": tags.get(Tag.MODEL) or params.get("model.name") or "?",
            "variant": tags.get(Tag.VARIANT) or params.get("variant") or "?",
            "arm": _arm_of(tags, params),
            "forward_path": forward_path_of(params),
            "seed": _seed_of(tags, params),
            "start_time": start,
            "end_time": end,
            "wall_time_s": float(wall) if wall is not None else math.nan,
            "mean_step_time_s": float(step_time) if step_time is not None else math.nan,
            "tokens": float(metrics[TOKENS]) if TOKENS in metrics else math.nan,
            "grad_tokens_per_step": float(metrics[GRAD_TOKENS]) if GRAD_TOKENS in metrics else math.nan,
            # a pass that never ran is never logged: 0 tokens, for runs that count tokens at all
            "nograd_tokens_per_step": (sum(float(metrics.get(k, 0.0)) for k in NOGRAD_TOKENS)
                                       if GRAD_TOKENS in metrics else math.nan),
            "generated_tokens_per_step": (float(metrics[GENERATION_TOKENS])
                                          if GENERATION_TOKENS in metrics else math.nan),
            "peak_memory_mib": float(metrics[PEAK_MEMORY]) if PEAK_MEMORY in metrics else math.nan,
            "steps": float(metrics["train/steps"]) if "train/steps" in metrics else math.nan,
        }
        for key in SUMMARY_METRICS:
            record[f"final/{key}"] = float(metrics[key]) if key in metrics else math.nan
        records.append(record)
        evals[run_id] = _eval_metrics(metrics)
        artifact_uris[run_id] = run.info.artifact_uri

    kept = {r["run_id"] for r in records}
    # A cell that failed once and finished later is finished, not failed.
    failed = [(rec, axes) for key, (_, rec, axes) in failed_by_key.items() if key not in by_hash]
    for rec, axes in failed:
        axis_values[rec["run_id"]] = axes
    # Row axes: every grid axis besides the named ones (model/variant/bicc/rcc/seed).
    row_axes: list[str] = []
    for run_id in [*kept, *(rec["run_id"] for rec, _ in failed)]:
        for key in axis_values.get(run_id, {}):
            if key not in NAMED_AXES and key not in row_axes:
                row_axes.append(key)
    for record in [*records, *(rec for rec, _ in failed)]:
        axes = axis_values.get(record["run_id"], {})
        for key in row_axes:
            record[key] = format_value(axes[key]) if key in axes else "—"
    failed_df = pd.DataFrame.from_records(
        [rec for rec, _ in failed],
        columns=["run_id", "run_name", "cell_id", "cell_name", "config_hash", "model", "model_id", "variant",
                 "arm", "seed", "status", "error", "start_time", "artifact_uri", *row_axes],
    )

    runs_df = pd.DataFrame.from_records(records)
    if runs_df.empty:
        runs_df = pd.DataFrame(columns=["run_id", "model", "variant", "arm", "seed", *row_axes])

    tidy: list[dict[str, Any]] = []
    benchmarks: list[str] = []
    missing_metric: set[str] = set()
    base_cols = ["run_id", "model", "variant", "arm", "seed", *row_axes,
                 "wall_time_s", "mean_step_time_s", "tokens"]
    for record in records:
        for bench, values in evals.get(record["run_id"], {}).items():
            picked = selector.pick(values)
            if picked is None:
                missing_metric.add(bench)
                continue
            name, k = picked
            if bench not in benchmarks:
                benchmarks.append(bench)
            row = {c: record.get(c) for c in base_cols}
            row.update(
                benchmark=bench,
                metric=name,
                k=k,
                score=float(values[name]),
                n_problems=values.get("n", math.nan),
            )
            row.update({f"eval/{m}": v for m, v in values.items() if m != "n"})
            tidy.append(row)
    frame = pd.DataFrame.from_records(tidy)
    if frame.empty:
        frame = pd.DataFrame(columns=[*base_cols, "benchmark", "metric", "k", "score", "n_problems"])
    for bench in sorted(missing_metric - set(benchmarks)):
        notes.append(f"benchmark {bench}: no metric matching {selector.spec!r}")

    sweep_name = sweep if sweep is not None else (max(sweeps, key=sweeps.get) if sweeps else "")
    if len([s for s in sweeps if s]) > 1 and sweep is None:
        notes.append(f"runs of several sweeps in this experiment: {', '.join(sorted(s for s in sweeps if s))}")
    if skipped.get("SHORT"):
        notes.append(
            f"{skipped['SHORT']} run(s) marked FINISHED trained fewer steps than asked: left out of the "
            "tables, listed as failed"
        )
    if skipped.get("DUPLICATE"):
        notes.append(f"{skipped['DUPLICATE']} older finished run(s) of the same cell ignored (the newest counts)")
    unknown = sorted(set(runs_df["arm"]) - set(ARMS)) if not runs_df.empty else []
    if unknown:
        notes.append(f"unknown arm(s) {', '.join(unknown)} listed after the standard ones")
    return RunSet(
        uri="",
        experiment="",
        experiment_id="",
        sweep=sweep_name,
        parent_run_id=None,
        metric=selector,
        runs=runs_df,
        frame=frame,
        row_axes=row_axes,
        benchmarks=_order_benchmarks(benchmarks),
        notes=notes,
        skipped=skipped,
        artifact_uris=artifact_uris,
        failed=failed_df,
    )


def _short_of(tags: Mapping[str, str]) -> str | None:
    """``trained N of M steps`` when the run's ``progress`` tag says it stopped below
    ``train.max_steps`` (a finished run always ends at ``M/M``); None otherwise."""
    done, _, total = (tags.get(Tag.PROGRESS) or "").partition("/")
    try:
        steps, max_steps = int(done), int(total)
    except ValueError:
        return None
    return f"trained {steps} of {max_steps} steps" if steps < max_steps else None


def _failed_record(run: Any, status: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(record, grid axes) of a FAILED or KILLED run, for the report's failed rows."""
    tags = run.data.tags
    params = run.data.params
    error_lines = [line.strip() for line in (tags.get(Tag.ERROR) or "").splitlines() if line.strip()]
    try:
        axes = json.loads(tags.get(Tag.AXES) or "{}")
    except json.JSONDecodeError:
        axes = {}
    record = {
        "run_id": run.info.run_id,
        "run_name": tags.get(Tag.RUN_NAME, run.info.run_name or ""),
        "cell_id": tags.get(Tag.CELL_ID, ""),
        "cell_name": tags.get(Tag.CELL_NAME, ""),
        "config_hash": tags.get(Tag.CONFIG_HASH, ""),
        "model": model_short_name(tags.get(Tag.MODEL) or params.get("model.name") or "?"),
        "model_id": tags.get(Tag.MODEL) or params.get("model.name") or "?",
        "variant": tags.get(Tag.VARIANT) or params.get("variant") or "?",
        "arm": _arm_of(tags, params),
        "seed": _seed_of(tags, params),
        "status": status,
        "error": error_lines[-1][:300] if error_lines else "",
        "start_time": run.info.start_time / 1000 if run.info.start_time else 0.0,
        "artifact_uri": run.info.artifact_uri,
    }
    return record, axes if isinstance(axes, dict) else {}


_BENCH_ORDER = ("math500", "amc23", "aime24", "aime25")


def _order_benchmarks(names: list[str]) -> list[str]:
    """The paper's order first (MATH500, AMC23, AIME24, AIME25), then the others sorted."""
    known = [b for b in _BENCH_ORDER if b in names]
    return known + sorted(b for b in names if b not in known)


# --------------------------------------------------------------------------- histories


def _bulk_history(client: Any, run_ids: list[str], key: str) -> list[tuple[str, int, float]] | None:
    """One query for a metric of many runs, where the store has one (SQL stores)."""
    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    bulk = getattr(store, "get_metric_history_bulk", None)
    if bulk is None:
        return None
    out: list[tuple[str, int, float]] = []
    try:
        for i in range(0, len(run_ids), 500):
            chunk = run_ids[i : i + 500]
            for item in bulk(chunk, key, 10_000_000):
                metric = getattr(item, "metric", item)  # MetricWithRunId is a Metric with run_id
                out.append((item.run_id, int(metric.step), float(metric.value)))
    except Exception:  # noqa: BLE001 - private API changed: the public path below works
        return None
    return out


def load_curves(run_set: RunSet, metrics: Sequence[str] = CURVE_METRICS, *, threads: int = 8) -> pd.DataFrame:
    """Histories of ``metrics`` for the finished runs: columns run_id, metric, step, value.

    Only metrics a run logged (its latest values say so) are fetched: one bulk query per
    metric on SQL stores, else ``get_metric_history`` per run and metric in threads.
    """
    import pandas as pd

    client = run_set.client
    wanted: list[tuple[str, str]] = []  # (run_id, metric) fetched one by one
    present: dict[str, list[str]] = {}
    for m in metrics:
        col = f"final/{m}"
        if col in run_set.runs.columns:
            present[m] = list(run_set.runs.loc[run_set.runs[col].notna(), "run_id"])
        else:
            present[m] = list(run_set.runs["run_id"])
    rows: list[tuple[str, str, int, float]] = []
    for m, run_ids in present.items():
        if not run_ids:
            continue
        with _gc_paused():
            bulk = _bulk_history(client, run_ids, m)
        if bulk is not None:
            rows.extend((rid, m, step, value) for rid, step, value in bulk)
        else:
            wanted.extend((rid, m) for rid in run_ids)
    if wanted:
        def fetch(item: tuple[str, str]) -> list[tuple[str, str, int, float]]:
            rid, m = item
            return [(rid, m, int(x.step), float(x.value)) for x in client.get_metric_history(rid, m)]

        with ThreadPoolExecutor(max_workers=threads) as pool:
            for chunk in pool.map(fetch, wanted):
                rows.extend(chunk)
    return pd.DataFrame(rows, columns=["run_id", "metric", "step", "value"])


def _isnan(value: Any) -> bool:
    try:
        return value is None or math.isnan(float(value))
    except (TypeError, ValueError):
        return True


# --------------------------------------------------------------------------- per-problem results


def _read_eval_json(client: Any, artifact_uri: str, run_id: str, tmp: str) -> dict[str, Any] | None:
    parsed = urllib.parse.urlparse(artifact_uri)
    try:
        if parsed.scheme in ("file", ""):
            path = Path(urllib.request.url2pathname(parsed.path)) / EVAL_FILE
            if not path.is_file():
                return None
        else:
            import mlflow.artifacts

            dst = Path(tmp) / run_id
            path = Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=f"{artifact_uri.rstrip('/')}/{EVAL_FILE}", dst_path=str(dst)
                )
            )
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except Exception:  # noqa: BLE001 - a missing or unreadable artifact: no paired test for it
        return None
    return data if isinstance(data, dict) else None


def load_problem_scores(run_set: RunSet, *, threads: int = 8) -> pd.DataFrame:
    """Per-problem scores of every finished run from its ``eval.json`` artifact.

    Columns: run_id, benchmark, problem_id, score (the chosen metric for that problem,
    e.g. the share of its k samples that were correct for avg@k).
    """
    import pandas as pd

    ks = {}
    if not run_set.frame.empty:
        for bench, k in run_set.frame.groupby("benchmark")["k"].max().items():
            ks[bench] = None if _isnan(k) else int(k)
    scorers = {b: run_set.metric.problem_score(k) for b, k in ks.items()}
    run_ids = list(run_set.runs["run_id"])
    rows: list[tuple[str, str, str, float]] = []
    with tempfile.TemporaryDirectory(prefix="bicc-report-") as tmp, _gc_paused():
        def fetch(rid: str) -> list[tuple[str, str, str, float]]:
            data = _read_eval_json(run_set.client, run_set.artifact_uris.get(rid, ""), rid, tmp)
            if not data:
                return []
            out = []
            for p in data.get("problems") or []:
                bench = p.get("benchmark")
                scorer = scorers.get(bench)
                if scorer is None:
                    continue
                value = scorer(p)
                if value is not None:
                    out.append((rid, bench, str(p.get("problem_id", p.get("doc_id"))), float(value)))
            return out

        if any(scorers.values()):
            local = all(
                urllib.parse.urlparse(run_set.artifact_uris.get(r, "")).scheme in ("file", "")
                for r in run_ids
            )
            if local or threads <= 1:
                for rid in run_ids:
                    rows.extend(fetch(rid))
            else:
                with ThreadPoolExecutor(max_workers=threads) as pool:
                    for chunk in pool.map(fetch, run_ids):
                        rows.extend(chunk)
    return pd.DataFrame(rows, columns=["run_id", "benchmark", "problem_id", "score"])
