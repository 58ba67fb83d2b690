"""``tune best``: is the best trial told apart from the runner-up, or only ranked above it?

Each trial is one run (one seed) scored on n problems. The study ranks trials by that one
number; two trials whose scores differ by less than the scores' problem-sampling error
(``bicc_lab.stats.gaps``) are not distinguished by it. A gap larger than that error is
necessary but not sufficient: the seed-to-seed spread of a run (a few points on the
quickstart) is not measured by one run per trial, and only more seeds of both settings
(a sweep with ``seeds:``) can show it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from bicc_lab.stats.gaps import score_gap_bound

__all__ = ["RunnerUp", "compare_best", "objective_scale", "objective_unit", "runner_up"]


def objective_scale(objective_key: str) -> float:
    """What the study's values are multiplied by when shown: 100 for an eval score (avg@k,
    pass@k, maj@k: the study keeps fractions, every output shows points), else 1."""
    from bicc_lab.tracking.naming import is_score_key
    from bicc_lab.units import SCORE_SCALE

    return SCORE_SCALE if is_score_key(objective_key) else 1.0


def objective_unit(objective_key: str) -> str | None:
    """``"percent"`` for an eval score objective, None for a metric in its own unit."""
    from bicc_lab.units import SCORE_UNIT

    return SCORE_UNIT if objective_scale(objective_key) != 1.0 else None


@dataclass(frozen=True)
class RunnerUp:
    """The runner-up trial, the gap to the best, and the verdict on it."""

    trial: int
    value: float
    gap: float  # |best − runner-up|, in the objective's units
    bound: float | None  # the problem-sampling half-width of the gap (95%); None: not known
    distinguishable: bool | None  # None: no noise estimate for this objective
    verdict: str

    def as_dict(self, scale: float = 1.0) -> dict[str, Any]:
        """JSON-able; ``value``, ``gap`` and ``bound`` times ``scale`` (100: in points)."""
        out = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}
        for key in ("value", "gap", "bound"):
            if isinstance(out[key], float):
                out[key] = round(out[key] * scale, 9)
        return out


def runner_up(trials: Sequence[Any], best: Any, direction: str) -> Any | None:
    """The best complete trial whose parameters differ from ``best``'s (a retried or
    duplicated trial with the same parameters is the same setting, not a runner-up)."""
    others = [t for t in trials if t.number != best.number and t.params != best.params and t.value is not None]
    if not others:
        return None
    pick = max if direction == "maximize" else min
    return pick(others, key=lambda t: t.value)


def compare_best(
    best_value: float,
    runner: Any,
    objective_key: str,
    problems_of: Callable[[Any], tuple[int | None, int | None]],
) -> RunnerUp:
    """The verdict on best vs ``runner``; ``problems_of(runner)`` gives the problem counts
    (best's, runner's) of an eval objective, None where unknown."""
    gap = abs(best_value - runner.value)
    is_eval_score = objective_key.startswith("eval/") and any(
        f"/{family}_at_" in objective_key for family in ("avg", "pass", "maj")
    )
    if not is_eval_score:
        return RunnerUp(runner.number, runner.value, gap, None, None,
                        f"runner-up trial {runner.number} is {gap:.4g} behind; a training metric has no "
                        "noise estimate from one run: compare both settings on more seeds")
    n_best, n_runner = problems_of(runner)
    if not n_best or not n_runner or not (0 <= best_value <= 1 and 0 <= runner.value <= 1):
        return RunnerUp(runner.number, runner.value, gap, None, None,
                        f"runner-up trial {runner.number} is {gap:.4g} behind; the problem counts are not "
                        "logged, so its noise is not known")
    bound = score_gap_bound(best_value, n_best, runner.value, n_runner)
    if gap <= bound:
        verdict = (f"not distinguishable from runner-up trial {runner.number}: the gap {gap * 100:.1f} points "
                   f"is within the ±{bound * 100:.1f} the scores' {n_best}-problem sampling alone allows (95%)")
        return RunnerUp(runner.number, runner.value, gap, bound, False, verdict)
    verdict = (f"ahead of runner-up trial {runner.number} by {gap * 100:.1f} points, more than the "
               f"±{bound * 100:.1f} of problem sampling (95%); one seed per trial does not measure seed "
               "noise: confirm both settings on more seeds")
    return RunnerUp(runner.number, runner.value, gap, bound, True, verdict)
