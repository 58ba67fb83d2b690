"""Benchmarks: where their data comes from and how a row becomes a uniform doc.

Every benchmark is read into docs of one shape, whatever its source::

    {"benchmark": "aime24", "problem_id": "60", "problem": "...", "prompt": "...",
     "gold": "25", "grader": "math"}

``gold`` is already normalised (``bicc_lab.tasks.grading.normalize_gold``), so the lm-eval
task configs, the scorers and the reports never see the per-file answer quirks.

Data resolution, per benchmark:

1. an explicit data file (the runner passes one for ``arith``);
2. ``<data dir>/<file name>`` where the data dir is the explicit argument
   (``--data-dir`` / config key), else ``$BICC_LAB_DATA_DIR``;
3. the Hugging Face Hub dataset(s) (needs the network or a warm HF cache);
4. otherwise ``EvalDataError``: one line naming the local file and the hub id.

Step 3 is skipped, and the missing file is an error at once, when a data dir is set (the
user said where the files are) or when the hub is switched off (``HF_HUB_OFFLINE`` /
``HF_DATASETS_OFFLINE``) and the dataset is not in the local HF cache: otherwise the
``datasets`` library retries the hub for half a minute before giving up.
:func:`check_benchmarks` applies the same rule without reading anything, so a run can be
checked before it trains or loads a model.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bicc_lab.errors import UserError
from bicc_lab.models.loading import hub_dataset_cached, hub_offline
from bicc_lab.tasks.data_dir import DATA_DIR_ENV, resolve_data_dir
from bicc_lab.tasks.grading import last_boxed, normalize_gold
from bicc_lab.tasks.math import gsm8k_answer
from bicc_lab.tasks.math import read_jsonl as tasks_read_jsonl

BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


class EvalDataError(UserError, ValueError):
    """A benchmark's data could not be found or read (one-line message)."""


@dataclass(frozen=True)
class HubSource:
    path: str
    name: str | None = None
    split: str = "test"

    def __str__(self) -> str:
        s = self.path if self.name is None else f"{self.path} ({self.name})"
        return f"{s} [{self.split}]"


@dataclass(frozen=True)
class Benchmark:
    name: str
    filename: str | None
    hub: tuple[HubSource, ...] = ()
    grader: str = "math"
    plain_prompt: bool = False  # True: the problem text is the whole prompt (arith)
    aliases: tuple[str, ...] = field(default=())

    @property
    def task(self) -> str:
        return f"bicc_{self.name}"


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark("math500", "math500.jsonl", (HubSource("HuggingFaceH4/MATH-500", None, "test"),),
                  aliases=("math_500", "math-500")),
        Benchmark("aime24", "aime24.jsonl",
                  (HubSource("HuggingFaceH4/aime_2024", None, "train"),
                   HubSource("Maxwell-Jia/AIME_2024", None, "train")),
                  aliases=("aime2024", "aime_2024")),
        Benchmark("aime25", "aime25.jsonl", (HubSource("math-ai/aime25", None, "test"),),
                  aliases=("aime2025", "aime_2025")),
        Benchmark("amc23", "amc23.jsonl", (HubSource("math-ai/amc23", None, "test"),),
                  aliases=("amc", "amc2023")),
        Benchmark("gsm8k", "gsm8k_test.jsonl", (HubSource("openai/gsm8k", "main", "test"),),
                  aliases=("gsm8k_test",)),
        Benchmark("minerva", "minerva_math.jsonl", (HubSource("math-ai/minervamath", None, "test"),),
                  aliases=("minerva_math", "minervamath")),
        Benchmark("olympiad", "olympiadbench.jsonl", (HubSource("math-ai/olympiadbench", None, "test"),),
                  aliases=("olympiadbench", "olympiad_bench")),
        Benchmark("arith", "arith_test.jsonl", (), grader="int", plain_prompt=True,
                  aliases=("arith_test", "arithmetic", "synthetic_arithmetic")),
        # the held-out split of the real-model task; its prompts carry their instruction
        Benchmark("word_arith", "word_arith_test.jsonl", (), grader="final", plain_prompt=True,
                  aliases=("word_arith_test", "word_arithmetic")),
    )
}

