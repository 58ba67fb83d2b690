"""The task registry: which ``data.train`` values exist, what reward fits each, checks and
record counts without loading a model, and :func:`load_task` / :func:`build_dataset`, which
turn a ``data.train`` value into training prompts.

Registry names are generated (synthetic and word arithmetic, :mod:`bicc_lab.tasks.arithmetic`)
or read by the math loaders (:mod:`bicc_lab.tasks.math`); any other value is a ``.jsonl``
path or a hub id. Nothing heavy is imported at module level (``datasets`` loads inside
:func:`build_dataset`).
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bicc_lab.tasks.data_dir import resolve_data_dir
from bicc_lab.tasks.math import (
    _LOCAL_FILES,
    DEFAULT_PROMPT_TEMPLATE,
    DataError,
    _field,
    _local_or_hub,
    answer_to_str,
    count_records,
    load_dapo_math,
    load_gsm8k,
    load_hub_task,
    load_jsonl_task,
    load_math_train,
    read_jsonl,
    scan_null_answers,
)


@dataclass(frozen=True)
class TaskInfo:
    name: str
    description: str
    reward: str  # "arithmetic" (exact integer) or "math" (math-verify)


TASKS: dict[str, TaskInfo] = {
    "synthetic_arithmetic": TaskInfo(
        "synthetic_arithmetic", "generated a+b= problems (digits, ops knobs)", "arithmetic"
    ),
    "word_arithmetic": TaskInfo(
        "word_arithmetic", "one-digit sums and differences asked in words (real-model task)", "final_answer"
    ),
    "math_train": TaskInfo("math_train", "MATH train, 7,500 problems", "math"),
    "gsm8k": TaskInfo("gsm8k", "GSM8K train, 7,473 problems", "math"),
    "dapo_math": TaskInfo("dapo_math", "DAPO-Math-17k (deduplicated)", "math"),
}

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def task_kind(name: str) -> str:
    """``"registry"``, ``"jsonl"`` or ``"hub"`` for a data.train value; raises DataError
    for a value that is none of these (no file access for hub ids)."""
    if name in TASKS:
        return "registry"
    if name.endswith((".jsonl", ".parquet")):
        return "jsonl"
    if _HUB_ID.match(name):
        return "hub"
    raise DataError(
        f"unknown training data {name!r}: expected one of {sorted(TASKS)}, "
        "a .jsonl path, or a hub id like 'org/name'"
    )


def check_task(name: str, *, data_dir: str | os.PathLike[str] | None = None) -> str:
    """Validate a data.train value without reading it (no network): returns its kind
    (``registry`` / ``jsonl`` / ``hub``) or raises :class:`DataError` with one line --
    unknown name, missing local file, or a named set missing from the data dir."""
    kind = task_kind(name)
    root = resolve_data_dir(data_dir)
    if kind == "registry" and name in _LOCAL_FILES and root is not None:
        _local_or_hub(name, root)
    elif kind == "jsonl":
        path = Path(name).expanduser()
        if not path.is_file() and not (
            root is not None and not path.is_absolute() and (root / path).is_file()
        ):
            where = (
                f" (nor in data dir {root})" if root is not None and not path.is_absolute() else ""
            )
            from bicc_lab.fileio import missing_reason

            state = missing_reason(path).replace("not found", "file not found")
            raise DataError(f"{name}: {state}{where} (expected a JSONL file of problems)")
    return kind


def check_task_records(
    name: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    problem_field: str | None = None,
    answer_field: str | None = None,
    records: int = 5,
) -> str:
    """:func:`check_task`, then the first ``records`` records of a local file are parsed
    and converted exactly as training will convert them (fields, answer format), so a
    malformed file fails before a model loads. Hub datasets are not read (no network);
    parquet files only checked to exist. Returns the kind like :func:`check_task`."""
    kind = check_task(name, data_dir=data_dir)
    root = resolve_data_dir(data_dir)
    if kind == "registry":
        if name not in _LOCAL_FILES or root is None:
            return kind  # generated, or read from the hub
        path, _ = _local_or_hub(name, root)
    elif kind == "jsonl":
        path = Path(name).expanduser()
        if not path.is_file() and root is not None and not path.is_absolute():
            path = root / path
    else:
        return kind
    if path.suffix == ".parquet":
        return kind
    rows = read_jsonl(path, "a JSONL file of problems", limit=records)
    if not rows:
        raise DataError(f"{path}: no records (expected one JSON object per line)")
    if name == "dapo_math":
        for lineno, row in enumerate(rows, 1):
            _field(row, "prompt", f"{path}:{lineno}")
            answer_to_str(_field(row, "reward_model.ground_truth", f"{path}:{lineno}"))
        scan_null_answers(path, "reward_model.ground_truth")
        return kind
    fields: dict[str, str] = {}
    if name == "gsm8k":
        fields = {"problem_field": "question", "answer_field": "answer", "answer_format": "gsm8k"}
    if problem_field:
        fields["problem_field"] = problem_field
    if answer_field:
        fields["answer_field"] = answer_field
    scan_null_answers(path, fields.get("answer_field", "answer"))  # every line, not the first few
    load_jsonl_task(path, rows=rows, **fields)
    return kind


@functools.lru_cache(maxsize=16)
def _arithmetic_count(digits: int) -> int | None:
    from bicc_lab.tasks import arithmetic

    try:
        return len(arithmetic.arithmetic_problems("train", digits=digits))
    except ValueError:  # training reports it itself
        return None


def count_task_records(
    name: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    num_train: int | None = None,
    digits: int = 2,
) -> int | None:
    """How many training prompts ``data.train`` gives (at most ``num_train``), without
    loading a model or the hub: None when it cannot be known cheaply (a hub dataset, a
    parquet file, a file above :data:`SCAN_BYTES`, DAPO's deduplicated rows)."""
    kind = task_kind(name)
    root = resolve_data_dir(data_dir)
    count: int | None = None
    if name == "synthetic_arithmetic":
        count = _arithmetic_count(digits)
    elif name == "word_arithmetic":
        from bicc_lab.tasks.word_arithmetic import word_arithmetic_problems

        count = len(word_arithmetic_problems("train"))
    elif kind == "registry" and name in _LOCAL_FILES and name != "dapo_math" and root is not None:
        path, _ = _local_or_hub(name, root)
        count = count_records(path) if path.suffix == ".jsonl" else None
    elif kind == "jsonl" and name.endswith(".jsonl"):
        path = Path(name).expanduser()
        if not path.is_file() and root is not None and not path.is_absolute():
            path = root / path
        count = count_records(path)
    if count is not None and num_train is not None:
        count = min(count, num_train)
    return count


def reward_kind(name: str) -> str:
    """Which reward fits a task: ``"arithmetic"``, ``"final_answer"`` or ``"math"``."""
    return TASKS[name].reward if name in TASKS else "math"


def load_task(
    name: str,
    *,
    split: str = "train",
    data_dir: str | os.PathLike[str] | None = None,
    chat: bool = False,
    template: str = DEFAULT_PROMPT_TEMPLATE,
    system_prompt: str | None = None,
    limit: int | None = None,
    problem_field: str = "problem",
    answer_field: str = "answer",
    answer_format: str = "plain",
    hub_config: str | None = None,
    seed: int = 0,
    digits: int = 2,
    ops: str = "+",
    n_train: int | None = None,
    n_test: int | None = None,
) -> list[dict[str, Any]]:
    """Registry name, ``.jsonl`` path, or hub id -> list of ``{"prompt", "solution", ...}``.

    ``split`` only matters for synthetic arithmetic ("train"/"test") and hub ids;
    the named math sets are training sets.
    """
    kind = task_kind(name)
    common = {"chat": chat, "template": template, "system_prompt": system_prompt, "limit": limit}
    if name == "synthetic_arithmetic":
        from bicc_lab.tasks import arithmetic

        rows = arithmetic.arithmetic_problems(
            split,
            digits=digits,
            ops=ops,
            n_train=arithmetic.DEFAULT_N_TRAIN if n_train is None else n_train,
            n_test=arithmetic.DEFAULT_N_TEST if n_test is None else n_test,
            seed=seed,
        )
        if limit is not None:
            rows = rows[:limit]
        return [
            {**r, "prompt": arithmetic.to_chat(r["prompt"]) if chat else r["prompt"]} for r in rows
        ]
    if name == "word_arithmetic":
        from bicc_lab.tasks.word_arithmetic import dataset_rows

        return dataset_rows(split, chat=chat, limit=limit)
    if name == "math_train":
        return load_math_train(data_dir=data_dir, **common)
    if name == "gsm8k":
        return load_gsm8k(data_dir=data_dir, **common)
    if name == "dapo_math":
        return load_dapo_math(data_dir=data_dir, **common)
    if kind == "jsonl":
        path = Path(name).expanduser()
        root = resolve_data_dir(data_dir)
        if (
            not path.is_absolute()
            and not path.exists()
            and root is not None
            and (root / path).exists()
        ):
            path = root / path
        return load_jsonl_task(
            path,
            problem_field=problem_field,
            answer_field=answer_field,
            answer_format=answer_format,
            **common,
        )
    return load_hub_task(
        name,
        config=hub_config,
        split=split,
        problem_field=problem_field,
        answer_field=answer_field,
        answer_format=answer_format,
        **common,
    )


def build_dataset(name: str, **kwargs: Any) -> Any:
    """:func:`load_task` as a ``datasets.Dataset`` (columns ``prompt``, ``solution``, ...)."""
    from datasets import Dataset

    rows = load_task(name, **kwargs)
    if not rows:
        raise DataError(f"training data {name!r} is empty")
    return Dataset.from_list(rows)
