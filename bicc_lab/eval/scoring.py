"""Evaluation scoring on top of the shared grader (:mod:`bicc_lab.tasks.grading`).

Grading itself -- gold normalisation, last ``\\boxed{}``, math-verify with the
gold first, the string fallback, the ``int`` grader, timeouts that work off the
main thread -- is :func:`bicc_lab.tasks.grading.grade_full`, the same function
the training rewards use. This module adds what only evaluation needs:

- ``score_many`` grades many (gold, response) pairs, across processes above a
  size threshold (``ProcessPoolExecutor``; workers run in their own main
  thread, so math-verify's own timeouts work there);
- a grading cache (``score_many(..., cache=True)`` fills it, ``cached_grade`` reads it);
- ``answers_equivalent``, the equivalence used by majority voting (maj@k).
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from bicc_lab.tasks.grading import (
    DEFAULT_TIMEOUT,
    Graded,
    grade_full,
    normalize_answer_string,
    normalize_gold,
    parse_gold,
    run_with_timeout,
    verify,
)

#: grade in parallel processes when there are at least this many pairs
PARALLEL_THRESHOLD = 512


# --------------------------------------------------------- answer equivalence


def answers_equivalent(a: str | None, b: str | None, grader: str = "math") -> bool:
    """Whether two extracted answers are the same answer (for majority voting):
    equal normalised strings, else math-verify in both directions."""
    if a is None or b is None:
        return False
    if grader == "int":
        return a.strip() == b.strip()
    if normalize_answer_string(a) == normalize_answer_string(b):
        return True

    def both_ways() -> bool:
        pa, pb = parse_gold(a), parse_gold(b)
        return verify(pa, pb) and verify(pb, pa)

    return run_with_timeout(both_ways, DEFAULT_TIMEOUT, False)


# ------------------------------------------------------------- many at once

_CACHE: dict[tuple[str, str, str], Graded] = {}
_CACHE_LOCK = threading.Lock()


def clear_cache() -> None:
    with _CACHE_LOCK:
        _CACHE.clear()


def cached_grade(gold: str, response: str, grader: str = "math") -> Graded:
    """``grade_full`` through the cache that ``score_many(..., cache=True)`` fills."""
    key = (grader, gold, response)
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
    if hit is not None:
        return hit
    res = grade_full(gold, response, grader)
    with _CACHE_LOCK:
        _CACHE[key] = res
    return res


def _grade_chunk(items: list[tuple[str, str, str]]) -> list[tuple[bool, str | None]]:
    out = []
    for gold, response, grader in items:
        g = grade_full(gold, response, grader)
        out.append((g.correct, g.answer))
    return out


def default_workers() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        n = os.cpu_count() or 1
    return max(1, min(n, 16))


def _mp_context():
    """``fork`` on Linux: workers only run sympy / math-verify, and fork (unlike
    spawn / forkserver) does not re-import the caller's ``__main__``, so scripts
    without an ``if __name__ == "__main__"`` guard work. Elsewhere ``spawn``.
    ``BICC_LAB_MP_START`` overrides."""
    import multiprocessing as mp
    import sys

    method = os.environ.get("BICC_LAB_MP_START") or ("fork" if sys.platform.startswith("linux") else "spawn")
    return mp.get_context(method)


def score_many(
    pairs: Iterable[tuple[Any, str]],
    *,
    grader: str | Sequence[str] = "math",
    workers: int | None = None,
    parallel_threshold: int | None = None,
    cache: bool = False,
) -> list[Graded]:
    """Grade (gold, response) pairs, in order. From ``parallel_threshold`` pairs
    (default ``PARALLEL_THRESHOLD``) and with more than one worker (default: the
    usable CPUs, at most 16) the work is spread over a process pool.
    ``grader`` is one name for all pairs or one per pair. With ``cache=True`` the
    results also fill the cache that ``cached_grade`` reads."""
    pairs = list(pairs)
    graders = [grader] * len(pairs) if isinstance(grader, str) else list(grader)
    if len(graders) != len(pairs):
        raise ValueError(f"score_many: {len(pairs)} pairs but {len(graders)} graders")
    items = []
    for (gold, response), gr in zip(pairs, graders, strict=True):
        try:
            gold_s = normalize_gold(gold)
        except ValueError:
            gold_s = ""
        items.append((gold_s, response if isinstance(response, str) else str(response or ""), gr))

    todo_idx = list(range(len(items)))
    results: list[Graded | None] = [None] * len(items)
    if cache:
        with _CACHE_LOCK:
            for i, (g, r, gr) in enumerate(items):
                hit = _CACHE.get((gr, g, r))
                if hit is not None:
                    results[i] = hit
        todo_idx = [i for i in todo_idx if results[i] is None]

    threshold = PARALLEL_THRESHOLD if parallel_threshold is None else parallel_threshold
    n_workers = default_workers() if workers is None else max(1, workers)
    todo = [items[i] for i in todo_idx]
    if len(todo) >= threshold and n_workers > 1:
        chunk = max(16, math.ceil(len(todo) / (n_workers * 4)))
        chunks = [todo[i : i + chunk] for i in range(0, len(todo), chunk)]
        with ProcessPoolExecutor(max_workers=n_workers, mp_context=_mp_context()) as ex:
            flat = [r for part in ex.map(_grade_chunk, chunks) for r in part]
    else:
        flat = _grade_chunk(todo)
    for i, (ok, ans) in zip(todo_idx, flat, strict=True):
        results[i] = Graded(ok, ans)
    if cache:
        with _CACHE_LOCK:
            for i in todo_idx:
                g, r, gr = items[i]
                _CACHE[(gr, g, r)] = results[i]  # type: ignore[assignment]
    return results  # type: ignore[return-value]