_ALIASES: dict[str, str] = {}
for _b in BENCHMARKS.values():
    for _n in (_b.name, _b.task, *_b.aliases):
        _ALIASES[_n.lower()] = _b.name


def benchmark_names() -> list[str]:
    return list(BENCHMARKS)


def get_benchmark(name: str) -> Benchmark:
    key = str(name).strip().lower()
    if key in _ALIASES:
        return BENCHMARKS[_ALIASES[key]]
    raise EvalDataError(
        f"unknown benchmark {name!r}: expected one of {', '.join(BENCHMARKS)}"
    )


# ------------------------------------------------------------ row -> doc


def _first(row: dict[str, Any], *keys: str) -> Any:
    for k in keys:
        if k in row and row[k] is not None and (not isinstance(row[k], str) or row[k].strip()):
            return row[k]
    return None


_DOLLAR_SPANS = re.compile(r"\$([^$]*)\$")


def olympiad_gold(final_answer: Any) -> str:
    """OlympiadBench ``final_answer``: a list of one string that may hold several
    answers, possibly each in its own ``$...$`` (``"$69$,$84$"``)."""
    items = final_answer if isinstance(final_answer, (list, tuple)) else [final_answer]
    parts: list[str] = []
    for item in items:
        s = str(item).strip()
        if s.endswith("$.") or s.endswith("$,"):
            s = s[:-1]  # "$(-\infty, 0) \cup\{1\}$." -> one math span
        spans = _DOLLAR_SPANS.findall(s)
        if s.count("$") % 2 == 1:
            parts.append(s.replace("$", ""))  # malformed, e.g. "$221,$8$" -> "221,8"
        elif len(spans) > 1 and _DOLLAR_SPANS.sub("", s).strip(" ,;") == "":
            parts.extend(p.strip() for p in spans)  # "$69$,$84$" -> "69", "84"
        else:
            parts.append(s)  # one span (stripped later) or prose with math in it
    return normalize_gold(parts)


def raw_gold(bench: Benchmark, row: dict[str, Any]) -> Any:
    """The gold answer field of a row, before normalisation."""
    name = bench.name
    if name == "gsm8k":
        return gsm8k_answer(str(_first(row, "answer")))
    if name == "olympiad":
        v = _first(row, "final_answer", "answer")
        if v is None:
            raise ValueError("no 'final_answer' field")
        return v
    if name == "minerva":
        sol = _first(row, "solution")
        if sol is not None and (boxed := last_boxed(str(sol))) is not None:
            return boxed
        v = _first(row, "answer")
        if v is None:
            raise ValueError("no \\boxed{} in 'solution' and no 'answer' field")
        return v
    if name in GENERATED:
        v = _first(row, "solution", "answer")
    else:
        v = _first(row, "answer", "Answer")
        if v is None and (sol := _first(row, "solution", "Solution")) is not None:
            v = last_boxed(str(sol))
    if v is None:
        raise ValueError("no answer field")
    return v


def gold_answer(bench: Benchmark | str, row: dict[str, Any]) -> str:
    """The normalised gold answer of a raw benchmark row."""
    b = bench if isinstance(bench, Benchmark) else get_benchmark(bench)
    v = raw_gold(b, row)
    if b.name == "olympiad":
        return olympiad_gold(v)
    return normalize_gold(v)


def problem_text(bench: Benchmark, row: dict[str, Any]) -> str:
    if bench.name in GENERATED:
        v = _first(row, "prompt", "problem", "question")
    else:
        v = _first(row, "problem", "Problem", "question", "Question")
    if v is None:
        raise ValueError("no problem text field")
    text = str(v).strip() if not bench.plain_prompt else str(v)
    if bench.name == "olympiad" and (ctx := _first(row, "context")):
        text = f"{str(ctx).strip()}\n\n{text}"
    return text


