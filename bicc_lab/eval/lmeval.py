"""lm-eval glue: the ``bicc_*`` task folder, per-doc scoring, task configs.

The task YAMLs in ``bicc_lab/eval/tasks/`` are static. Data is bound at run
time through lm-eval's own mechanisms, not by rewriting YAML:

- each task's ``custom_dataset`` (``tasks/utils.py``) builds the docs; lm-eval
  calls it with the task metadata, so ``TaskManager(metadata={"bicc_data_dir":
  ...})`` (CLI: ``--metadata '{"bicc_data_dir": "..."}'``) or
  ``$BICC_LAB_DATA_DIR`` chooses local files, else the hub ids are used;
- ``dataset_kwargs: {data_files: PATH}`` (set by the runner in the task config
  dict) points a task at one JSONL file (the synthetic arithmetic test set).

``task_config`` loads a task's YAML (``!function`` resolved) and sets the
number of samples k: ``repeats: k`` AND a ``take_first_k`` filter with the same
k (without the filter lm-eval silently keeps only the first repeat), followed by
``PrescoreFilter``, which grades all responses of the task at once (in
parallel above a size threshold) so that ``process_results`` is a cache lookup.

This module imports lm_eval at import time; ``bicc_lab.eval`` does not.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from lm_eval.api.filter import Filter

from bicc_lab.eval import scoring
from bicc_lab.eval.data import BENCHMARKS, Benchmark, get_benchmark
from bicc_lab.eval.metrics import maj_at_k, pass_at_k
from bicc_lab.tasks.data_dir import resolve_data_dir

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
FILTER_NAME = "all"
METADATA_DATA_DIR = "bicc_data_dir"


def task_names() -> list[str]:
    return [b.task for b in BENCHMARKS.values()]


def task_manager(data_dir: str | os.PathLike[str] | None = None, include_defaults: bool = False):
    """A ``TaskManager`` over the packaged ``bicc_*`` tasks (offline: it only
    indexes YAML). ``data_dir`` (else ``$BICC_LAB_DATA_DIR``) is passed to the
    tasks' datasets as metadata."""
    from lm_eval.tasks import TaskManager

    d = resolve_data_dir(data_dir)
    meta = {METADATA_DATA_DIR: str(d)} if d is not None else None
    return TaskManager(include_path=str(TASKS_DIR), include_defaults=include_defaults, metadata=meta)


# ------------------------------------------------------------------ scoring


def _responses(results: Sequence[Any]) -> list[str]:
    """process_results gets ``[filtered_resps]``: a list of k strings with the
    take_first_k filter, a bare string without it."""
    if not results:
        return []
    first = results[0]
    if isinstance(first, str):
        return [first]
    return [r if isinstance(r, str) else str(r) for r in first]


def score_doc(doc: dict[str, Any], responses: Sequence[str]) -> dict[str, Any]:
    """Per-doc metrics of k responses: avg_at_k, pass_at_1, pass_at_k, maj_at_k,
    and ``correct`` (one 0/1 per sample, kept for paired statistics)."""
    grader = doc.get("grader", "math")
    gold = doc["gold"]
    graded = [scoring.cached_grade(gold, r, grader) for r in responses]
    correct = [int(g.correct) for g in graded]
    k = len(correct)
    if k == 0:
        return {"avg_at_k": 0.0, "pass_at_1": 0.0, "pass_at_k": 0.0, "maj_at_k": 0.0, "correct": []}
    c = sum(correct)

    def eq(a: str, b: str) -> bool:
        return scoring.answers_equivalent(a, b, grader)

    return {
        "avg_at_k": c / k,
        "pass_at_1": pass_at_k(k, c, 1),
        "pass_at_k": pass_at_k(k, c, k),
        "maj_at_k": maj_at_k([g.answer for g in graded], correct, eq),
        "correct": correct,
    }


def process_results(doc: dict[str, Any], results: Sequence[Any]) -> dict[str, Any]:
    """lm-eval ``process_results`` for every ``bicc_*`` task."""
    return score_doc(doc, _responses(results))


def mean_of_lists(items: Iterable[Sequence[int]]) -> float:
    """Aggregation of the per-doc ``correct`` lists: mean over all samples."""
    flat = [x for item in items for x in item]
    return sum(flat) / len(flat) if flat else 0.0


class PrescoreFilter(Filter):
    """Grades every (doc, response) of a task in one batch (process pool above
    ``scoring.PARALLEL_THRESHOLD`` pairs) and fills the grading cache; passes
    the responses through unchanged."""

    def __init__(self, **kwargs: Any) -> None:
        self.workers = kwargs.pop("workers", None)
        super().__init__(**kwargs)

    def apply(self, resps, docs):
        resps = [list(r) if not isinstance(r, str) else [r] for r in resps]
        pairs, graders = [], []
        for r, doc in zip(resps, docs, strict=True):
            for text in r:
                pairs.append((doc["gold"], text if isinstance(text, str) else str(text)))
                graders.append(doc.get("grader", "math"))
        if pairs:
            scoring.score_many(pairs, grader=graders, workers=self.workers, cache=True)
        return resps


# ------------------------------------------------------------- task configs


def filter_list(k: int) -> list[dict[str, Any]]:
    return [
        {
            "name": FILTER_NAME,
            "filter": [{"function": "take_first_k", "k": int(k)}, {"function": PrescoreFilter}],
        }
    ]


def load_task_yaml(bench: Benchmark | str) -> dict[str, Any]:
    """The packaged YAML of a benchmark's task as a dict (includes merged,
    ``!function`` resolved)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    b = bench if isinstance(bench, Benchmark) else get_benchmark(bench)
    return load_yaml(TASKS_DIR / f"{b.task}.yaml", resolve_func=True)


def task_config(
    bench: Benchmark | str,
    *,
    k: int,
    generation_kwargs: dict[str, Any] | None = None,
    data_files: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """A complete inline task config for ``TaskManager.load``: the packaged
    YAML with k samples, updated generation kwargs and optional data file."""
    if int(k) < 1:
        raise ValueError(f"samples must be >= 1, got {k}")
    b = bench if isinstance(bench, Benchmark) else get_benchmark(bench)
    cfg = load_task_yaml(b)
    cfg["repeats"] = int(k)
    cfg["filter_list"] = filter_list(int(k))
    gen = copy.deepcopy(cfg.get("generation_kwargs") or {})
    gen.update(generation_kwargs or {})
    cfg["generation_kwargs"] = gen
    if data_files is not None:
        cfg["dataset_kwargs"] = {**(cfg.get("dataset_kwargs") or {}), "data_files": str(data_files)}
    return cfg
