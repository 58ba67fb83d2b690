"""Answer checking for evaluation: math-verify with the gold answer FIRST.

- ``normalize_gold`` turns the benchmark answer fields into one canonical string
  ("025" -> "25", 27.0 -> "27", OlympiadBench ``["$\\frac{1}{2}$"]`` -> "\\frac{1}{2}",
  GSM8K "1,000" -> "1000").
- ``grade(gold, response)`` is True when the response's answer (last ``\\boxed{}``
  first, else any LaTeX / plain expression math-verify finds) is equivalent to
  the gold answer. math-verify's answer is used first; a normalised string
  comparison of the boxed content is the fallback for answers sympy cannot parse
  (words, units, multiple choice letters). It never raises.
- math-verify's timeouts use ``signal.alarm``, which only works on the main
  thread; off the main thread (trainer reward workers, lm-eval threads) the
  timeouts are switched off instead of raising.
- ``score_many`` grades many (gold, response) pairs, across processes above a
  size threshold (``ProcessPoolExecutor``; workers run in their own main
  thread, so their timeouts work).
- ``answers_equivalent`` is the equivalence used by majority voting.

math_verify is imported lazily so that importing this module is cheap.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

log = logging.getLogger(__name__)

#: seconds for math-verify's parse / verify on the main thread
TIMEOUT_S = 5
#: grade in parallel processes when there are at least this many pairs
PARALLEL_THRESHOLD = 512

GRADERS = ("math", "int")


# --------------------------------------------------------------------- helpers


def on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _timeout() -> int | None:
    """math-verify's signal-based timeout only works on the main thread."""
    return TIMEOUT_S if on_main_thread() else None


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}`` (brace balanced), or
    of ``\\boxed 5`` (no braces). None when there is none or it is unbalanced."""
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


def _strip_dollars(s: str) -> str:
    s = s.strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if len(s) >= len(left) + len(right) and s.startswith(left) and s.endswith(right):
            inner = s[len(left) : len(s) - len(right)]
            if left == "$" and "$" in inner:
                continue  # "$a$ and $b$": not one math span
            return inner.strip()
    return s


_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(,\d{3})+(\.\d+)?$")


def strip_thousands(s: str) -> str:
    """"1,234,567" -> "1234567" (only well-formed thousands groups)."""
    t = s.strip()
    return t.replace(",", "") if _THOUSANDS.match(t) else t


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
    """One canonical gold string from a benchmark's answer field.

    ints and integral floats -> decimal integer; zero-padded integer strings ->
    int; lists (OlympiadBench ``final_answer``) -> their elements joined with
    ", " (one element: that element); surrounding ``$...$`` removed.
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
    s = _strip_dollars(str(value))
    return _canonical_number(s)


# ------------------------------------------------------ string normalisation

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


# ------------------------------------------------------------- math-verify


def _mv():
    import math_verify

    return math_verify


@lru_cache(maxsize=1)
def _pred_config():
    mv = _mv()
    return [mv.LatexExtractionConfig(boxed_match_priority=0), mv.ExprExtractionConfig()]


@lru_cache(maxsize=4096)
def _parse_gold_cached(gold: str, timeout: int | None) -> tuple:
    mv = _mv()
    for candidate in (f"\\boxed{{{gold}}}", f"${gold}$", gold):
        try:
            parsed = mv.parse(candidate, parsing_timeout=timeout)
        except Exception:  # math-verify may raise on odd input
            parsed = []
        if parsed:
            return tuple(parsed)
    return ()


def parse_gold(gold: str) -> list:
    return list(_parse_gold_cached(gold, _timeout()))


def parse_response(response: str) -> list:
    try:
        return _mv().parse(response, _pred_config(), parsing_timeout=_timeout())
    except Exception:
        return []


def _verify(gold_parsed: Sequence[Any], pred_parsed: Sequence[Any]) -> bool:
    if not gold_parsed or not pred_parsed:
        return False
    try:
        return bool(_mv().verify(list(gold_parsed), list(pred_parsed), timeout_seconds=_timeout()))
    except Exception:
        return False


# ------------------------------------------------------------------ grading


_LEADING_INT = re.compile(r"\s*([+-]?\d[\d,]*)")


def leading_integer(text: str) -> int | None:
    """The integer a completion starts with ("85<|im_end|>" -> 85), else None."""
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


@dataclass(frozen=True)
class Graded:
    """One graded response: correctness and the extracted answer (for voting)."""

    correct: bool
    answer: str | None


def _answer_from(response: str, parsed: Sequence[Any]) -> str | None:
    boxed = last_boxed(response)
    if boxed is not None and boxed.strip():
        return boxed.strip()
    if parsed:
        return str(parsed[-1]) if isinstance(parsed[-1], str) else str(parsed[0])
    return None


def extract_answer(response: str, grader: str = "math") -> str | None:
    """The answer a response commits to, as a string: the leading integer (int
    grader), the last boxed content, else math-verify's extracted string."""
    if grader == "int":
        v = leading_integer(response)
        return None if v is None else str(v)
    if last_boxed(response or "") is not None:
        return _answer_from(response, ())
    return _answer_from(response or "", parse_response(response or ""))


def grade_full(gold: Any, response: str, grader: str = "math") -> Graded:
    """Grade one response; never raises on odd input (it scores False).

    math grader: math-verify ``verify(gold, prediction)`` with the gold first;
    if that says no, equal normalised strings of the gold and the extracted
    answer (words, letters, units that sympy cannot parse). int grader: the
    completion's leading integer equals the gold integer.
    """
    if grader not in GRADERS:
        raise ValueError(f"unknown grader {grader!r}; expected one of {GRADERS}")
    try:
        if not isinstance(response, str):
            response = "" if response is None else str(response)
        gold_s = normalize_gold(gold)
        if grader == "int":
            pred = leading_integer(response)
            try:
                g = int(_canonical_number(gold_s))
            except ValueError:
                g = None
            return Graded(pred is not None and g is not None and pred == g, None if pred is None else str(pred))
        parsed = parse_response(response)
        answer = _answer_from(response, parsed)
        ok = _verify(parse_gold(gold_s), parsed)
        if not ok and answer is not None:
            ok = normalize_answer_string(answer) == normalize_answer_string(gold_s)
        return Graded(bool(ok), answer)
    except Exception as err:  # a grader must not crash an eval
        log.debug("grading failed: %s", err)
        return Graded(False, None)


def grade(gold: Any, response: str, grader: str = "math") -> bool:
    """True when ``response`` answers ``gold`` correctly (math-verify, gold first)."""
    return grade_full(gold, response, grader).correct


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
    pa, pb = parse_gold(a), parse_gold(b)
    return _verify(pa, pb) and _verify(pb, pa)


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
