"""The adaptive seed policy of a sweep (``seeds:``): which rows still need seeds, and why.

A row is one model × variant (× any other axis but the arm and the seed). Every row starts
with the grid's seeds; after each batch has finished, each comparison of the row (an arm
against the baseline, on one benchmark's metric) gets the anytime-valid interval of
``bicc_lab.stats.sequential`` over its per-seed paired differences, at level
α / (number of comparisons in the sweep) so that the family-wise error rate over the
whole sweep and every look stays at most α (Bonferroni over comparisons; the confidence
sequence covers the looks). A comparison is resolved when its interval excludes 0 or its
half-width is at most ``seeds.half_width_points`` (points; the older ``half_width``: a fraction); a row is closed when all its comparisons are,
or at ``seeds.max`` seeds; otherwise it gets the next ``seeds.batch`` seeds.

The decisions are a function of the finished results alone: ``sweep run`` after a crash,
``plan`` and ``status`` all replay them from the start (min seeds, then each batch in seed
order) and land on the same seed counts. Batches run to completion before a decision, so
the policy is the same under every launcher and ``--max-parallel``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from bicc_lab.spec.seeds import SeedPolicy
from bicc_lab.stats.sequential import SequentialCI, confidence_sequence, judge

__all__ = [
    "AT_MAX",
    "BLOCKED",
    "NOT_COMPARED",
    "RESOLVED",
    "WAITING",
    "ComparisonResult",
    "PolicyState",
    "RowDecision",
    "decide_row",
    "judge",
    "policy_state",
    "resolve_benchmark",
    "row_key",
    "run_rounds",
    "widened",
]

RESOLVED = "resolved"  # every comparison of the row resolved
AT_MAX = "at max"  # seeds.max spent with a comparison still open
# cells of the row's current seeds have not finished (after an open look: the next batch)
WAITING = "waiting"
BLOCKED = "blocked"  # a cell of the row's current seeds failed (or logged no such metric)
NOT_COMPARED = "not compared"  # the row lacks the baseline or every compared arm

#: Axes that tell the cells of one row apart rather than rows apart.
WITHIN_ROW_AXES = ("seed", "bicc.enabled", "rcc.enabled")


@dataclass(frozen=True)
class ComparisonResult:
    """One arm against the baseline in one row, at the row's last complete look."""

    arm: str
    diffs: tuple[float, ...]  # arm − baseline per seed, in seed order
    ci: SequentialCI | None  # None before the first complete look
    state: str  # "excludes 0", "narrow" or "open"

    @property
    def resolved(self) -> bool:
        return self.state != "open"


@dataclass(frozen=True)
class RowDecision:
    """What the policy decided for one row: its seed count now, and why."""

    row: str
    n_seeds: int  # seeds the row runs now (its cells below this count are needed)
    status: str  # RESOLVED, AT_MAX, WAITING or BLOCKED
    reason: str
    comparisons: tuple[ComparisonResult, ...] = ()

    @property
    def closed(self) -> bool:
        return self.status in (RESOLVED, AT_MAX)


def _describe(result: ComparisonResult, scale: float = 100.0) -> str:
    ci = result.ci
    if ci is None:
        return f"+{result.arm}: no interval yet"
    if math.isinf(ci.half_width):
        where = f"interval unbounded at {ci.n} seeds"
    else:
        where = f"Δ {ci.mean * scale:+.1f} [{ci.low * scale:+.1f}, {ci.high * scale:+.1f}]"
    return f"+{result.arm}: {where}, {result.state}"


