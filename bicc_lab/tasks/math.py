"""Math training sets (MATH train, GSM8K, DAPO-Math-17k, any JSONL): readers and loaders.

Every loader returns a list of ``{"prompt", "solution", "problem"}`` dicts:
``prompt`` is the boxed-answer prompt (a plain string, or chat messages when
``chat=True``), ``solution`` the gold answer string that the rewards grade
against, ``problem`` the raw problem text.

Named tasks read ``<data_dir>/<file>`` when a data directory is configured
(:func:`bicc_lab.tasks.data_dir.resolve_data_dir`), and the public hub dataset
otherwise. A missing local file raises :class:`DataError` with one line. The task
registry (names, checks, :func:`~bicc_lab.tasks.registry.load_task`) is
:mod:`bicc_lab.tasks.registry`.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from bicc_lab.errors import UserError
from bicc_lab.tasks.data_dir import DATA_DIR_ENV, resolve_data_dir
from bicc_lab.tasks.grading import last_boxed, strip_thousands

log = logging.getLogger(__name__)


class DataError(UserError, ValueError):
    """A training data source is missing or malformed (message is one line)."""


DEFAULT_PROMPT_TEMPLATE = (
    "{problem}\n\nPlease reason step by step. Put your final answer within \\boxed{}."
)

# DAPO-Math-17k wraps each problem in this instruction (verl RL parquet format:
# prompt=[{"role": "user", "content": PREFIX + problem + SUFFIX}],
# reward_model={"ground_truth": "...", "style": "rule-lighteval/MATH_v2"}).
DAPO_PREFIX = (
    "Solve the following math problem step by step. The last line of your response should be "
    "of the form Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n"
)
DAPO_SUFFIX = '\n\nRemember to put your answer on its own line after "Answer:".'

HUB_IDS = {
    "math_train": ("DigitalLearningGmbH/MATH-lighteval", None, "train"),
    "gsm8k": ("openai/gsm8k", "main", "train"),
    "dapo_math": ("BytedTsinghua-SIA/DAPO-Math-17k", None, "train"),
}


_LOCAL_FILES = {
    "math_train": (("math_train.jsonl",), "MATH train JSONL with 'problem' and 'answer'"),
    "gsm8k": (("gsm8k_train.jsonl",), "GSM8K train JSONL with 'question' and 'answer'"),
    "dapo_math": (
        ("dapo_math.jsonl", "dapo-math-17k.jsonl", "dapo-math-17k.parquet"),
        "DAPO-Math-17k rows with 'prompt' and 'reward_model.ground_truth'",
    ),
}


def format_prompt(
    problem: str,
    *,
    chat: bool = False,
    template: str = DEFAULT_PROMPT_TEMPLATE,
    system_prompt: str | None = None,
) -> str | list[dict[str, str]]:
    """Fill ``{problem}`` in ``template`` (literal substitution: other braces, such
    as ``\\boxed{}``, are left alone). Chat: a user message (after an optional system one)."""
    text = template.replace("{problem}", problem)
    if not chat:
        if system_prompt:
            return f"{system_prompt}\n\n{text}"
        return text
    messages = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    messages.append({"role": "user", "content": text})
    return messages


# ---------------------------------------------------------------- answer fields


def gsm8k_answer(answer_text: str) -> str:
    """The final answer of a GSM8K ``answer`` field: text after the last ``#### ``,
    thousands separators removed (training solutions and evaluation gold alike)."""
    if "####" not in answer_text:
        raise DataError(f"GSM8K answer has no '#### ' marker: {answer_text[-80:]!r}")
    final = answer_text.rsplit("####", 1)[1].strip()
    return strip_thousands(final)


def answer_to_str(value: Any) -> str:
    """Normalise a JSON answer value: ``27.0`` -> ``"27"``, ``["x"]`` -> ``"x"``."""
    if isinstance(value, list | tuple):
        if not value:
            raise DataError("empty answer list")
        value = value[0]
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def dapo_problem(prompt_content: str) -> str:
    """The bare problem inside a DAPO-Math-17k user message (prefix/suffix removed)."""
    text = prompt_content
    if text.startswith(DAPO_PREFIX):
        text = text[len(DAPO_PREFIX) :]
    if text.endswith(DAPO_SUFFIX):
        text = text[: -len(DAPO_SUFFIX)]
    return text.strip()


def _is_null(value: Any) -> bool:
    """An answer that is JSON null (or a list of one): training would reward the text "None"."""
    if isinstance(value, list | tuple):
        return bool(value) and value[0] is None
    return value is None


def _null_message(path: str, field: str, numbers: list[int], *, what: str = "line") -> str:
    shown = ", ".join(map(str, numbers[:10])) + (f" and {len(numbers) - 10} more" if len(numbers) > 10 else "")
    plural = "s" if len(numbers) > 1 else ""
    return f"{path}: '{field}' is null on {what}{plural} {shown} (every record needs an answer to be rewarded)"


#: Local training files up to this size are read whole by the preflight (null answers, record
#: count); a larger one has its first records checked there, the rest when training reads it.
SCAN_BYTES = 64 * 2**20


def scan_null_answers(path: str | os.PathLike[str], field: str) -> None:
    """Raise :class:`DataError` naming every line of the JSONL ``path`` whose ``field`` (dotted)
    is null; lines that are not JSON objects or lack the field are left to the other checks.
    A file is read once per process while it is unchanged (a sweep's cells share it)."""
    nulls = _null_lines(*_file_key(path), field) if _file_key(path) else ()
    if nulls:
        raise DataError(_null_message(str(path), field, list(nulls)))


def count_records(path: str | os.PathLike[str]) -> int | None:
    """Non-blank lines of a local JSONL file (records training can read); None for a file
    above :data:`SCAN_BYTES` or one that cannot be read."""
    key = _file_key(path)
    return _count_lines(*key) if key else None


def _file_key(path: str | os.PathLike[str]) -> tuple[str, int, int] | None:
    """(path, size, mtime) of a file small enough to scan, else None."""
    try:
        stat = Path(path).stat()
    except OSError:
        return None
    if stat.st_size > SCAN_BYTES:
        return None
    return str(path), stat.st_size, stat.st_mtime_ns


@functools.lru_cache(maxsize=64)
def _null_lines(path: str, size: int, mtime: int, field: str) -> tuple[int, ...]:
    nulls = []
    try:
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                value: Any = row
                for part in field.split("."):
                    value = value.get(part, ...) if isinstance(value, dict) else ...
                if value is not ... and _is_null(value):
                    nulls.append(lineno)
    except (OSError, UnicodeDecodeError):
        return ()
    return tuple(nulls)


@functools.lru_cache(maxsize=64)
def _count_lines(path: str, size: int, mtime: int) -> int | None:
    try:
        with open(path, "rb") as fh:
            return sum(1 for line in fh if line.strip())
    except OSError:
        return None


# ---------------------------------------------------------------- readers


def read_jsonl(
    path: str | os.PathLike[str],
    what: str = "JSONL rows",
    error: type[ValueError] = DataError,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Rows of a JSONL file (the first ``limit`` when given); a missing or unreadable file
    or a bad line is one ``error`` naming file:line."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: file not found (expected {what})")
    rows: list[dict[str, Any]] = []
    try:
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if limit is not None and len(rows) >= limit:
                    break
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise error(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
                if not isinstance(row, dict):
                    raise error(f"{path}:{lineno}: expected a JSON object per line")
                rows.append(row)
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path}: cannot read ({exc})") from None
    return rows


def _read_rows(path: Path, what: str) -> list[dict[str, Any]]:
    if path.suffix == ".parquet":
        if not path.is_file():
            raise DataError(f"{path}: file not found (expected {what})")
        from datasets import load_dataset

        return list(load_dataset("parquet", data_files=str(path), split="train"))
    return read_jsonl(path, what)


def _load_hub(hub_id: str, config: str | None, split: str) -> list[dict[str, Any]]:
    try:
        from datasets import load_dataset

        ds = (
            load_dataset(hub_id, config, split=split)
            if config
            else load_dataset(hub_id, split=split)
        )
    except Exception as exc:  # network, offline mode, missing dataset: one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"could not load hub dataset {hub_id!r} (split {split!r}): {first}; "
            f"for offline use set {DATA_DIR_ENV} or pass a local .jsonl path"
        ) from None
    return list(ds)


