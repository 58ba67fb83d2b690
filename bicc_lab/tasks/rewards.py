"""TRL reward functions (``f(prompts, completions, solution, **kw) -> list[float]``).

All grading goes through :mod:`bicc_lab.tasks.grading`, the same grader that
evaluation (:mod:`bicc_lab.eval.scoring`) uses, so a reward of 1 and "correct at
eval" agree on the same (gold, response) pair and ``strict_format``.

- :func:`accuracy_reward` -- math-verify (gold first) via :func:`grading.grade`;
  plain-string and chat completions; safe from any thread (bounded timeout).
- :func:`final_answer_reward` -- the ``final`` grader: the last box, else the last number,
  must equal the solution (the real-model task, whose model rarely boxes).
- :func:`arithmetic_reward` -- the ``int`` grader: the completion's leading integer
  equals the integer ``solution`` (the synthetic arithmetic task; no sympy).
- :func:`format_reward` -- 1.0 when the completion holds a non-empty ``\\boxed{}``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bicc_lab.tasks.grading import completion_text, grade, last_boxed

__all__ = [
    "accuracy_reward",
    "arithmetic_reward",
    "final_answer_reward",
    "format_reward",
    "get_reward_function",
]


def _graded(
    name: str,
    completions: list[Any] | None,
    solution: list[Any] | None,
    grader: str,
    **grade_kw: Any,
) -> list[float]:
    completions = completions or []
    solution = solution or []
    if len(completions) != len(solution):
        raise ValueError(f"{name}: {len(completions)} completions but {len(solution)} solutions")
    return [
        float(grade(sol, comp, grader, **grade_kw))
        for comp, sol in zip(completions, solution, strict=True)
    ]


def accuracy_reward(
    prompts: list[Any] | None = None,
    completions: list[Any] | None = None,
    solution: list[Any] | None = None,
    *,
    strict_format: bool = True,
    **kwargs: Any,
) -> list[float]:
    """1.0 when a completion's answer matches ``solution`` (math-verify), else 0.0.

    ``strict_format=True`` (the default, as in TRL's recipe) requires the answer in
    LaTeX form (``\\boxed{}`` or ``$...$``); a bare number does not count. With
    ``strict_format=False`` it is exactly the evaluation grade.
    """
    return _graded("accuracy_reward", completions, solution, "math", strict_format=strict_format)


def final_answer_reward(
    prompts: list[Any] | None = None,
    completions: list[Any] | None = None,
    solution: list[Any] | None = None,
    **kwargs: Any,
) -> list[float]:
    """1.0 when the completion's final answer (its last box, else its last number) matches
    ``solution`` by math-verify: the ``final`` grader, as evaluation grades the task."""
    return _graded("final_answer_reward", completions, solution, "final")


def arithmetic_reward(
    prompts: list[Any] | None = None,
    completions: list[Any] | None = None,
    solution: list[Any] | None = None,
    **kwargs: Any,
) -> list[float]:
    """1.0 when the completion's leading integer equals the integer ``solution``."""
    return _graded("arithmetic_reward", completions, solution, "int")


def format_reward(
    prompts: list[Any] | None = None,
    completions: list[Any] | None = None,
    **kwargs: Any,
) -> list[float]:
    """1.0 when the completion holds a non-empty, brace-balanced ``\\boxed{...}``."""
    out = []
    for comp in completions or []:
        boxed = last_boxed(completion_text(comp))
        out.append(1.0 if boxed is not None and boxed.strip() else 0.0)
    return out


REWARDS: dict[str, Callable[..., list[float]]] = {
    "accuracy": accuracy_reward,
    "math": accuracy_reward,
    "arithmetic": arithmetic_reward,
    "final_answer": final_answer_reward,
    "format": format_reward,
}


def get_reward_function(name: str) -> Callable[..., list[float]]:
    """Reward by name: ``accuracy``/``math``, ``final_answer``, ``arithmetic``, ``format``."""
    try:
        return REWARDS[name]
    except KeyError:
        raise ValueError(f"unknown reward {name!r}: expected one of {sorted(REWARDS)}") from None
