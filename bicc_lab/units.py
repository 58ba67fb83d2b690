"""The one unit of scores (avg@k, pass@k, maj@k): percent points, 0-100.

Its own module at the bottom layer, because every layer speaks it: the spec (the seed
policy's half-width), eval (``eval.json``), tracking (MLflow metrics), sweep, report, tune.
"""

from __future__ import annotations

import re

__all__ = ["SCORE_SCALE", "SCORE_UNIT", "is_score"]

SCORE_UNIT = "percent"
"""The unit of every score (avg@k, pass@k, maj@k) shown or written: percent points, 0-100."""
SCORE_SCALE = 100.0
"""Points per unit of fraction: the statistics work in fractions, every output multiplies."""
_SCORE_NAME = re.compile(r"^(avg|pass|maj)(@|_at_)\d+$")


def is_score(name: str) -> bool:
    """``avg@4``, ``pass_at_1``, ``maj@8``: a share of problems (not ``n``, not a loss).

    >>> is_score("avg_at_4"), is_score("pass@1"), is_score("n")
    (True, True, False)
    """
    return bool(_SCORE_NAME.match(str(name)))
