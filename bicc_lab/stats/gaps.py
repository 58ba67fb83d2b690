"""How far apart two scores measured on a finite set of problems must be to differ.

``tune best`` compares its best trial with the runner-up: each trial is one run scored on n
problems, so two trials whose scores differ by less than the scores' own sampling error are
not told apart by the study, however the sampler ranked them.
"""

from __future__ import annotations

import math

__all__ = ["Z_95", "score_gap_bound"]

Z_95 = 1.959963984540054  # the two-sided 95% normal quantile


def score_gap_bound(p1: float, n1: int, p2: float, n2: int, z: float = Z_95) -> float:
    """Half-width ``z·sqrt(p1(1−p1)/n1 + p2(1−p2)/n2)`` of an interval for the difference of
    two mean scores in [0, 1] (avg@k, pass@k) over n1 and n2 problems.

    A per-problem score in [0, 1] with mean p has variance at most p(1 − p) (equality for
    0/1 scores), so this is the widest the problem-sampling error can be: a gap below it is
    not evidence of a difference. Seed-to-seed noise comes on top and is not in it.
    """
    if n1 < 1 or n2 < 1:
        raise ValueError(f"problem counts must be >= 1, got {n1} and {n2}")
    for p in (p1, p2):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"scores must be in [0, 1], got {p}")
    return z * math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
