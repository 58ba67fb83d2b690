"""The ablation, significance and cost tables, as data (rendering lives in ``render``).

Rows are base model × variant (× any other grid axis), columns benchmark × (the starting
model, then each arm) plus an average over benchmarks. A cell is the mean over seeds with
a 95% interval (a t-interval with three seeds or more; with fewer, a percentile bootstrap
over problems and seeds, when per-problem results exist), clipped to the metric's range;
its Δ against the baseline arm of the same row and benchmark; and (when per-problem
results exist) the paired bootstrap of the arm against that baseline. Runs that failed
keep their row: a cell with no finished seed but a failed run reads "failed".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from bicc_lab.report.stats import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    CONFIDENCE,
    MIN_SEEDS_FOR_T,
    BootstrapResult,
    MeanCI,
    bootstrap_mean_ci,
    clip_ci,
    mean_ci,
    paired_bootstrap_many,
)
from bicc_lab.spec.models import ARMS

if TYPE_CHECKING:
    import pandas as pd

    from bicc_lab.report.data import RunSet

__all__ = [
    "ARM_LABELS",
    "AVERAGE",
    "AblationTable",
    "Cell",
    "arm_label",
    "build_ablation",
    "build_cost",
    "order_arms",
]

AVERAGE = "average"
START = "start"  # the column of the model before training
#: Metric families that are shares of problems: their intervals are clipped to [0, 1].
SHARE_FAMILIES = ("avg", "pass", "maj")
ARM_LABELS = {"base": "baseline", "rcc": "+RCC", "bicc": "+BICC", "bicc+rcc": "+BICC+RCC"}
RowKey = tuple[str, ...]


def arm_label(arm: str) -> str:
    return ARM_LABELS.get(arm, arm)


def metric_family(metric: str) -> str:
    """``avg`` of ``avg@4`` / ``avg_at_k`` / ``avg_at_4``."""
    return metric.replace("@", "_at_").split("_at_")[0]


def metric_bounds(metric: str) -> tuple[float | None, float | None]:
    """The range a metric's values live in: [0, 1] for avg@k, pass@k, maj@k; else open."""
    return (0.0, 1.0) if metric_family(metric) in SHARE_FAMILIES else (None, None)


def order_arms(arms: Sequence[str], baseline: str = "base") -> list[str]:
    """The baseline first, then the standard arms in order, then any other arm sorted."""
    present = list(dict.fromkeys(arms))
    out = [baseline] if baseline in present else []
    out += [a for a in ARMS if a in present and a not in out]
    out += sorted(a for a in present if a not in out)
    return out


@dataclass
class Cell:
    """One (row, benchmark, arm) cell of the ablation table."""

    row: RowKey
    benchmark: str
    arm: str
    stat: MeanCI
    seeds: tuple[int, ...]
    delta: float | None = None  # mean - baseline mean (None for the baseline / no baseline)
    best: bool = False
    test: BootstrapResult | None = None  # paired bootstrap vs the baseline
    test_seeds: tuple[int, ...] = ()  # the seeds both arms share (the test's pairing)

    @property
    def mean(self) -> float:
        return self.stat.mean