def decide_row(
    row: str,
    values: Mapping[str, Sequence[float | None]],
    policy: SeedPolicy,
    alpha_each: float,
) -> RowDecision:
    """Replay the policy for one row.

    ``values[arm][i]``: the metric of that arm at the i-th seed of ``policy.seeds(max)``;
    None while that cell has not finished, NaN when it failed or logged no such metric.
    """
    looks = policy.looks()
    arms = [a for a in policy.arms if a in values]
    base = values.get(policy.baseline, [])
    results: tuple[ComparisonResult, ...] = ()
    # the running intersection over the looks so far, per arm (running_confidence_sequence,
    # kept here look by look: each look's interval is computed once)
    bounds = {arm: (-math.inf, math.inf) for arm in arms}
    for n in looks:
        needed = [base[:n]] + [values[a][:n] for a in arms]
        missing = sum(1 for column in needed for v in column if v is None) + sum(
            max(0, n - len(column)) for column in needed
        )
        if any(v is not None and math.isnan(v) for column in needed for v in column):
            return RowDecision(row, n, BLOCKED, f"a cell of the first {n} seeds failed or has no metric", results)
        if missing:
            why = f"{missing} cell(s) of the first {n} seeds not finished"
            if results:  # an earlier look left comparisons open: that is why these seeds were added
                why = f"open at {results[0].ci.n} seeds, so +{n - results[0].ci.n}; {why}"
            return RowDecision(row, n, WAITING, why, results)
        now = []
        for arm in arms:
            diffs = tuple(float(a) - float(b) for a, b in zip(values[arm][:n], base[:n], strict=True))
            look = confidence_sequence(diffs, alpha_each)
            low, high = max(bounds[arm][0], look.low), min(bounds[arm][1], look.high)
            if low > high:  # (as running_confidence_sequence: data against the model; keep the look)
                low, high = look.low, look.high
            bounds[arm] = (low, high)
            ci = SequentialCI(look.mean, low, high, look.n, look.sd, alpha_each)
            now.append(ComparisonResult(arm, diffs, ci, judge(ci, policy.half_width)))
        results = tuple(now)
        still_open = [r for r in results if not r.resolved]
        if not still_open:
            return RowDecision(row, n, RESOLVED, f"every comparison resolved at {n} seeds", results)
        if n >= policy.max:
            shown = "; ".join(_describe(r) for r in still_open)
            return RowDecision(row, n, AT_MAX, f"seeds.max = {n} spent with {shown}", results)
    raise AssertionError("looks end at seeds.max")  # (the loop returns at the last look)


def row_key(cell: Any) -> tuple[tuple[str, str], ...]:
    """The cell's row: model, variant and every other axis but the arm's and the seed."""
    from bicc_lab.spec.grid import format_value, model_short_name

    key = [("model", model_short_name(cell.config.model.name)), ("variant", cell.config.variant)]
    for axis, value in cell.axes.items():
        if axis not in WITHIN_ROW_AXES and axis not in ("model.name", "variant"):
            key.append((axis, format_value(value)))
    return tuple(key)


def row_label(key: tuple[tuple[str, str], ...]) -> str:
    """``tiny/grpo``, then ``key=value`` for the other axes."""
    rest = " ".join(f"{k}={v}" for k, v in key[2:])
    return f"{key[0][1]}/{key[1][1]}" + (f" {rest}" if rest else "")


