"""Rewards and answer grading.

- :func:`grade` -- pure ``(gold, response) -> bool`` with math-verify; never raises.
- :func:`accuracy_reward` -- TRL reward function (``f(prompts, completions, solution, **kw)``)
  built on :func:`grade`; plain-string and chat completions.
- :func:`arithmetic_reward` -- exact integer match for the synthetic arithmetic task
  (leading integer of the completion; no sympy).
- :func:`format_reward` -- 1.0 when the completion holds a non-empty ``\\boxed{}``.

math-verify times out with ``signal.alarm``, which only works on the main thread.
On the main thread we use its own timeouts; on any other thread (TRL may call
rewards from worker threads) we switch them off and bound the whole call with
a daemon thread + ``join(timeout)`` instead, so a pathological expression costs
at most ``timeout`` seconds of waiting and a ``False``.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections.abc import Callable, Sequence
from typing import Any

from bicc_lab.tasks.math import last_boxed, strip_thousands

__all__ = [
    "accuracy_reward",
    "arithmetic_reward",
    "completion_text",
    "extract_boxed",
    "format_reward",
    "get_reward_function",
    "grade",
    "leading_integer",
]

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 5.0

extract_boxed = last_boxed


def completion_text(completion: Any) -> str:
    """Text of one completion: a string, or chat messages (the assistant contents,
    joined), or a message dict. Content given as parts (``[{"type": "text", ...}]``)
    is flattened."""
    if completion is None:
        return ""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return _content_text(completion.get("content", ""))
    if isinstance(completion, Sequence):
        msgs = [m for m in completion if isinstance(m, dict)]
        assistant = [m for m in msgs if m.get("role", "assistant") == "assistant"]
        chosen = assistant or msgs
        return "".join(_content_text(m.get("content", "")) for m in chosen)
    return str(completion)


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    return "" if content is None else str(content)


# ------------------------------------------------------------------ math-verify


def _on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _gold_candidates(gold: str) -> list[str]:
    gold = gold.strip()
    if "\\boxed" in gold:
        return [gold]
    # bare LaTeX answers ("\frac34", "3\sqrt{13}", "\$32") only parse fully inside an anchor
    return [f"\\boxed{{{gold}}}", gold]


def _grade_unbounded(gold: str, response: str, strict_format: bool, timeout: int | None) -> bool:
    """math-verify with its own (signal-based, main-thread only) timeouts, or none."""
    from latex2sympy2_extended import NormalizationConfig
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    ptimeout = vtimeout = timeout
    gold_parsed: list[Any] = []
    for cand in _gold_candidates(gold):
        gold_parsed = parse(cand, parsing_timeout=ptimeout)
        if gold_parsed:
            break
    if not gold_parsed:
        return False
    configs: list[Any] = [
        LatexExtractionConfig(
            normalization_config=NormalizationConfig(units=True),
            boxed_match_priority=0,
            try_extract_without_anchor=False,
        )
    ]
    if not strict_format:
        configs.append(ExprExtractionConfig())
    boxed = last_boxed(response)
    if boxed is not None and boxed.strip():
        # the LAST box is the answer (math-verify alone would take the first one)
        response = f"\\boxed{{{boxed}}}"
    pred = parse(
        response,
        extraction_config=configs,
        extraction_mode="first_match",
        parsing_timeout=ptimeout,
    )
    if not pred:
        return False
    return bool(verify(gold_parsed, pred, timeout_seconds=vtimeout))


def grade(
    gold: Any,
    response: Any,
    *,
    strict_format: bool = False,
    timeout: float | None = DEFAULT_TIMEOUT,
) -> bool:
    """True when ``response`` states an answer equivalent to ``gold`` (math-verify,
    gold first). ``response`` may be a string or chat messages.

    The answer is the last ``\\boxed{}`` when there is one; otherwise LaTeX with an
    anchor ("final answer is $...$"), and, unless ``strict_format``, a bare expression
    (so ``"85"`` grades against ``"85"``). Malformed input returns False, never raises.
    Works on any thread.
    """
    text = completion_text(response)
    gold_s = "" if gold is None else str(gold)
    if not gold_s.strip() or not text.strip():
        return False
    try:
        if _on_main_thread():
            seconds = None if timeout is None else max(1, math.ceil(timeout))
            return _grade_unbounded(gold_s, text, strict_format, seconds)
        if timeout is None:
            _quiet_math_verify()
            return _grade_unbounded(gold_s, text, strict_format, None)
        return _run_bounded(lambda: _grade_unbounded(gold_s, text, strict_format, None), timeout)
    except Exception as exc:  # malformed LaTeX, sympy errors, timeouts
        log.debug("grade(%r, %r) failed: %s", gold_s[:50], text[:50], exc)
        return False


def _run_bounded(fn: Callable[[], bool], timeout: float) -> bool:
    """Run ``fn`` in a daemon thread; False if it has not finished within ``timeout`` s."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # pragma: no cover - reported through box
            box["error"] = exc

    _quiet_math_verify()
    worker = threading.Thread(target=target, name="bicc-grade", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        log.warning("math-verify took longer than %.1fs; counted as incorrect", timeout)
        return False
    if "error" in box:
        raise box["error"]
    return bool(box.get("value", False))


_quieted = False


def _quiet_math_verify() -> None:
    # "Timeout is disabled" warnings are expected off the main thread
    global _quieted
    if not _quieted:
        logging.getLogger("math_verify.parser").setLevel(logging.ERROR)
        logging.getLogger("math_verify.grader").setLevel(logging.ERROR)
        _quieted = True


# ------------------------------------------------------------------ TRL rewards


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
    LaTeX form (``\\boxed{}`` or ``$...$``); a bare number does not count.
    """
    completions = completions or []
    solution = solution or []
    if len(completions) != len(solution):
        raise ValueError(
            f"accuracy_reward: {len(completions)} completions but {len(solution)} solutions"
        )
    return [
        float(grade(sol, comp, strict_format=strict_format))
        for comp, sol in zip(completions, solution, strict=True)
    ]


_LEADING_INT = re.compile(r"\s*([+-]?\d[\d,]*)")


def leading_integer(text: str) -> int | None:
    """The integer a completion starts with (``"85<|im_end|>"`` -> 85), else None.
    Digits must not run on into a letter or a decimal point (``"85.5"`` -> None)."""
    m = _LEADING_INT.match(text)
    if not m:
        return None
    end = m.end()
    if end < len(text) and (text[end] == "." and end + 1 < len(text) and text[end + 1].isdigit()):
        return None
    digits = strip_thousands(m.group(1))
    if "," in digits:
        return None
    try:
        return int(digits)
    except ValueError:
        return None


def arithmetic_reward(
    prompts: list[Any] | None = None,
    completions: list[Any] | None = None,
    solution: list[Any] | None = None,
    **kwargs: Any,
) -> list[float]:
    """1.0 when the completion's leading integer equals the integer ``solution``."""
    completions = completions or []
    solution = solution or []
    if len(completions) != len(solution):
        raise ValueError(
            f"arithmetic_reward: {len(completions)} completions but {len(solution)} solutions"
        )
    out = []
    for comp, sol in zip(completions, solution, strict=True):
        pred = leading_integer(completion_text(comp))
        try:
            gold = int(str(sol).strip())
        except ValueError:
            gold = None
        out.append(1.0 if pred is not None and gold is not None and pred == gold else 0.0)
    return out


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
    "format": format_reward,
}


def get_reward_function(name: str) -> Callable[..., list[float]]:
    """Reward by name: ``accuracy``/``math``, ``arithmetic``, ``format``."""
    try:
        return REWARDS[name]
    except KeyError:
        raise ValueError(f"unknown reward {name!r}: expected one of {sorted(REWARDS)}") from None