@dataclass
class AblationTable:
    row_keys: list[str]  # column names of a row key: model, variant, other axes
    rows: list[RowKey]
    benchmarks: list[str]  # without AVERAGE
    arms: list[str]
    baseline: str
    metric: str  # what the cells hold, e.g. avg_at_k
    cells: dict[tuple[RowKey, str, str], Cell] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    confidence: float = CONFIDENCE
    n_resamples: int = BOOTSTRAP_RESAMPLES
    tested: bool = False  # paired bootstrap ran (per-problem results were loaded)
    metric_names: dict[str, str] = field(default_factory=dict)  # benchmark -> logged metric, e.g. avg_at_4
    start: dict[tuple[RowKey, str], float] = field(default_factory=dict)  # (row, benchmark) -> score before training
    failed: dict[tuple[RowKey, str], list[str]] = field(default_factory=dict)  # (row, arm) -> "seed 1 FAILED", ...
    failed_runs: pd.DataFrame | None = None  # one line per failed run: keys, arm, seed, status, error
    open_rows: set[RowKey] = field(default_factory=set)  # a comparison still open (report.detect)

    @property
    def ci_methods(self) -> set[str]:
        """How the shown intervals were made: {"t", "bootstrap"} or a part of it."""
        return {c.stat.method for c in self.cells.values() if c.stat.has_ci}

    def failed_label(self, row: RowKey, arm: str) -> str | None:
        """"failed" (or "killed") for a (row, arm) with failed runs, None otherwise."""
        items = self.failed.get((row, arm))
        if not items:
            return None
        states = {i.rsplit(" ", 1)[-1].lower() for i in items}
        return "failed" if "failed" in states or len(states) > 1 else next(iter(states))

    def below_start(self, cell: Cell) -> bool:
        start = self.start.get((cell.row, cell.benchmark))
        return start is not None and not math.isnan(cell.stat.mean) and cell.stat.mean < start - 1e-12

    @property
    def columns(self) -> list[str]:
        """Benchmarks, then the average column when there is more than one benchmark."""
        return [*self.benchmarks, AVERAGE] if len(self.benchmarks) > 1 else list(self.benchmarks)

    def cell(self, row: RowKey, benchmark: str, arm: str) -> Cell | None:
        return self.cells.get((row, benchmark, arm))

    def to_frame(self) -> pd.DataFrame:
        """Long format: one line per row × benchmark × arm (missing cells included, NaN)."""
        import pandas as pd

        records = []
        for row in self.rows:
            for bench in self.columns:
                for arm in self.arms:
                    c = self.cell(row, bench, arm)
                    rec: dict[str, Any] = dict(zip(self.row_keys, row, strict=True))
                    rec.update(benchmark=bench, arm=arm, metric=self.metric_names.get(bench, self.metric))
                    failed = self.failed.get((row, arm), [])
                    if c is None:
                        rec.update(status=self.failed_label(row, arm) or "missing",
                                   n_seeds=0, seeds="", mean=math.nan, ci_low=math.nan,
                                   ci_high=math.nan, ci_method="", std=math.nan, delta=math.nan, best=False,
                                   p_value=math.nan, diff_ci_low=math.nan, diff_ci_high=math.nan)
                    else:
                        rec.update(
                            status="finished",
                            n_seeds=c.stat.n,
                            seeds=" ".join(str(s) for s in c.seeds),
                            mean=c.stat.mean,
                            ci_low=c.stat.low,
                            ci_high=c.stat.high,
                            ci_method=c.stat.method if c.stat.has_ci else "",
                            std=c.stat.std,
                            delta=math.nan if c.delta is None else c.delta,
                            best=c.best,
                            p_value=c.test.p_value if c.test else math.nan,
                            diff_ci_low=c.test.low if c.test else math.nan,
                            diff_ci_high=c.test.high if c.test else math.nan,
                        )
                    rec.update(failed_runs="; ".join(failed), start=self.start.get((row, bench), math.nan))
                    records.append(rec)
        return pd.DataFrame.from_records(records)

    def significance_frame(self) -> pd.DataFrame:
        """The paired tests: one line per row × benchmark × non-baseline arm that has one."""
        import pandas as pd

        records = []
        for (row, bench, arm), c in self.cells.items():
            if c.test is None:
                continue
            rec: dict[str, Any] = dict(zip(self.row_keys, row, strict=True))
            rec.update(
                benchmark=bench, arm=arm, baseline=self.baseline,
                metric=self.metric_names.get(bench, self.metric),
                seeds=" ".join(str(s) for s in c.test_seeds), n_problems=c.test.n_problems,
                diff=c.test.diff, ci_low=c.test.low, ci_high=c.test.high, p_value=c.test.p_value,
                n_resamples=c.test.n_resamples,
            )
            records.append(rec)
        cols = [*self.row_keys, "benchmark", "arm", "baseline", "metric", "seeds", "n_problems",
                "diff", "ci_low", "ci_high", "p_value", "n_resamples"]
        frame = pd.DataFrame.from_records(records, columns=cols)
        if not frame.empty:
            order = {r: i for i, r in enumerate(self.rows)}
            frame["_r"] = [order[tuple(x)] for x in frame[self.row_keys].itertuples(index=False)]
            frame["_b"] = frame["benchmark"].map({b: i for i, b in enumerate(self.columns)})
            frame["_a"] = frame["arm"].map({a: i for i, a in enumerate(self.arms)})
            frame = frame.sort_values(["_r", "_b", "_a"]).drop(columns=["_r", "_b", "_a"]).reset_index(drop=True)
        return frame


