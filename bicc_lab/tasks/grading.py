"""Answer grading: the one implementation behind the training rewards and evaluation.

``bicc_lab.tasks.rewards`` (training) and ``bicc_lab.eval.scoring`` (evaluation)
both grade through :func:`grade_full`, so "reward 1" and "correct at eval" mean
the same thing for the same (gold, response) pair and the same ``strict_format``.

- Text helpers: :func:`last_boxed`, :func:`strip_thousands`, :func:`leading_integer`,
  :func:`completion_text` (string or chat completions).
- :func:`normalize_gold` turns benchmark / dataset answer fields into one canonical
  string ("025" -> "25", 27.0 -> "27", ``["$\\frac{1}{2}$"]`` -> "\\frac{1}{2}",
  "1,000" -> "1000").
- :func:`grade` / :func:`grade_full`: the answer is the LAST ``\\boxed{}`` when there
  is one, otherwise LaTeX (and, unless ``strict_format``, a bare expression) that
  math-verify finds. math-verify ``verify(gold, prediction)`` with the gold FIRST
  decides; a normalised string comparison with the extracted answer is the
  fallback for answers sympy cannot parse (words, units, choice letters). The
  ``int`` grader compares the completion's leading integer. The ``final`` grader reads
  only the final answer: the last non-empty box, else the LAST number in the text (as
  lm-eval's gsm8k "flexible-extract" does), then math-verify decides; a completion
  that restates the question ("3 + 5 = ?") is not right because "3 + 5" equals the
  gold, as plain math-verify would have it. Never raises on odd input (it scores False).
- Timeouts: math-verify's own timeouts use ``signal.alarm``, which only works on
  the main thread. Off the main thread (trainer reward workers, lm-eval threads)
  grading runs in a daemon thread bounded by ``join(timeout)``: a pathological
  expression costs at most ``timeout`` seconds and a False, never a hung worker
  (the abandoned thread finishes in the background).

This module imports only the standard library at import time; math_verify is
imported when grading runs.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, TypeVar

log = logging.getLogger(__name__)

#: seconds a grade may take (math-verify's own timeouts on the main thread,
#: a bounded daemon thread elsewhere)
DEFAULT_TIMEOUT = 5.0

GRADERS = ("math", "int", "final")

T = TypeVar("T")


# ------------------------------------------------------------------ text helpers


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


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}`` (brace balanced), or
    of ``\\boxed 5`` (no braces). An unbalanced last box gives way to the one
    before it; None when there is none."""
    if not text:
        return None
    idx = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    while idx >= 0:
        name_len = len("\\boxed") if text.startswith("\\boxed", idx) else len("\\fbox")
        j = idx + name_len
        if j < len(text) and text[j] == " ":
            # "\boxed 5" form: up to the next "$" or whitespace
            m = re.match(r"\s*([^\s$]+)", text[j:])
            if m:
                return m.group(1)
        k = j
        while k < len(text) and text[k] == " ":
            k += 1
        if k < len(text) and text[k] == "{":
            depth = 0
            for pos in range(k, len(text)):
                ch = text[pos]
                if ch == "{":
                    depth += 1
                elif ch == "}":
                    depth -= 1
                    if depth == 0:
                        return text[k + 1 : pos]
        # unbalanced or not followed by "{": try an earlier box
        idx = max(text.rfind("\\boxed", 0, idx), text.rfind("\\fbox", 0, idx))
    return None


_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(,\d{3})+(\.\d+)?$")


def strip_thousands(s: str) -> str:
    """``"1,234,567"`` -> ``"1234567"`` (only a whole, well-formed number; other
    commas, as in ``"(1, 2)"`` or ``"1,5"``, are kept). Surrounding space is removed."""
    t = s.strip()
    return t.replace(",", "") if _THOUSANDS.match(t) else t


_LEADING_INT = re.compile(r"\s*([+-]?\d[\d,]*)")


def leading_integer(text: str) -> int | None:
    """The integer a completion starts with (``"85<|im_end|>"`` -> 85), else None.
    Digits must not run on into a decimal point (``"85.5"`` -> None)."""
    m = _LEADING_INT.match(text or "")
    if not m:
        return None
    end = m.end()
    if end + 1 < len(text) and text[end] == "." and text[end + 1].isdigit():
        return None
    digits = strip_thousands(m.group(1))
    if "," in digits:
        return None
    try:
        return int(digits)
    except ValueError:
        return None


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def final_number(text: str) -> str | None:
    """The last number in ``text`` ("... 3 + 5 = 8." -> "8", "1,000 apples" -> "1000"), else None."""
    found = _NUMBER.findall(text or "")
    return strip_thousands(found[-1]) if found else None


def final_answer_span(text: str) -> str | None:
    """What the ``final`` grader reads: the last non-empty box, else the last number."""
    boxed = last_boxed(text or "")
    if boxed is not None and boxed.strip():
        return boxed.strip()
    return final_number(text)


