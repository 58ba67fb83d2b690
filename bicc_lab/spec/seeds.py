"""The ``seeds:`` block of a sweep: add seeds to a row until its comparisons are clear.

::

    grid:
      variant: [grpo, dr_grpo]
      bicc.enabled: [false, true]
      rcc.enabled: [false, true]
      seed: [0, 1]              # the first seeds (as many as seeds.min)
    seeds:
      max: 10                   # never more seeds per row than this
      batch: 2                  # seeds added at a time to a row still open
      half_width_points: 3      # a comparison is also resolved when its interval is this narrow
      benchmark: arith          # the comparisons' metric: eval/<benchmark>/<metric>
      metric: avg@4

The policy itself (rows, decisions, the cells to add) is ``bicc_lab.sweep.seeds``; the
statistics are ``bicc_lab.stats.sequential``. This module holds the schema and the checks
of the block against the grid, so that a mistake stops ``load_sweep`` with one line.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from bicc_lab.spec.errors import Loc, SpecError, show_value

__all__ = ["ARMS", "SeedPolicy", "SeedPolicyConfig", "check_seed_policy", "policy_seeds"]

ARMS: tuple[str, ...] = ("base", "rcc", "bicc", "bicc+rcc")
Arm = Literal["base", "rcc", "bicc", "bicc+rcc"]


class SeedPolicyConfig(BaseModel):
    """Adaptive seeds: run ``min`` seeds per row, then add ``batch`` at a time to each row
    whose comparisons are not yet resolved, up to ``max``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    min: int | None = Field(
        None, ge=2, description="Seeds every row starts with; null: as many as the grid's seed axis lists."
    )
    max: int = Field(..., ge=2, description="The most seeds a row gets.")
    batch: int = Field(2, ge=1, description="Seeds added at a time to a row that is still open.")
    half_width_points: float | None = Field(
        None,
        gt=0,
        description="A comparison is resolved when its interval excludes 0 or is at most this "
        "half-width, in percent points (2: ±2 points), the unit every score is shown in.",
    )
    half_width: float | None = Field(
        None,
        gt=0,
        description="The older spelling of half_width_points, as a fraction (0.02 is 2 points); "
        "sweep files written before scores were shown in points keep their meaning.",
    )
    alpha: float = Field(
        0.05, gt=0, lt=1, description="Family-wise error rate over all comparisons of the sweep."
    )
    baseline: Arm = Field("base", description="The arm each other arm is compared with.")
    arms: list[Arm] | None = Field(
        None, description="Arms compared with the baseline; null: every other arm of the grid."
    )
    benchmark: str | None = Field(
        None, min_length=1, description="Benchmark of the compared metric; null: the first of eval.benchmarks."
    )
    metric: str | None = Field(
        None, min_length=1, description="Metric compared, e.g. avg@4; null: avg@<eval.samples>."
    )

    @model_validator(mode="after")
    def _consistent(self) -> SeedPolicyConfig:
        if (self.half_width is None) == (self.half_width_points is None):
            raise ValueError(
                "seeds needs one of half_width_points (in points, e.g. 3) or half_width "
                "(the older spelling, a fraction, e.g. 0.03)"
            )
        if self.min is not None and self.max < self.min:
            raise ValueError(f"seeds.max ({self.max}) is below seeds.min ({self.min})")
        if self.arms is not None and self.baseline in self.arms:
            raise ValueError(f"seeds.arms lists the baseline '{self.baseline}'")
        return self


@dataclass(frozen=True)
class SeedPolicy:
    """A ``seeds:`` block resolved against its sweep (defaults filled in from the grid)."""

    config: SeedPolicyConfig
    first_seeds: tuple[int, ...]  # the grid's seed axis: every row starts with these
    baseline: str
    arms: tuple[str, ...]  # compared with the baseline, in ARMS order
    benchmark: str  # as written (an alias such as arith_test until resolve_benchmark)
    metric: str  # as written, e.g. avg@4
    benchmarks: tuple[str, ...] = ()  # eval.benchmarks of the cells, as written

    @property
    def min(self) -> int:
        return len(self.first_seeds)

    @property
    def max(self) -> int:
        return self.config.max

    @property
    def batch(self) -> int:
        return self.config.batch

    @property
    def alpha(self) -> float:
        return self.config.alpha

    @property
    def half_width(self) -> float:
        """In fractions, the unit the statistics work in (``half_width_points`` / 100)."""
        if self.config.half_width_points is not None:
            from bicc_lab.units import SCORE_SCALE

            return self.config.half_width_points / SCORE_SCALE
        assert self.config.half_width is not None
        return self.config.half_width

    def seeds(self, n: int) -> list[int]:
        """The first ``n`` seeds of every row."""
        return policy_seeds(list(self.first_seeds), n)

    def looks(self) -> list[int]:
        """The seed counts at which a row is judged: min, min + batch, ..., max."""
        return list(range(self.min, self.max, self.batch)) + [self.max]