def _row_order(row: RowKey) -> tuple:
    """Model, then the variants in registry order (grpo, dr_grpo, dapo, ...), then axes."""
    from bicc_lab.algorithms.registry import VARIANTS

    order = list(VARIANTS)
    variant = row[1] if len(row) > 1 else ""
    rank = order.index(variant) if variant in order else len(order)
    return (row[0], rank, variant, *row[2:])


def _row_label(row: RowKey) -> str:
    return " / ".join(str(x) for x in row)


def _seeds(values: Any) -> tuple[int, ...]:
    return tuple(sorted(int(s) for s in values if s is not None and not _nan(s)))


def _nan(x: Any) -> bool:
    try:
        return math.isnan(float(x))
    except (TypeError, ValueError):
        return False


def _row_of(values: Any) -> RowKey:
    return tuple(str(v) for v in values)


def build_ablation(
    run_set: RunSet,
    *,
    baseline: str = "base",
    problems: pd.DataFrame | None = None,
    start: dict[RowKey, dict[str, float]] | None = None,
    confidence: float = CONFIDENCE,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> AblationTable:
    """Means ± CI over seeds, Δ vs ``baseline``, best cell per row and benchmark, and
    (with ``problems`` from :func:`~bicc_lab.report.data.load_problem_scores`) the paired
    bootstrap of every arm against the baseline of its row, and bootstrap intervals for
    cells with fewer than :data:`MIN_SEEDS_FOR_T` seeds. ``start``: row -> benchmark ->
    score of the model before training (see :mod:`bicc_lab.report.start`)."""
    frame = run_set.frame
    keys = run_set.row_keys
    failed_runs = getattr(run_set, "failed", None)
    row_set: set[RowKey] = set()
    if not run_set.runs.empty:
        row_set |= {_row_of(r) for r in run_set.runs[keys].itertuples(index=False)}
    if failed_runs is not None and not failed_runs.empty:
        row_set |= {_row_of(r) for r in failed_runs[keys].itertuples(index=False)}
    rows: list[RowKey] = sorted(row_set, key=_row_order)
    arm_names = list(run_set.runs["arm"]) if not run_set.runs.empty else []
    if failed_runs is not None and not failed_runs.empty:
        arm_names += list(failed_runs["arm"])
    arms = order_arms(arm_names, baseline)
    if baseline not in arms:
        arms = [baseline, *arms]
    table = AblationTable(
        row_keys=keys, rows=rows, benchmarks=list(run_set.benchmarks), arms=arms,
        baseline=baseline, metric=run_set.metric.spec, notes=[], confidence=confidence,
        n_resamples=n_resamples,
    )
    if failed_runs is not None and not failed_runs.empty:
        table.failed_runs = failed_runs
        for rec in failed_runs.to_dict("records"):
            seed_text = "?" if _nan(rec.get("seed")) or rec.get("seed") is None else str(int(rec["seed"]))
            table.failed.setdefault((_row_of(rec[k] for k in keys), rec["arm"]), []).append(
                f"seed {seed_text} {rec['status']}")
    if frame.empty:
        table.notes.append("no eval metrics in the finished runs: the table is empty")
        table.notes.extend(run_set.notes)
        return table
    table.metric_names = {str(b): str(m) for b, m in frame.groupby("benchmark")["metric"].max().items()}
    low, high = metric_bounds(run_set.metric.spec)
    pivots = _problem_pivots(run_set, problems) if problems is not None and not problems.empty else {}

    # Per-run scores: (row, arm, seed) -> {benchmark: score}
    scores: dict[tuple[RowKey, str], dict[str, dict[int, float]]] = {}
    sub = frame[[*keys, "arm", "seed", "benchmark", "score"]]
    for tup in sub.itertuples(index=False):
        *rk, arm, seed_, bench, score = tup
        row = _row_of(rk)
        scores.setdefault((row, arm), {}).setdefault(bench, {})[int(seed_) if not _nan(seed_) else -1] = float(score)
    benches = table.benchmarks
    for (row, arm), per_bench in scores.items():
        for bench, by_seed in per_bench.items():
            stat = _cell_stat(by_seed, [pivots.get((row, bench, arm))], confidence, n_resamples, seed)
            table.cells[(row, bench, arm)] = Cell(row, bench, arm, clip_ci(stat, low, high), _seeds(by_seed))
        if AVERAGE in table.columns:
            common = set.intersection(*(set(per_bench.get(b, {})) for b in benches))
            if common:
                avg = {s: float(np.mean([per_bench[b][s] for b in benches])) for s in common}
                stat = _cell_stat(avg, [pivots.get((row, b, arm)) for b in benches], confidence, n_resamples, seed)
                table.cells[(row, AVERAGE, arm)] = Cell(row, AVERAGE, arm, clip_ci(stat, low, high), _seeds(avg))

    # Deltas and the best arm of each row and benchmark.
    for row in rows:
        for bench in table.columns:
            base = table.cell(row, bench, baseline)
            present = [c for a in arms if (c := table.cell(row, bench, a)) is not None]
            for c in present:
                if c.arm != baseline and base is not None:
                    c.delta = c.stat.mean - base.stat.mean
            if present:
                top = max(c.stat.mean for c in present)
                for c in present:
                    c.best = math.isclose(c.stat.mean, top, rel_tol=0, abs_tol=1e-12)

    if start:
        _add_start(table, start)
    if problems is not None:
        _add_tests(table, problems, pivots, confidence=confidence, n_resamples=n_resamples, seed=seed)
    _add_notes(table, run_set, scores)
    return table


def _cell_stat(
    by_seed: dict[int, float], pivots: list[pd.DataFrame | None], confidence: float, n_resamples: int, seed: int,
) -> MeanCI:
    """A t-interval over seeds from :data:`MIN_SEEDS_FOR_T` seeds on; below, the bootstrap
    over problems (and seeds) when every seed has per-problem results; else what the seeds
    give (a t-interval of two seeds, no interval for one)."""
    values = list(by_seed.values())
    if len(values) >= MIN_SEEDS_FOR_T:
        return mean_ci(values, confidence)
    seeds = sorted(by_seed)
    strata = []
    for pivot in pivots:
        if pivot is None or not set(seeds) <= set(pivot.columns):
            return mean_ci(values, confidence)
        matrix = pivot[seeds].dropna().to_numpy(dtype=float)
        if matrix.shape[0] == 0:
            return mean_ci(values, confidence)
        strata.append(matrix)
    point = float(np.mean(values))
    return bootstrap_mean_ci(strata, mean=point, n_resamples=n_resamples, confidence=confidence, seed=seed)


def _add_start(table: AblationTable, start: dict[RowKey, dict[str, float]]) -> None:
    for row in table.rows:
        scores = start.get(row) or {}
        for bench in table.benchmarks:
            if bench in scores and not _nan(scores[bench]):
                table.start[(row, bench)] = float(scores[bench])
        if AVERAGE in table.columns and all((row, b) in table.start for b in table.benchmarks):
            table.start[(row, AVERAGE)] = float(np.mean([table.start[(row, b)] for b in table.benchmarks]))


def _problem_pivots(run_set: RunSet, problems: pd.DataFrame) -> dict[tuple[RowKey, str, str], pd.DataFrame]:
    """(row, benchmark, arm) -> per-problem scores, one column per seed."""
    keys = run_set.row_keys
    info = run_set.runs[["run_id", *keys, "arm", "seed"]].copy()
    info["row"] = [_row_of(r) for r in info[keys].itertuples(index=False)]
    merged = problems.merge(info[["run_id", "row", "arm", "seed"]], on="run_id", how="inner")
    if merged.empty:
        return {}
    # One reshape: (row, benchmark, arm, problem) x seed, then a frame per (row, benchmark, arm).
    wide = merged.pivot_table(
        index=["row", "benchmark", "arm", "problem_id"], columns="seed", values="score", aggfunc="mean"
    )
    return {
        key: sub.droplevel([0, 1, 2]).dropna(axis=1, how="all")
        for key, sub in wide.groupby(level=[0, 1, 2], sort=False)
    }


def _add_tests(
    table: AblationTable, problems: pd.DataFrame, pivots: dict[tuple[RowKey, str, str], pd.DataFrame], *,
    confidence: float, n_resamples: int, seed: int,
) -> None:
    """Paired bootstrap over problems: per arm, the per-problem score averaged over the
    seeds both arms have; problems both arms have; one batched bootstrap per problem count."""
    if problems.empty:
        table.notes.append("no per-problem eval results (eval.json artifacts): no paired tests")
        return
    table.tested = True
    pending: dict[int, list[tuple[Cell, np.ndarray, tuple[int, ...]]]] = {}
    for row in table.rows:
        for bench in table.benchmarks:
            base = pivots.get((row, bench, table.baseline))
            if base is None:
                continue
            for arm in table.arms:
                cell = table.cell(row, bench, arm)
                other = pivots.get((row, bench, arm))
                if arm == table.baseline or cell is None or other is None:
                    continue
                seeds = sorted(set(base.columns) & set(other.columns))
                if not seeds:
                    continue
                a = other[seeds].dropna()
                b = base[seeds].dropna()
                common = a.index.intersection(b.index)
                if len(common) == 0:
                    continue
                diff = a.loc[common].mean(axis=1).to_numpy() - b.loc[common].mean(axis=1).to_numpy()
                pending.setdefault(len(common), []).append((cell, diff, tuple(int(s) for s in seeds)))
    for _, items in pending.items():
        matrix = np.column_stack([d for _, d, _ in items])
        results = paired_bootstrap_many(matrix, n_resamples=n_resamples, confidence=confidence, seed=seed)
        for (cell, _, seeds), res in zip(items, results, strict=True):
            cell.test = res
            cell.test_seeds = seeds


def _add_notes(
    table: AblationTable, run_set: RunSet,
    scores: dict[tuple[RowKey, str], dict[str, dict[int, float]]],
) -> None:
    notes = table.notes
    single_rows = []
    for row in table.rows:
        label = _row_label(row)
        row_seeds: set[int] = set()
        for arm in table.arms:
            for by_seed in scores.get((row, arm), {}).values():
                row_seeds |= set(by_seed)
        present = [a for a in table.arms if (row, a) in scores]
        for arm in table.arms:
            if table.failed.get((row, arm)):
                what = ", ".join(table.failed[(row, arm)])
                shown = "the other seeds are shown" if arm in present else f"shown as {table.failed_label(row, arm)}"
                notes.append(f"{label} {arm_label(arm)}: {what} ({shown})")
        missing_arms = [arm_label(a) for a in table.arms if a not in present and not table.failed.get((row, a))]
        if missing_arms:
            notes.append(f"{label}: no finished run of {', '.join(missing_arms)} (shown as —)")
        if present and table.baseline not in present:
            notes.append(f"{label}: no {arm_label(table.baseline)} run, so no Δ and no paired test")
        singles = []
        for arm in present:
            for bench in table.benchmarks:
                c = table.cell(row, bench, arm)
                if c is None:
                    notes.append(f"{label} {arm_label(arm)}: no {bench} result (shown as —)")
                    continue
                if c.stat.n == 1 and not c.stat.has_ci:
                    singles.append(f"{arm_label(arm)} {bench}")
                lacking = sorted(row_seeds - set(c.seeds))
                if lacking and len(row_seeds) > 1:
                    notes.append(
                        f"{label} {arm_label(arm)} {bench}: {c.stat.n} of {len(row_seeds)} seeds "
                        f"(missing seed {', '.join(str(s) for s in lacking)})"
                    )
        if len(row_seeds) == 1:
            single_rows.append(label)
            how = ("intervals from a bootstrap over problems only" if not singles
                   else "means without confidence intervals")
            notes.append(f"{label}: a single seed ({next(iter(row_seeds))}): {how}")
        elif singles:
            notes.append(f"{label}: a single seed for {', '.join(singles)}: mean without a confidence interval")
    if table.rows and len(single_rows) == len(table.rows) and len(table.rows) > 1:
        notes.append("every row has a single seed: run more seeds for intervals that include seed variance")
    notes.extend(run_set.notes)


# --------------------------------------------------------------------------- cost


def build_cost(run_set: RunSet, *, baseline: str = "base") -> pd.DataFrame:
    """Per row × forward path × arm: runs, mean wall time, mean step time, tokens, peak
    memory, and ratios against the baseline arm of the same row *on the same forward path*.

    The forward path (``forward_path``: ``shared``, each distinct prompt of a group once, or
    ``per-sequence``, from ``train.shared_prefix``) changes every arm's cost by itself, so a
    ratio across paths would measure the path, not the arm; an arm whose row has no baseline
    on its path gets no ratio.

    Beside the measured time, a hardware-independent cost: tokens per optimizer step run
    with gradient and in no-grad passes (policy and reference), from the trainer's
    ``tokens/*_per_step`` run means, and their ratios to the baseline arm: gradient tokens,
    and all tokens (gradient + no-grad). Sampled tokens (every rollout generated, DAPO's
    refill rounds included) have a column and a ratio of their own: a sampled token costs a
    decode step, not a share of one batched forward, so adding it to the forward tokens
    would weigh unlike things alike. Peak memory (``perf/peak_memory_mib``: CUDA's peak
    allocation on a GPU, the process's peak resident set on a CPU) and its ratio.
    """
    import pandas as pd

    runs = run_set.runs
    keys = run_set.row_keys
    cols = [*keys, "arm", "forward_path", "runs", "wall_time_s", "mean_step_time_s", "tokens", "tokens_per_s",
            "step_time_ratio", "wall_time_ratio", "grad_tokens_per_step", "nograd_tokens_per_step",
            "grad_token_ratio", "token_ratio", "peak_memory_mib", "memory_ratio",
            "generated_tokens_per_step", "generation_ratio"]
    if runs.empty:
        return pd.DataFrame(columns=cols)
    measured = ["grad_tokens_per_step", "nograd_tokens_per_step", "generated_tokens_per_step", "peak_memory_mib"]
    data = runs[[*keys, "arm", "wall_time_s", "mean_step_time_s", "tokens"]].copy()
    for col in measured:  # runs read before the trainer counted tokens or memory have none
        data[col] = runs[col] if col in runs else math.nan
    data["forward_path"] = runs["forward_path"] if "forward_path" in runs else "per-sequence"
    for k in keys:
        data[k] = data[k].astype(str)
    group_keys = [*keys, "forward_path"]
    grouped = data.groupby([*group_keys, "arm"], sort=False)
    cost = grouped.agg(
        runs=("arm", "size"),
        wall_time_s=("wall_time_s", "mean"),
        mean_step_time_s=("mean_step_time_s", "mean"),
        tokens=("tokens", "mean"),
        grad_tokens_per_step=("grad_tokens_per_step", "mean"),
        nograd_tokens_per_step=("nograd_tokens_per_step", "mean"),
        generated_tokens_per_step=("generated_tokens_per_step", "mean"),
        peak_memory_mib=("peak_memory_mib", "mean"),
    ).reset_index()
    cost["tokens_per_s"] = cost["tokens"] / cost["wall_time_s"]
    cost["all_tokens"] = cost["grad_tokens_per_step"] + cost["nograd_tokens_per_step"]
    base = cost[cost["arm"] == baseline].set_index(group_keys)
    here = [tuple(r) for r in cost[group_keys].itertuples(index=False)]

    def ratio(column: str) -> np.ndarray:
        """The column over the same row's baseline on the same forward path (NaN: none)."""
        reference = [base[column].get(r, math.nan) for r in here]
        return cost[column].to_numpy(dtype=float) / np.asarray(reference, dtype=float)

    cost["step_time_ratio"] = ratio("mean_step_time_s")
    cost["wall_time_ratio"] = ratio("wall_time_s")
    cost["grad_token_ratio"] = ratio("grad_tokens_per_step")
    cost["token_ratio"] = ratio("all_tokens")
    cost["memory_ratio"] = ratio("peak_memory_mib")
    cost["generation_ratio"] = ratio("generated_tokens_per_step")
    arm_order = {a: i for i, a in enumerate(order_arms(list(cost["arm"]), baseline))}
    cost["_a"] = cost["arm"].map(arm_order)
    cost = cost.sort_values([*keys, "forward_path", "_a"]).drop(columns="_a").reset_index(drop=True)
    return cost[cols]
