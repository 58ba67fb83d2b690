"""One-step arithmetic in words: the real-model task (``data.train: word_arithmetic``).

A released instruct model of ~100M parameters is at its floor on GSM8K and MATH, and at
its ceiling on nothing; one-digit sums and differences asked in words put it in between
(about a third right when sampled, with answers that restate the question and wander;
``reports/smollm2/README.md`` measures it), where a group of G samples usually holds both right and wrong answers and
BICC has something to condition on.

Problems are ``(a, op, b, template)``: one-digit operands (1..9), ``+`` or ``-`` (the
result stays >= 0), and one of :data:`TEMPLATES` (a bare question or a one-step story).
A seeded ordering of that space is cut into ``test`` (first ``n_test``) and ``train``
(the rest), so no test prompt is trained on; the same numbers may occur in both splits
under another wording. The prompt ends with :data:`INSTRUCTION`; the answer is graded
by the project's math grader on the completion's final answer (math-verify, a bare
number counts), the same grade as evaluation.
"""

from __future__ import annotations

import random
from typing import Any

NAMES = ("Sam", "Mia", "Tom", "Ana", "Leo", "Zoe")
THINGS = ("apples", "books", "coins", "stickers", "marbles", "shells")
TEMPLATES: dict[str, tuple[str, str]] = {
    # name: (addition wording, subtraction wording); {n} name, {t} things
    "question": ("What is {a} + {b}?", "What is {a} - {b}?"),
    "story": (
        "{n} has {a} {t} and gets {b} more. How many {t} does {n} have now?",
        "{n} has {a} {t} and gives away {b}. How many {t} does {n} have now?",
    ),
    "total": (
        "There are {a} {t} in a box and {b} {t} on the table. How many {t} are there in all?",
        "There were {a} {t} on the table. {b} of them were taken. How many {t} are left?",
    ),
}
INSTRUCTION = "Give the final answer as a number."
DEFAULT_N_TEST = 100
SPLIT_SEED = "bicc-word-arith:0"


def problem_space() -> list[tuple[int, str, int, str]]:
    """Every ``(a, op, b, template)``, in a fixed order before shuffling."""
    return [
        (a, op, b, template)
        for template in TEMPLATES
        for op in "+-"
        for a in range(1, 10)
        for b in range(1, 10)
        if op == "+" or a >= b
    ]


def render(a: int, op: str, b: int, template: str) -> dict[str, str]:
    """``{"prompt", "solution"}`` of one problem; the name and things follow from the numbers."""
    wording = TEMPLATES[template][0 if op == "+" else 1]
    pick = random.Random(f"{a}{op}{b}{template}")
    text = wording.format(a=a, b=b, n=pick.choice(NAMES), t=pick.choice(THINGS))
    return {"prompt": f"{text} {INSTRUCTION}", "solution": str(a + b if op == "+" else a - b)}


def word_arithmetic_problems(split: str = "train", *, n_test: int = DEFAULT_N_TEST) -> list[dict[str, str]]:
    """The ``train`` or ``test`` split as ``{"prompt", "solution"}`` rows (plain text;
    chat formatting is the loader's)."""
    if split not in ("train", "test"):
        raise ValueError(f"word_arithmetic: split must be 'train' or 'test', got {split!r}")
    space = problem_space()
    if not 0 <= n_test < len(space):
        raise ValueError(f"word_arithmetic: n_test must be in 0..{len(space) - 1}, got {n_test}")
    random.Random(SPLIT_SEED).shuffle(space)
    chosen = space[:n_test] if split == "test" else space[n_test:]
    return [render(*key) for key in chosen]


def dataset_rows(split: str, *, chat: bool, limit: int | None = None, n_test: int = DEFAULT_N_TEST) -> list[dict[str, Any]]:
    rows = word_arithmetic_problems(split, n_test=n_test)[:limit]
    if chat:
        return [{**r, "prompt": [{"role": "user", "content": r["prompt"]}]} for r in rows]
    return rows