def _field(row: dict[str, Any], name: str, where: str) -> Any:
    cur: Any = row
    for part in name.split("."):
        if not isinstance(cur, dict) or part not in cur:
            raise DataError(f"{where}: missing field {name!r} (fields: {sorted(row)})")
        cur = cur[part]
    return cur


def _finish(
    pairs: Iterable[tuple[str, str]],
    *,
    chat: bool,
    template: str,
    system_prompt: str | None,
    limit: int | None,
    dedup: bool = False,
) -> list[dict[str, Any]]:
    out = []
    seen: set[str] = set()
    for problem, answer in pairs:
        if dedup:
            if problem in seen:
                continue
            seen.add(problem)
        out.append(
            {
                "prompt": format_prompt(
                    problem, chat=chat, template=template, system_prompt=system_prompt
                ),
                "solution": answer,
                "problem": problem,
            }
        )
        if limit is not None and len(out) >= limit:
            break
    return out


# ---------------------------------------------------------------- loaders


def _local_or_hub(name: str, data_dir: str | os.PathLike[str] | None):
    """(path, None) for a configured data dir, else (None, hub spec)."""
    filenames, what = _LOCAL_FILES[name]
    root = resolve_data_dir(data_dir)
    if root is None:
        return None, HUB_IDS[name]
    for fn in filenames:
        if (root / fn).is_file():
            return root / fn, None
    raise DataError(f"{root / filenames[0]}: file not found (expected {what})")