def _strip_dollars(s: str) -> str:
    s = s.strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if len(s) >= len(left) + len(right) and s.startswith(left) and s.endswith(right):
            inner = s[len(left) : len(s) - len(right)]
            if left == "$" and "$" in inner:
                continue  # "$a$ and $b$": not one math span
            return inner.strip()
    return s


def _canonical_number(s: str) -> str:
    """"025" -> "25", "27.0" -> "27", "-3.50" -> "-3.5"; anything else unchanged."""
    t = strip_thousands(s)
    if re.fullmatch(r"[+-]?\d+", t):
        return str(int(t))
    if re.fullmatch(r"[+-]?\d+\.\d*", t):
        try:
            f = float(t)
        except ValueError:
            return t
        if math.isfinite(f) and f == int(f) and abs(f) < 1e15:
            return str(int(f))
        return t.rstrip("0").rstrip(".") if "." in t else t
    return t


def normalize_gold(value: Any) -> str:
    """One canonical gold string from a benchmark's / dataset's answer field.

    ints and integral floats -> decimal integer; zero-padded integer strings ->
    int; lists (OlympiadBench ``final_answer``) -> their elements joined with
    ", " (one element: that element); surrounding ``$...$`` removed. Raises
    ValueError for a missing (None) or empty-list answer.
    """
    if value is None:
        raise ValueError("gold answer is missing (None)")
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isfinite(value) and value == int(value):
            return str(int(value))
        return repr(value)
    if isinstance(value, (list, tuple)):
        parts = [normalize_gold(v) for v in value if v is not None and str(v).strip()]
        if not parts:
            raise ValueError("gold answer list is empty")
        return parts[0] if len(parts) == 1 else ", ".join(parts)
    return _canonical_number(_strip_dollars(str(value)))


_TEXT_CMD = re.compile(r"\\(?:text|textbf|mathrm|mathbf|textit|mbox|operatorname)\s*\{([^{}]*)\}")


def normalize_answer_string(s: str) -> str:
    """Loose canonical form for the string fallback (not a full grader)."""
    t = _strip_dollars(s)
    t = t.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    t = t.replace("\\left", "").replace("\\right", "")
    for sp in ("\\!", "\\,", "\\;", "\\:", "\\ ", "~"):
        t = t.replace(sp, "")
    t = t.replace("^\\circ", "").replace("^{\\circ}", "").replace("\\circ", "")
    t = t.replace("\\%", "").replace("%", "")
    for _ in range(3):
        t = _TEXT_CMD.sub(r"\1", t)
    t = re.sub(r"\s+", "", t)
    t = t.rstrip(".")
    return _canonical_number(t).lower()


# ------------------------------------------------------------------ timeouts


def on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _signal_seconds(timeout: float | None) -> int | None:
    """math-verify's own (``signal.alarm``) timeout: only on the main thread."""
    if timeout is None or not on_main_thread():
        return None
    return max(1, math.ceil(timeout))


def run_with_timeout(fn: Callable[[], T], timeout: float | None, default: T) -> T:
    """Call ``fn`` (which grades with math-verify) so that it cannot hang: on the
    main thread math-verify's own timeouts apply; elsewhere ``fn`` runs in a daemon
    thread and ``default`` comes back after ``timeout`` seconds."""
    if on_main_thread():
        return fn()
    _quiet_math_verify()
    if timeout is None:
        return fn()
    return _run_bounded(fn, timeout, default)