@dataclass
class PolicyState:
    """The policy replayed over a sweep loaded with ``seeds.max`` seeds (see :func:`widened`)."""

    policy: SeedPolicy
    alpha_each: float
    rows: list[RowDecision]
    needed: list[Any]  # the cells each row runs now (seeds below its n_seeds), expansion order
    n_comparisons: int = 1  # what α is split over

    def lines(self, scale: float = 100.0) -> list[str]:
        """One line per row, then one per comparison (for plan, status and run)."""
        p = self.policy
        out = [
            f"seed policy: {p.min} to {p.max} seeds per row, +{p.batch} at a time; "
            f"{p.metric} on {p.benchmark}; resolved when a (1 − α) anytime-valid interval "
            f"excludes 0 or is at most ±{p.half_width * scale:g} points; α = {p.alpha:g} over "
            f"{self.n_comparisons} comparison(s) (each at {self.alpha_each:.2g})"
        ]
        for row in self.rows:
            out.append(f"  {row.row}: {row.n_seeds} seeds, {row.status} ({row.reason})")
            out.extend(f"    {_describe(r, scale)}" for r in row.comparisons)
        return out

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (``--json``): differences and their bounds in points, as every score."""
        from bicc_lab.units import SCORE_SCALE, SCORE_UNIT

        def points(x: float | None) -> float | None:
            return None if x is None else round(x * SCORE_SCALE, 6)

        return {
            "score_unit": SCORE_UNIT,
            "half_width": points(self.policy.half_width),
            "alpha": self.policy.alpha,
            "alpha_each": self.alpha_each,
            "rows": [
                {
                    "row": r.row,
                    "n_seeds": r.n_seeds,
                    "status": r.status,
                    "reason": r.reason,
                    "comparisons": [
                        {
                            "arm": c.arm,
                            "state": c.state,
                            "diff": points(c.ci.mean) if c.ci else None,
                            "low": points(c.ci.low) if c.ci and math.isfinite(c.ci.low) else None,
                            "high": points(c.ci.high) if c.ci and math.isfinite(c.ci.high) else None,
                        }
                        for c in r.comparisons
                    ],
                }
                for r in self.rows
            ],
        }


def policy_state(sweep: Any, statuses: Sequence[Any]) -> PolicyState:
    """Replay the policy of ``sweep`` (loaded with ``seeds.max`` seeds) over its cells' states."""
    from bicc_lab.sweep import state as st
    from bicc_lab.tracking.naming import eval_metric_key

    policy: SeedPolicy = sweep.seed_policy
    key = eval_metric_key(policy.benchmark, policy.metric)
    seeds = policy.seeds(policy.max)
    index = {seed: i for i, seed in enumerate(seeds)}
    values: dict[tuple, dict[str, list[float | None]]] = {}
    cells: dict[tuple, list[tuple[int, Any]]] = {}
    for s in statuses:
        cell = s.cell
        i = index.get(cell.config.seed)
        if i is None:
            continue
        row = row_key(cell)
        column = values.setdefault(row, {}).setdefault(cell.arm, [None] * len(seeds))
        if s.state == st.FINISHED:
            metric = s.run.metrics.get(key) if s.run is not None else None
            column[i] = float(metric) if metric is not None else math.nan
        elif s.state == st.FAILED:
            column[i] = math.nan
        cells.setdefault(row, []).append((i, cell))
    def compared(by_arm: dict[str, Any]) -> list[str]:
        return [a for a in policy.arms if a in by_arm] if policy.baseline in by_arm else []

    # Bonferroni over the comparisons that exist (an exclude rule can drop an arm of a row)
    n_comparisons = max(1, sum(len(compared(by_arm)) for by_arm in values.values()))
    alpha_each = policy.alpha / n_comparisons
    rows = []
    needed_ids: set[str] = set()
    for row, by_arm in values.items():
        if not compared(by_arm):  # nothing to decide: the row runs the grid's seeds only
            why = f"no '{policy.baseline}' cell" if policy.baseline not in by_arm else "no compared arm"
            decision = RowDecision(row_label(row), policy.min, NOT_COMPARED, f"{why} in this row")
        else:
            decision = decide_row(row_label(row), by_arm, policy, alpha_each)
        rows.append(decision)
        needed_ids.update(c.cell_id for i, c in cells[row] if i < decision.n_seeds)
    needed = [s.cell for s in statuses if s.cell.cell_id in needed_ids]
    return PolicyState(policy, alpha_each, rows, needed, n_comparisons)