def policy_seeds(first: list[int], n: int) -> list[int]:
    """The first ``n`` seeds of a row: the grid's seeds, then counting on from their largest."""
    seeds = list(first[:n])
    nxt = max(first) + 1
    while len(seeds) < n:
        seeds.append(nxt)
        nxt += 1
    return seeds


def check_seed_policy(
    policy: SeedPolicyConfig,
    grid: dict[str, Any],
    arms_present: Iterable[str],
    benchmarks_present: Iterable[str],
    samples: int,
    locs: Any,
    fallback: Loc,
) -> SeedPolicy:
    """Check the block against the grid and resolve its defaults (``samples``: the base's
    eval.samples, for the default metric avg@<samples>).

    Raises:
        SpecError: one line at the offending key of the block.
    """

    def at(*key: str) -> Loc:
        entry = locs.get(("seeds", *key)) or locs.get(("seeds",))
        return (entry.value if key else (entry.key or entry.value)) if entry else fallback

    seeds = grid.get("seed")
    if seeds is None:
        raise SpecError(
            "'seeds' needs 'seed' as a grid axis",
            at(),
            key="seeds",
            hint="list the first seeds there, e.g. grid: {seed: [0, 1]}",
        )
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds) or len(set(seeds)) != len(seeds):
        raise SpecError(
            "with 'seeds', grid.seed must list distinct integers",
            at(),
            key="grid.seed",
            hint=f"got {show_value(seeds)}",
        )
    n_min = policy.min if policy.min is not None else len(seeds)
    if n_min != len(seeds):
        raise SpecError(
            f"seeds.min is {n_min} but grid.seed lists {len(seeds)} seed(s)",
            at("min"),
            key="seeds.min",
            hint="grid.seed lists the seeds every row starts with; make the two agree",
        )
    if n_min < 2:
        raise SpecError(
            "seeds needs at least 2 starting seeds (one seed gives no spread to judge)",
            at(),
            key="grid.seed",
        )
    if policy.max < n_min:
        raise SpecError(
            f"seeds.max ({policy.max}) is below the {n_min} starting seeds",
            at("max"),
            key="seeds.max",
        )
    present = set(arms_present)
    if policy.baseline not in present:
        raise SpecError(
            f"seeds.baseline '{policy.baseline}' is not an arm of this grid",
            at("baseline"),
            key="seeds.baseline",
            hint="arms here: " + ", ".join(a for a in ARMS if a in present),
        )
    for arm in policy.arms or []:
        if arm not in present:
            raise SpecError(
                f"seeds.arms: '{arm}' is not an arm of this grid",
                at("arms"),
                key="seeds.arms",
                hint="arms here: " + ", ".join(a for a in ARMS if a in present),
            )
    if not [a for a in (policy.arms or present) if a != policy.baseline]:  # (the grid has one arm)
        raise SpecError(
            "seeds: no arm to compare with the baseline",
            at(),
            key="seeds",
            hint="vary bicc.enabled or rcc.enabled in the grid",
        )
    benchmarks = list(dict.fromkeys(benchmarks_present))
    if not benchmarks:
        raise SpecError(
            "seeds: the cells evaluate no benchmark to compare on", at(), key="seeds", hint="set eval.benchmarks"
        )
    # (whether seeds.benchmark is one of them, aliases included, is checked where the
    # benchmark registry may be imported: bicc_lab.sweep.seeds.resolve_benchmark)
    benchmark = policy.benchmark or benchmarks[0]
    compared = tuple(a for a in ARMS if a in (policy.arms or present) and a != policy.baseline)
    return SeedPolicy(
        config=policy,
        first_seeds=tuple(seeds),
        baseline=policy.baseline,
        arms=compared,
        benchmark=benchmark,
        metric=policy.metric or f"avg@{samples}",
        benchmarks=tuple(benchmarks),
    )