def _run_bounded(fn: Callable[[], Any], timeout: float, default: Any = False) -> Any:
    """Run ``fn`` in a daemon thread; ``default`` if it has not finished within ``timeout`` s."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # pragma: no cover - reported through box
            box["error"] = exc

    worker = threading.Thread(target=target, name="bicc-grade", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        log.warning("math-verify took longer than %.1fs; counted as incorrect", timeout)
        return default
    if "error" in box:
        raise box["error"]
    return box.get("value", default)


_quieted = False


def _quiet_math_verify() -> None:
    # "Timeout is disabled" warnings are expected off the main thread
    global _quieted
    if not _quieted:
        logging.getLogger("math_verify.parser").setLevel(logging.ERROR)
        logging.getLogger("math_verify.grader").setLevel(logging.ERROR)
        _quieted = True


# ------------------------------------------------------------------ math-verify


def _mv():
    import math_verify

    return math_verify


@lru_cache(maxsize=2)
def _pred_config(strict_format: bool) -> tuple:
    """LaTeX (boxed first); ``strict_format``: only anchored LaTeX (``\\boxed{}``,
    "final answer is $...$"), else also LaTeX anywhere and bare expressions."""
    mv = _mv()
    latex = mv.LatexExtractionConfig(boxed_match_priority=0, try_extract_without_anchor=not strict_format)
    return (latex,) if strict_format else (latex, mv.ExprExtractionConfig())


def _gold_candidates(gold: str) -> tuple[str, ...]:
    gold = gold.strip()
    if "\\boxed" in gold:
        return (gold,)
    # bare LaTeX answers ("\frac34", "3\sqrt{13}") only parse fully inside an anchor
    return (f"\\boxed{{{gold}}}", f"${gold}$", gold)


@lru_cache(maxsize=4096)
def _parse_gold_cached(gold: str, seconds: int | None) -> tuple:
    mv = _mv()
    for candidate in _gold_candidates(gold):
        try:
            parsed = mv.parse(candidate, parsing_timeout=seconds)
        except Exception:  # math-verify may raise on odd input
            parsed = []
        if parsed:
            return tuple(parsed)
    return ()


def parse_gold(gold: str, timeout: float | None = DEFAULT_TIMEOUT) -> list:
    return list(_parse_gold_cached(gold, _signal_seconds(timeout)))


def parse_response(response: str, *, strict_format: bool = False, timeout: float | None = DEFAULT_TIMEOUT) -> list:
    try:
        return _mv().parse(response, _pred_config(strict_format), parsing_timeout=_signal_seconds(timeout))
    except Exception:
        return []


def verify(gold_parsed: Sequence[Any], pred_parsed: Sequence[Any], timeout: float | None = DEFAULT_TIMEOUT) -> bool:
    """math-verify ``verify`` with the gold first; False on empty input or error."""
    if not gold_parsed or not pred_parsed:
        return False
    try:
        return bool(_mv().verify(list(gold_parsed), list(pred_parsed), timeout_seconds=_signal_seconds(timeout)))
    except Exception:
        return False


# ------------------------------------------------------------------ grading


@dataclass(frozen=True)
class Graded:
    """One graded response: correctness and the extracted answer (for voting)."""

    correct: bool
    answer: str | None


_WRONG = Graded(False, None)


def _parsed_answer(parsed: Sequence[Any]) -> str | None:
    if not parsed:
        return None
    return str(parsed[-1]) if isinstance(parsed[-1], str) else str(parsed[0])


def extract_answer(response: Any, grader: str = "math") -> str | None:
    """The answer a response commits to, as a string: the leading integer (int
    grader), the last boxed content, else math-verify's extracted string."""
    text = completion_text(response)
    if grader == "int":
        v = leading_integer(text)
        return None if v is None else str(v)
    if grader == "final":
        return final_answer_span(text)
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed.strip() or None
    return run_with_timeout(lambda: _parsed_answer(parse_response(text)), DEFAULT_TIMEOUT, None)


def _grade_int(gold: str, text: str) -> Graded:
    pred = leading_integer(text)
    try:
        g: int | None = int(gold)
    except ValueError:
        g = None
    return Graded(pred is not None and pred == g, None if pred is None else str(pred))


def _grade_math(gold: str, text: str, strict_format: bool, timeout: float | None) -> Graded:
    if not text.strip():
        return _WRONG
    boxed = last_boxed(text)
    if boxed is not None and boxed.strip():
        answer: str | None = boxed.strip()
        # the LAST box is the answer (math-verify alone may pick another match)
        text = f"\\boxed{{{boxed}}}"
    else:
        answer = None
    parsed = parse_response(text, strict_format=strict_format, timeout=timeout)
    if answer is None:
        answer = _parsed_answer(parsed)
    ok = verify(parse_gold(gold, timeout), parsed, timeout)
    if not ok and answer is not None and gold.strip():
        ok = normalize_answer_string(answer) == normalize_answer_string(gold)
    return Graded(bool(ok), answer)


def grade_full(
    gold: Any,
    response: Any,
    grader: str = "math",
    *,
    strict_format: bool = False,
    timeout: float | None = DEFAULT_TIMEOUT,
) -> Graded:
    """Grade one response (a string or chat messages); never raises on odd input.

    math grader: math-verify ``verify(gold, prediction)`` with the gold first; if
    that says no, equal normalised strings of the gold and the extracted answer
    (words, letters, units that sympy cannot parse). ``strict_format``: the answer
    must be in LaTeX form (``\\boxed{}`` or an anchored ``$...$``), a bare number
    does not count. int grader: the completion's leading integer equals the gold
    integer. Works on any thread; see the module docstring for ``timeout``.
    """
    if grader not in GRADERS:
        raise ValueError(f"unknown grader {grader!r}; expected one of {GRADERS}")
    try:
        text = completion_text(response)
        gold_s = normalize_gold(gold)
        if grader == "int":
            return _grade_int(gold_s, text)
        if grader == "final":
            span = final_answer_span(text)
            if span is None:
                return _WRONG
            graded = run_with_timeout(lambda: _grade_math(gold_s, f"\\boxed{{{span}}}", False, timeout), timeout, _WRONG)
            return Graded(graded.correct, span)
        return run_with_timeout(lambda: _grade_math(gold_s, text, strict_format, timeout), timeout, _WRONG)
    except Exception as err:  # malformed LaTeX, sympy errors, a missing gold
        log.debug("grading failed: %s", err)
        return _WRONG


def grade(gold: Any, response: Any, grader: str = "math", **options: Any) -> bool:
    """True when ``response`` answers ``gold`` correctly: :func:`grade_full`'s
    verdict (``options``: its ``strict_format`` and ``timeout``)."""
    return grade_full(gold, response, grader, **options).correct
