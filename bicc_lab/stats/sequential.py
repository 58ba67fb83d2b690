"""An anytime-valid confidence sequence for a mean over seeds, and what it can detect.

The adaptive seed policy (``seeds:`` in a sweep, see ``bicc_lab.sweep.seeds``) looks at the
per-seed paired differences ``d_s = arm_s − baseline_s`` after every batch of seeds and
stops a row when its intervals are clear. Looking repeatedly at a fixed-n t-interval and
stopping when it excludes 0 inflates the false-positive rate far above α (optional
stopping), so the interval here is one that stays valid at every n at once.

Lai's (1976) scale-invariant mixture: for d_1..d_n ~ N(μ, σ²) with σ unknown, and a
N(0, 1/c) mixture over the standardised effect θ = μ/σ,

    E_n(μ) = sqrt(c / (n + c)) · (V / (V − S² / (n + c)))^(n/2),
    S = Σ (d_i − μ),  V = Σ (d_i − μ)²,

is a nonnegative martingale with mean 1 when μ is the true mean (it is the likelihood
ratio of the maximal invariant under scaling; see Wang & Ramdas 2023, "Anytime-valid
t-tests and confidence sequences for Gaussian means with unknown variance"). By Ville's
inequality P(∃n: E_n(μ) ≥ 1/α) ≤ α, so {μ : E_n(μ) < 1/α} is a (1 − α) confidence
sequence. Solving for μ gives a t-interval with an inflated critical value:

    CS_n = mean ± t*_n · s / sqrt(n),   t*_n = sqrt((n − 1) m / (1 − m)),
    m = k (n + c) / n,   k = 1 − B^(−2/n),   B = sqrt((n + c) / c) / α,

and the whole line when m ≥ 1 (too few seeds for any finite interval at this α). The
first observation says nothing about a scale-free effect (E_1 = 1), so n ≥ 2 is needed.

Power: at one look the CS excludes 0 exactly when |t| ≥ t*_n, so its power for a true
effect δ with per-seed standard deviation σ is a noncentral-t probability
(df = n − 1, noncentrality δ sqrt(n)/σ). The sequential procedure, which may also stop
earlier, has at least this power by n seeds.

Pure numpy / scipy (scipy imported where used); checked in ``tests/test_sequential.py``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "MIXTURE_PRECISION",
    "POWER",
    "SequentialCI",
    "confidence_sequence",
    "critical_t",
    "detectable_effect",
    "judge",
    "mixture_e_value",
    "power_at",
    "running_confidence_sequence",
    "seeds_needed",
]

#: c, the precision of the N(0, 1/c) mixture over θ = μ/σ: the CS is tightest for effects
#: of about 1/sqrt(c) = 1.4 standard deviations of the per-seed difference. Chosen by
#: simulation over the quickstart's effects (θ ≈ 1.3 for BICC, ≈ 2.7 for BICC+RCC) with
#: 2..20 seeds: c in 0.25..1 gave the fewest seeds to resolve; 0.5 is in the middle.
MIXTURE_PRECISION = 0.5
#: The power at which "the smallest detectable effect" and "seeds needed" are quoted.
POWER = 0.8


@dataclass(frozen=True)
class SequentialCI:
    """Mean of the per-seed differences with its (1 − α) confidence-sequence interval.

    ``low``/``high`` are ±inf when the seeds are too few for a finite interval; ``sd`` is
    the sample standard deviation (ddof = 1), NaN below 2 seeds.
    """

    mean: float
    low: float
    high: float
    n: int
    sd: float
    alpha: float

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def judge(ci: SequentialCI, half_width: float | None) -> str:
    """``excludes 0``, or ``narrow`` (half-width at most ``half_width``): resolved; else
    ``open`` (``half_width`` None: only excluding 0 resolves)."""
    if ci.excludes_zero:
        return "excludes 0"
    if half_width is not None and ci.half_width <= half_width:
        return "narrow"
    return "open"


def _check_alpha(alpha: float) -> None:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


@functools.lru_cache(maxsize=4096)  # the policy and its simulation ask the same few (n, α)
def critical_t(n: int, alpha: float, c: float = MIXTURE_PRECISION) -> float:
    """t*_n of the module docstring: the CS at n seeds is mean ± t*_n·s/sqrt(n); inf when
    n < 2 or the seeds are too few for a finite interval at this α."""
    _check_alpha(alpha)
    if n < 2:
        return math.inf
    log_b = 0.5 * math.log((n + c) / c) - math.log(alpha)
    k = -math.expm1(-2.0 * log_b / n)  # 1 − B^(−2/n), without cancellation
    m = k * (n + c) / n
    if m >= 1:
        return math.inf
    return math.sqrt((n - 1) * m / (1 - m))


def mixture_e_value(diffs: Sequence[float], mu: float, c: float = MIXTURE_PRECISION) -> float:
    """E_n(μ) of the module docstring, from the data directly (the CS is {μ : E_n(μ) < 1/α})."""
    x = np.asarray(diffs, dtype=float) - mu
    n = x.size
    s, v = float(x.sum()), float((x * x).sum())
    if v == 0:  # every d_i equals μ: S = 0 too, and the ratio is 1
        return math.sqrt(c / (n + c)) if n else 1.0
    return math.sqrt(c / (n + c)) * (v / (v - s * s / (n + c))) ** (n / 2)


def confidence_sequence(
    diffs: Sequence[float], alpha: float, c: float = MIXTURE_PRECISION
) -> SequentialCI:
    """The (1 − α) confidence-sequence interval of the mean of ``diffs`` at n = len(diffs)."""
    x = np.asarray(diffs, dtype=float)
    n = int(x.size)
    mean = float(x.mean()) if n else math.nan
    sd = float(x.std(ddof=1)) if n >= 2 else math.nan
    t_star = critical_t(n, alpha, c)
    if math.isinf(t_star):
        return SequentialCI(mean, -math.inf, math.inf, n, sd, alpha)
    half = t_star * sd / math.sqrt(n)
    return SequentialCI(mean, mean - half, mean + half, n, sd, alpha)


def running_confidence_sequence(
    diffs: Sequence[float],
    alpha: float,
    c: float = MIXTURE_PRECISION,
    looks: Sequence[int] | None = None,
) -> SequentialCI:
    """The intersection of the intervals at each look (prefix lengths ``looks``, default
    every n >= 2; ``diffs`` in the order the seeds were run): still a (1 − α) confidence
    sequence, never wider than the last look. ``mean``, ``n`` and ``sd`` are those of all
    of ``diffs``."""
    steps = sorted({n for n in (looks if looks is not None else range(2, len(diffs))) if 2 <= n < len(diffs)})
    low, high = -math.inf, math.inf
    for n in [*steps, len(diffs)]:
        look = confidence_sequence(diffs[:n], alpha, c)
        low, high = max(low, look.low), min(high, look.high)
        if low > high:  # possible only when the data contradict the model: keep this look
            low, high = look.low, look.high
    last = look
    return SequentialCI(last.mean, low, high, last.n, last.sd, alpha)


def power_at(n: int, effect: float, sd: float, alpha: float, c: float = MIXTURE_PRECISION) -> float:
    """Probability that the CS at n seeds excludes 0 when the per-seed differences are
    N(effect, sd²) (a noncentral-t tail; 0 when the interval cannot be finite)."""
    t_star = critical_t(n, alpha, c)
    if math.isinf(t_star):
        return 0.0
    if sd <= 0:
        return 1.0 if effect != 0 else 0.0
    from scipy import stats

    nc = abs(effect) * math.sqrt(n) / sd  # (symmetric in the sign of the effect)
    df = n - 1
    near = float(stats.nct.sf(t_star, df, nc))
    # P(T <= −t*) = P(T >= t* | −nc): scipy's cdf returns NaN deep in this tail, where the
    # probability is below 1e-10; such a tail adds nothing
    far = float(stats.nct.sf(t_star, df, -nc))
    return near + (far if math.isfinite(far) else 0.0)


def detectable_effect(
    n: int, sd: float, alpha: float, power: float = POWER, c: float = MIXTURE_PRECISION
) -> float:
    """The smallest |effect| that the CS at n seeds excludes 0 for with probability ``power``,
    given the per-seed standard deviation ``sd`` (inf when n seeds cannot resolve any)."""
    if math.isinf(critical_t(n, alpha, c)) or not math.isfinite(sd):
        return math.inf
    if sd == 0:
        return 0.0
    from scipy.optimize import brentq

    high = sd
    while power_at(n, high, sd, alpha, c) < power:
        high *= 2
    return float(brentq(lambda e: power_at(n, e, sd, alpha, c) - power, 0.0, high, xtol=sd * 1e-9))


def seeds_needed(
    effect: float,
    sd: float,
    alpha: float,
    power: float = POWER,
    c: float = MIXTURE_PRECISION,
    max_n: int = 10_000,
) -> int | None:
    """The fewest seeds at which the CS excludes 0 with probability ``power`` for a true
    ``effect`` with per-seed standard deviation ``sd``; None when more than ``max_n``."""
    if effect == 0 or not math.isfinite(sd):
        return None
    n = 2
    while n <= max_n:
        if power_at(n, effect, sd, alpha, c) >= power:
            # power grows with n (a smaller t*_n, a larger noncentrality): step back by bisection
            return n if n == 2 else _first_powered(n // 2, n, effect, sd, alpha, power, c)
        n *= 2
    return None


def _first_powered(low: int, high: int, effect: float, sd: float, alpha: float, power: float, c: float) -> int:
    """The least n in (low, high] with enough power, ``high`` having it and ``low`` not."""
    while high - low > 1:
        mid = (low + high) // 2
        if power_at(mid, effect, sd, alpha, c) >= power:
            high = mid
        else:
            low = mid
    return high
