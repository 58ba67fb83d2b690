"""Sampling metrics over k answers per problem.

- ``avg_at_k``: mean correctness of the k samples (the paper's "Pass@1 averaged
  over 32 samples").
- ``pass_at_k``: the unbiased estimator of Chen et al. 2021,
  ``1 - C(n-c, k) / C(n, k)`` for n samples of which c are correct.
- ``maj_at_k``: correctness of the majority answer among the extracted answers
  (answers grouped by equivalence; ties go to the answer seen first; samples
  without an answer do not vote).

``problem_metrics`` computes all of them for one problem and ``aggregate`` the
benchmark means from per-problem rows, so reports can recompute them and run
paired statistics on the per-problem correctness lists.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from math import comb
from typing import Any


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): probability that at least one of k
    samples drawn without replacement from n (c correct) is correct."""
    if not (isinstance(n, int) and isinstance(c, int) and isinstance(k, int)):
        raise TypeError("pass_at_k: n, c and k must be integers")
    if n < 1 or k < 1:
        raise ValueError(f"pass_at_k: need n >= 1 and k >= 1, got n={n}, k={k}")
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: need 0 <= c <= n, got c={c}, n={n}")
    if k > n:
        raise ValueError(f"pass_at_k: k={k} is larger than the number of samples n={n}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def avg_at_k(correct: Sequence[bool]) -> float:
    """Mean correctness of the samples of one problem."""
    if len(correct) == 0:
        raise ValueError("avg_at_k: no samples")
    return sum(bool(x) for x in correct) / len(correct)


def majority_index(
    answers: Sequence[str | None],
    equivalent: Callable[[str, str], bool] | None = None,
) -> int | None:
    """Index of the first sample whose answer is the most frequent one (answers
    grouped with ``equivalent``, default: string equality). Ties: the answer
    group seen first wins. None when no sample has an answer."""
    eq = equivalent or (lambda a, b: a == b)
    groups: list[list[int]] = []  # sample indices; groups[i][0] is the representative
    for i, ans in enumerate(answers):
        if ans is None:
            continue
        for g in groups:
            if eq(answers[g[0]], ans):  # type: ignore[arg-type]
                g.append(i)
                break
        else:
            groups.append([i])
    if not groups:
        return None
    best = max(groups, key=len)  # max keeps the first of equal-size groups
    return best[0]


def maj_at_k(
    answers: Sequence[str | None],
    correct: Sequence[bool],
    equivalent: Callable[[str, str], bool] | None = None,
) -> float:
    """1.0 when the majority answer is correct, else 0.0."""
    if len(answers) != len(correct):
        raise ValueError("maj_at_k: answers and correct differ in length")
    idx = majority_index(answers, equivalent)
    return 0.0 if idx is None else float(bool(correct[idx]))


def metric_names(k: int) -> list[str]:
    """Report names for k samples: avg@k, pass@1, pass@k (k > 1), maj@k."""
    names = [f"avg@{k}", "pass@1"]
    if k > 1:
        names.append(f"pass@{k}")
    names.append(f"maj@{k}")
    return names


def pass_ks(k: int) -> list[int]:
    return [1] if k == 1 else [1, k]


def problem_metrics(
    correct: Sequence[bool],
    answers: Sequence[str | None] | None = None,
    equivalent: Callable[[str, str], bool] | None = None,
) -> dict[str, float]:
    """avg@k, pass@1, pass@k, maj@k of one problem with k = len(correct)."""
    k = len(correct)
    c = sum(bool(x) for x in correct)
    out = {f"avg@{k}": avg_at_k(correct)}
    for kk in pass_ks(k):
        out[f"pass@{kk}"] = pass_at_k(k, c, kk)
    if answers is not None:
        out[f"maj@{k}"] = maj_at_k(answers, correct, equivalent)
    return out


def aggregate(problems: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Benchmark means from per-problem rows ``{"correct": [...], "maj_correct"?: bool}``.

    All rows must have the same number of samples k. Returns avg@k, pass@1,
    pass@k and (when rows carry ``maj_correct``) maj@k, plus ``n``.
    """
    rows = list(problems)
    if not rows:
        return {"n": 0}
    ks = {len(r["correct"]) for r in rows}
    if len(ks) != 1:
        raise ValueError(f"aggregate: problems have different sample counts {sorted(ks)}")
    (k,) = ks
    out: dict[str, float] = {"n": len(rows)}
    out[f"avg@{k}"] = sum(avg_at_k(r["correct"]) for r in rows) / len(rows)
    for kk in pass_ks(k):
        out[f"pass@{kk}"] = sum(pass_at_k(k, sum(map(bool, r["correct"])), kk) for r in rows) / len(rows)
    if all("maj_correct" in r and r["maj_correct"] is not None for r in rows):
        out[f"maj@{k}"] = sum(float(bool(r["maj_correct"])) for r in rows) / len(rows)
    return out