def resolve_benchmark(sweep: Any) -> Any:
    """``sweep`` with its policy's benchmark under the name its metrics are logged with
    (``arith_test`` -> ``arith``).

    Raises:
        SpecError: the benchmark is not one the cells evaluate.
    """
    from bicc_lab.eval.data import EvalDataError, get_benchmark
    from bicc_lab.spec.errors import Loc, SpecError

    def logged(name: str) -> str:
        try:
            return get_benchmark(name).name
        except EvalDataError:
            return name

    policy: SeedPolicy = sweep.seed_policy
    evaluated = {logged(b) for b in policy.benchmarks}
    if logged(policy.benchmark) not in evaluated:
        raise SpecError(
            f"seeds.benchmark '{policy.benchmark}' is not evaluated by this sweep",
            Loc(file=str(sweep.path)),
            key="seeds.benchmark",
            hint="eval.benchmarks: " + ", ".join(policy.benchmarks),
        )
    return replace(sweep, seed_policy=replace(policy, benchmark=logged(policy.benchmark)))


def widened(sweep: Any) -> Any:
    """``sweep`` loaded again with every seed up to ``seeds.max`` on its seed axis (cell ids
    are hashes of the resolved configs, so a cell's id is the same in every widening).

    Raises:
        SpecError: e.g. the widened grid is over ``max_cells``.
    """
    from bicc_lab.spec.load import Override, load_sweep

    policy = sweep.seed_policy
    extra = [
        Override(key="grid.seed", value=policy.seeds(policy.max)),
        Override(key="seeds.min", value=policy.max),  # (the block checked against the wider axis)
    ]
    full = load_sweep(sweep.path, [*sweep.overrides, *extra])
    # rows still start with the grid's own seeds
    return resolve_benchmark(replace(full, seed_policy=policy))


def read_policy_state(ctx: Any, full: Any) -> PolicyState:
    """The policy over the store's runs (``full``: the widened sweep of ``ctx``)."""
    from bicc_lab.sweep import state as st

    full_ctx = replace(ctx, sweep=full)
    return policy_state(full, st.cell_statuses(full, ctx.runs_dir, full_ctx.read_runs()))


def run_with_policy(ctx: Any, full: Any, *, console: Any, **run_kwargs: Any) -> Any:
    """``sweep run`` of a sweep with ``seeds:``: :func:`run_rounds` over ``run_sweep``,
    each round on the cells the policy needs now; the rounds' outcomes merged into one."""
    from bicc_lab.sweep.runner import SweepOutcome, run_sweep

    def run_round(cells: list[Any]) -> Any:
        return run_sweep(replace(ctx, sweep=replace(full, cells=cells)), console=console, **run_kwargs)

    def say(line: str) -> None:
        console.print(line, markup=False, highlight=False, soft_wrap=True)

    outcomes = run_rounds(run_round, lambda: read_policy_state(ctx, full), say)
    merged = SweepOutcome(already=list(outcomes[0].already))
    for outcome in outcomes:
        merged.finished += outcome.finished
        merged.failed.update(outcome.failed)
        merged.failed_before.update(outcome.failed_before)
        merged.killed += outcome.killed
        merged.killed_why.update(outcome.killed_why)
        merged.interrupted |= outcome.interrupted
        merged.seconds += outcome.seconds
    merged.elsewhere = list(outcomes[-1].elsewhere)
    merged.left_running = outcomes[-1].left_running
    return merged


def run_rounds(
    run_round: Callable[[list[Any]], Any],
    read_state: Callable[[], PolicyState],
    say: Callable[[str], None],
) -> list[Any]:
    """Run the needed cells, decide, run the added ones, ... until nothing changes.

    ``run_round(cells)`` runs one batch to completion (``run_sweep`` over those cells) and
    returns its outcome; ``read_state()`` replays the policy over the store. Stops when
    the set of needed cells no longer grows (every row closed, waiting or blocked), or
    when a round was interrupted or left jobs in a queue.
    """
    outcomes = []
    ran: set[str] | None = None
    while True:
        state = read_state()
        ids = {c.cell_id for c in state.needed}
        if ran is not None:
            for line in state.lines():
                say(line)
            if ids <= ran:
                return outcomes
        outcome = run_round(state.needed)
        outcomes.append(outcome)
        ran = ids
        if getattr(outcome, "interrupted", False) or getattr(outcome, "left_running", 0):
            for line in read_state().lines():
                say(line)
            return outcomes