def format_prompt(problem: str, plain: bool = False) -> str:
    """Zero-shot boxed-answer prompt (plain prompts such as ``47+38=`` unchanged)."""
    return problem if plain else f"{problem}\n{BOXED_INSTRUCTION}"


def problem_id(bench: Benchmark, row: dict[str, Any], index: int) -> str:
    v = _first(row, "unique_id", "id", "ID", "idx", "problem_id")
    return str(index) if v is None else str(v)


def to_doc(bench: Benchmark, row: dict[str, Any], index: int) -> dict[str, str]:
    problem = problem_text(bench, row)
    return {
        "benchmark": bench.name,
        "problem_id": problem_id(bench, row, index),
        "problem": problem,
        "prompt": format_prompt(problem, bench.plain_prompt),
        "gold": gold_answer(bench, row),
        "grader": bench.grader,
    }


# ------------------------------------------------------------------ loading


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    rows = tasks_read_jsonl(path, "a benchmark JSONL file", error=EvalDataError)
    if not rows:
        raise EvalDataError(f"{path}: no rows")
    return rows


def docs_from_rows(bench: Benchmark, rows: list[dict[str, Any]], where: str) -> list[dict[str, str]]:
    docs = []
    for i, row in enumerate(rows):
        try:
            docs.append(to_doc(bench, row, i))
        except (ValueError, TypeError) as err:
            raise EvalDataError(f"{where}: row {i + 1}: {err}") from None
    return docs


def check_benchmark(
    bench: Benchmark | str, data_dir: str | os.PathLike[str] | None = None
) -> Benchmark:
    """The benchmark, once its data is known to be reachable without downloading blindly.

    Raises EvalDataError (one line naming the file) for an unknown name, for a file that a
    set data dir lacks, and for a hub-only benchmark while the hub is switched off and the
    dataset is not cached. Reads nothing but directory entries.
    """
    b = bench if isinstance(bench, Benchmark) else get_benchmark(bench)
    if b.filename is None or local_file(b, data_dir) is not None or b.name in GENERATED:
        return b  # generated when there is no file
    d = resolve_data_dir(data_dir)
    hubs = " or ".join(src.path for src in b.hub)
    if d is not None:
        raise EvalDataError(
            f"benchmark {b.name}: {d / b.filename}: file not found in the data dir "
            f"(the hub's {hubs} is tried only when no data dir is set)"
        )
    if hub_offline() and not any(hub_dataset_cached(src.path) for src in b.hub):
        raise EvalDataError(
            f"benchmark {b.name}: no data dir for {b.filename} (pass --data-dir or set "
            f"{DATA_DIR_ENV}) and the hub is off (HF_HUB_OFFLINE), with {hubs} not in the HF cache"
        )
    return b


def check_benchmarks(
    names: str | Iterable[str], data_dir: str | os.PathLike[str] | None = None
) -> list[Benchmark]:
    """:func:`check_benchmark` for each of ``names`` ("a,b" or a list), duplicates dropped."""
    items = names.split(",") if isinstance(names, str) else list(names)
    out: list[Benchmark] = []
    for name in items:
        if str(name).strip():
            b = check_benchmark(name, data_dir)
            if b not in out:
                out.append(b)
    if not out:
        raise EvalDataError("no benchmarks given")
    return out


def local_file(bench: Benchmark, data_dir: str | os.PathLike[str] | None) -> Path | None:
    d = resolve_data_dir(data_dir)
    if d is None or bench.filename is None:
        return None
    p = d / bench.filename
    return p if p.is_file() else None


