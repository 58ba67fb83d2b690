"""Synthetic arithmetic: the CPU quickstart's training and test task.

Problems look like ``47+38=`` with the solution ``85``. The difficulty knob is
``digits`` (every operand has exactly that many digits; ``digits=1`` uses 0..9)
and ``ops`` (any of ``+``, ``-``, ``*``; subtraction keeps the result >= 0).

Splits are fixed and disjoint: one seeded, deterministic ordering of the whole
problem space is cut into ``test`` (the first ``n_test`` problems) and
``train`` (the next ``n_train``). So the test split depends only on
``(digits, ops, seed, n_test)``, a bigger train split extends a smaller one,
and no test prompt ever appears in train.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

SUPPORTED_OPS = "+-*"
DEFAULT_N_TRAIN = 5000
DEFAULT_N_TEST = 500


@dataclass(frozen=True)
class ArithmeticSplits:
    train: list[dict[str, str]]
    test: list[dict[str, str]]


def _check(digits: int, ops: str) -> str:
    if not isinstance(digits, int) or digits < 1 or digits > 9:
        raise ValueError(f"arithmetic: digits must be an integer in 1..9, got {digits!r}")
    if not ops or any(op not in SUPPORTED_OPS for op in ops):
        raise ValueError(
            f"arithmetic: ops must be a non-empty string of {SUPPORTED_OPS!r}, got {ops!r}"
        )
    # keep first occurrence order, drop duplicates: "++-" -> "+-"
    return "".join(dict.fromkeys(ops))


def _operand_range(digits: int) -> tuple[int, int]:
    lo = 0 if digits == 1 else 10 ** (digits - 1)
    return lo, 10**digits - 1


def problem_space_size(digits: int = 2, ops: str = "+") -> int:
    """Number of distinct prompts for ``digits`` and ``ops``."""
    ops = _check(digits, ops)
    lo, hi = _operand_range(digits)
    n = hi - lo + 1
    return sum(n * (n + 1) // 2 if op == "-" else n * n for op in ops)


def _solve(a: int, op: str, b: int) -> int:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    return a * b


def make_problem(a: int, op: str, b: int) -> dict[str, str]:
    """One problem as ``{"prompt": "47+38=", "solution": "85"}``."""
    return {"prompt": f"{a}{op}{b}=", "solution": str(_solve(a, op, b))}


def iter_problems(digits: int = 2, ops: str = "+", seed: int = 0) -> Iterator[tuple[int, str, int]]:
    """A deterministic ordering of the whole problem space (no repeats).

    Random draws with de-duplication while less than half the space has been
    produced; after that the remaining problems are enumerated and shuffled
    with the same generator (no coupon-collector tail).
    """
    ops = _check(digits, ops)
    lo, hi = _operand_range(digits)
    total = problem_space_size(digits, ops)
    rng = random.Random(f"bicc-arith:{digits}:{ops}:{seed}")
    seen: set[tuple[int, str, int]] = set()
    while len(seen) < total // 2:
        op = ops[rng.randrange(len(ops))]
        a = rng.randint(lo, hi)
        b = rng.randint(lo, hi)
        if op == "-" and a < b:
            a, b = b, a
        key = (a, op, b)
        if key in seen:
            continue
        seen.add(key)
        yield key
    rest = [
        (a, op, b)
        for op in ops
        for a in range(lo, hi + 1)
        for b in range(lo, (a if op == "-" else hi) + 1)
        if (a, op, b) not in seen
    ]
    rng.shuffle(rest)
    yield from rest


def make_splits(
    digits: int = 2,
    ops: str = "+",
    *,
    n_train: int | None = DEFAULT_N_TRAIN,
    n_test: int = DEFAULT_N_TEST,
    seed: int = 0,
) -> ArithmeticSplits:
    """Disjoint train/test splits. ``n_train=None`` takes every remaining problem
    (only sensible for small spaces such as 2-digit addition: 8100 problems)."""
    ops = _check(digits, ops)
    total = problem_space_size(digits, ops)
    if n_test < 0 or (n_train is not None and n_train < 0):
        raise ValueError("arithmetic: n_train and n_test must be >= 0")
    if n_test >= total:
        raise ValueError(
            f"arithmetic: n_test={n_test} leaves no training problems "
            f"({digits}-digit {ops!r} has {total} distinct problems)"
        )
    if n_train is None:
        if total > 2_000_000:
            raise ValueError(
                f"arithmetic: n_train=None would take all {total} problems; give n_train explicitly"
            )
        n_train = total - n_test
    n_train = min(n_train, total - n_test)
    test: list[dict[str, str]] = []
    train: list[dict[str, str]] = []
    for i, (a, op, b) in enumerate(iter_problems(digits, ops, seed)):
        if i < n_test:
            test.append(make_problem(a, op, b))
        elif i < n_test + n_train:
            train.append(make_problem(a, op, b))
        else:
            break
    return ArithmeticSplits(train=train, test=test)


def arithmetic_problems(
    split: str = "train",
    *,
    digits: int = 2,
    ops: str = "+",
    n_train: int | None = DEFAULT_N_TRAIN,
    n_test: int = DEFAULT_N_TEST,
    seed: int = 0,
) -> list[dict[str, str]]:
    """The ``train`` or ``test`` split as a list of ``{"prompt", "solution"}`` dicts."""
    if split not in ("train", "test"):
        raise ValueError(f"arithmetic: split must be 'train' or 'test', got {split!r}")
    splits = make_splits(digits, ops, n_train=n_train, n_test=n_test, seed=seed)
    return splits.train if split == "train" else splits.test


def to_chat(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def build_arithmetic_dataset(
    split: str = "train",
    *,
    digits: int = 2,
    ops: str = "+",
    n_train: int | None = DEFAULT_N_TRAIN,
    n_test: int = DEFAULT_N_TEST,
    seed: int = 0,
    chat: bool = False,
) -> Any:
    """A ``datasets.Dataset`` with columns ``prompt`` (str, or chat messages when
    ``chat``) and ``solution`` (str)."""
    from datasets import Dataset

    rows = arithmetic_problems(
        split, digits=digits, ops=ops, n_train=n_train, n_test=n_test, seed=seed
    )
    prompts: list[Any] = [to_chat(r["prompt"]) if chat else r["prompt"] for r in rows]
    return Dataset.from_dict({"prompt": prompts, "solution": [r["solution"] for r in rows]})