def load_jsonl_task(
    path: str | os.PathLike[str],
    *,
    problem_field: str = "problem",
    answer_field: str = "answer",
    answer_format: str = "plain",
    chat: bool = False,
    template: str = DEFAULT_PROMPT_TEMPLATE,
    system_prompt: str | None = None,
    limit: int | None = None,
    rows: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Any JSONL of problems. ``answer_format``: ``plain`` (the field is the answer),
    ``gsm8k`` (after the last ``#### ``), ``boxed`` (last ``\\boxed{}`` of the field).
    Dotted field names reach into nested objects (``reward_model.ground_truth``)."""
    p = Path(path).expanduser()
    if rows is None:
        rows = _read_rows(p, f"a JSONL file with fields {problem_field!r} and {answer_field!r}")
    convert: dict[str, Callable[[Any], str]] = {
        "plain": answer_to_str,
        "gsm8k": lambda v: gsm8k_answer(str(v)),
        "boxed": lambda v: last_boxed(str(v)) or "",
    }
    if answer_format not in convert:
        raise DataError(f"answer_format must be one of {sorted(convert)}, got {answer_format!r}")

    def pairs():
        for i, row in enumerate(rows, 1):
            where = f"{p}:{i}"
            problem = _field(row, problem_field, where)
            if isinstance(problem, list):  # chat messages: the last user turn
                problem = problem[-1]["content"] if problem else ""
            raw = _field(row, answer_field, where)
            if _is_null(raw):
                nulls.append(i)
                continue
            answer = convert[answer_format](raw)
            if not answer:  # e.g. two MATH train rows whose solution has an empty \boxed{}
                skipped.append(i)
                continue
            yield str(problem), answer

    skipped: list[int] = []
    nulls: list[int] = []
    out = _finish(pairs(), chat=chat, template=template, system_prompt=system_prompt, limit=limit)
    if nulls:
        raise DataError(_null_message(str(p), answer_field, nulls, what="record"))
    if skipped:
        log.warning(
            "%s: skipped %d row(s) with an empty answer in %r (rows %s)",
            p,
            len(skipped),
            answer_field,
            ", ".join(map(str, skipped[:5])),
        )
    return out


def load_math_train(
    *,
    data_dir: str | os.PathLike[str] | None = None,
    chat: bool = False,
    template: str = DEFAULT_PROMPT_TEMPLATE,
    system_prompt: str | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """MATH train (7,500): ``<data_dir>/math_train.jsonl`` (field ``answer``), or the hub
    copy (answer = last ``\\boxed{}`` of ``solution``)."""
    path, hub = _local_or_hub("math_train", data_dir)
    if path is not None:
        return load_jsonl_task(
            path, chat=chat, template=template, system_prompt=system_prompt, limit=limit
        )
    rows = _load_hub(*hub)
    fmt, field = ("plain", "answer") if rows and "answer" in rows[0] else ("boxed", "solution")
    return load_jsonl_task(
        hub[0],
        rows=rows,
        answer_field=field,
        answer_format=fmt,
        chat=chat,
        template=template,
        system_prompt=system_prompt,
        limit=limit,
    )


def load_gsm8k(
    *,
    data_dir: str | os.PathLike[str] | None = None,
    chat: bool = False,
    template: str = DEFAULT_PROMPT_TEMPLATE,
    system_prompt: str | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """GSM8K train (7,473): ``<data_dir>/gsm8k_train.jsonl`` or hub ``openai/gsm8k``;
    the answer is the text after the last ``#### ``, without thousands separators."""
    path, hub = _local_or_hub("gsm8k", data_dir)
    rows = None if path is not None else _load_hub(*hub)
    return load_jsonl_task(
        path if path is not None else hub[0],
        rows=rows,
        problem_field="question",
        answer_field="answer",
        answer_format="gsm8k",
        chat=chat,
        template=template,
        system_prompt=system_prompt,
        limit=limit,
    )


def load_dapo_math(
    *,
    data_dir: str | os.PathLike[str] | None = None,
    path: str | os.PathLike[str] | None = None,
    chat: bool = False,
    template: str = DEFAULT_PROMPT_TEMPLATE,
    system_prompt: str | None = None,
    limit: int | None = None,
    dedup: bool = True,
) -> list[dict[str, Any]]:
    """DAPO-Math-17k (verl format: ``prompt`` chat list, ``reward_model.ground_truth``).

    The problem is taken out of DAPO's own "Answer:" instruction and re-wrapped in
    ``template`` (boxed answer), so the same rewards apply as for MATH. The hub
    release repeats each problem many times; ``dedup`` keeps the first of each.
    """
    if path is not None:
        src = Path(path).expanduser()
        rows = _read_rows(src, "DAPO-Math-17k rows with 'prompt' and 'reward_model.ground_truth'")
    else:
        src, hub = _local_or_hub("dapo_math", data_dir)
        rows = _read_rows(src, "DAPO-Math-17k rows") if src is not None else _load_hub(*hub)
        src = src if src is not None else Path(hub[0])

    def pairs():
        for i, row in enumerate(rows, 1):
            where = f"{src}:{i}"
            prompt = _field(row, "prompt", where)
            if isinstance(prompt, list):
                users = [m for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
                if not users:
                    raise DataError(f"{where}: 'prompt' has no user message")
                content = users[-1].get("content", "")
            else:
                content = str(prompt)
            answer = answer_to_str(_field(row, "reward_model.ground_truth", where))
            yield dapo_problem(content), answer

    return _finish(
        pairs(), chat=chat, template=template, system_prompt=system_prompt, limit=limit, dedup=dedup
    )


def load_hub_task(
    hub_id: str,
    *,
    config: str | None = None,
    split: str = "train",
    problem_field: str = "problem",
    answer_field: str = "answer",
    answer_format: str = "plain",
    chat: bool = False,
    template: str = DEFAULT_PROMPT_TEMPLATE,
    system_prompt: str | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Any hub dataset of problems (``datasets.load_dataset``)."""
    rows = _load_hub(hub_id, config, split)
    return load_jsonl_task(
        hub_id,
        rows=rows,
        problem_field=problem_field,
        answer_field=answer_field,
        answer_format=answer_format,
        chat=chat,
        template=template,
        system_prompt=system_prompt,
        limit=limit,
    )