def _default_arith_rows() -> list[dict[str, Any]]:
    """The synthetic arithmetic test split with its default settings."""
    from bicc_lab.tasks.arithmetic import arithmetic_problems

    return arithmetic_problems("test")


def _default_word_arith_rows() -> list[dict[str, Any]]:
    """The word-arithmetic test split (never trained on)."""
    from bicc_lab.tasks.word_arithmetic import word_arithmetic_problems

    return word_arithmetic_problems("test")


#: benchmarks generated from a task's held-out split when no data file names them
GENERATED: dict[str, Callable[[], list[dict[str, Any]]]] = {
    "arith": _default_arith_rows,
    "word_arith": _default_word_arith_rows,
}


def _short(err: BaseException) -> str:
    msg = str(err).strip().splitlines()[0] if str(err).strip() else ""
    msg = msg if len(msg) <= 160 else msg[:157] + "..."
    return f"{type(err).__name__}: {msg}" if msg else type(err).__name__


def load_docs(
    bench: Benchmark | str,
    data_dir: str | os.PathLike[str] | None = None,
    data_files: str | os.PathLike[str] | None = None,
) -> tuple[list[dict[str, str]], str]:
    """Docs of a benchmark and a description of where they came from."""
    b = bench if isinstance(bench, Benchmark) else get_benchmark(bench)
    if data_files:
        p = Path(data_files).expanduser()
        if not p.is_file():
            raise EvalDataError(f"{b.task}: data file {p} does not exist")
        return docs_from_rows(b, read_jsonl(p), str(p)), str(p)
    p = local_file(b, data_dir)
    if p is not None:
        return docs_from_rows(b, read_jsonl(p), str(p)), str(p)
    if b.name in GENERATED:
        return docs_from_rows(b, GENERATED[b.name](), f"{b.name} test split"), "generated"
    check_benchmark(b, data_dir)  # a set data dir without the file, or the hub off: fail now

    errors = []
    for src in b.hub:
        try:
            import datasets

            ds = datasets.load_dataset(src.path, src.name, split=src.split)
            return docs_from_rows(b, [dict(r) for r in ds], str(src)), f"hub:{src}"
        except EvalDataError:
            raise
        except Exception as err:  # offline, missing, renamed, ...
            errors.append(f"{src.path}: {_short(err)}")
    d = resolve_data_dir(data_dir)
    where = (
        f"not in data dir {d}" if d is not None
        else f"no data dir (pass --data-dir or set {DATA_DIR_ENV})"
    )
    hubs = " or ".join(s.path for s in b.hub) or "none"
    detail = "; ".join(errors)
    raise EvalDataError(
        f"{b.task}: no local file {b.filename} ({where}) and the hub dataset {hubs} "
        f"could not be loaded ({detail})"
    )


def load_dataset_dict(
    bench: Benchmark | str,
    data_dir: str | os.PathLike[str] | None = None,
    data_files: str | os.PathLike[str] | None = None,
):
    """``datasets.DatasetDict({"test": ...})`` of uniform docs (all string columns)."""
    import datasets

    docs, _ = load_docs(bench, data_dir, data_files)
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})


def make_custom_dataset(name: str) -> Callable[..., Any]:
    """The ``custom_dataset`` callable of one lm-eval task. lm-eval calls it with
    the task metadata (TaskManager ``metadata=``, ``--metadata``) and
    ``dataset_kwargs`` as keywords: ``bicc_data_dir`` and ``data_files`` are used."""

    def custom_dataset(**kwargs: Any):
        data_files = kwargs.get("data_files")
        if isinstance(data_files, dict):
            data_files = data_files.get("test")
        if isinstance(data_files, (list, tuple)):
            data_files = data_files[0] if data_files else None
        return load_dataset_dict(name, kwargs.get("bicc_data_dir"), data_files)

    custom_dataset.__name__ = f"dataset_{name}"
    custom_dataset.__qualname__ = custom_dataset.__name__
    return custom_dataset
