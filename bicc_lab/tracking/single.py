"""MLflow runs outside a sweep: `bicc-lab train` (one run per output directory) and
`bicc-lab eval` (its metrics and per-problem table, into a run it names or a new one).

They carry the sweep's metric and tag names (``eval/<bench>/<metric>``, :class:`Tag`),
so ``mlflow ui`` shows a single run, a cell and a trial alike; only the ``role`` tag
differs: ``train`` and ``eval`` here, ``sweep`` and ``cell`` in a sweep (sweep status,
report and tune read ``role=cell`` runs only, so single runs never join a sweep's table).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from bicc_lab.tracking.naming import Tag
from bicc_lab.tracking.store import Tracker, eval_metrics

TRAIN_ROLE = "train"
EVAL_ROLE = "eval"
#: the MLflow experiment of `bicc-lab eval --model ...` when none is named
DEFAULT_EVAL_EXPERIMENT = "eval"
#: the per-problem table (``MlflowClient.log_table``): one row per problem, latest evaluation
SAMPLES_TABLE = "eval_samples.json"
#: a train output directory's record of its run (read by a resumed train and `eval --run`)
RECORD_FILE = "tracking.json"


def samples_table(evaluation: Any) -> dict[str, list[Any]]:
    """The per-problem rows of an ``EvalResult`` as columns: benchmark, problem_id, gold,
    n_correct, k, avg (100 n_correct / k, in points), maj_correct, correct (JSON list of 0/1), and the
    prompt and responses where the evaluation kept them."""
    rows = evaluation.problems
    table: dict[str, list[Any]] = {
        "benchmark": [r["benchmark"] for r in rows],
        "problem_id": [str(r["problem_id"]) for r in rows],
        "gold": [str(r["gold"]) for r in rows],
        "n_correct": [int(r["n_correct"]) for r in rows],
        "k": [int(r["k"]) for r in rows],
        "avg": [100.0 * r["n_correct"] / r["k"] if r["k"] else 0.0 for r in rows],  # points
        "maj_correct": [bool(r["maj_correct"]) for r in rows],
        "correct": [json.dumps([int(x) for x in r["correct"]]) for r in rows],
    }
    if rows and all("responses" in r for r in rows):
        table["prompt"] = [str(r.get("prompt") or "") for r in rows]
        table["responses"] = [json.dumps(r["responses"], ensure_ascii=False) for r in rows]
    return table


def log_evaluation(
    tracker: Tracker,
    run_id: str,
    evaluation: Any,
    *,
    step: int,
    files: Iterable[str | os.PathLike[str]] = (),
    logged: Mapping[str, set[int]] | None = None,
) -> None:
    """Log an evaluation to a run: the metrics a sweep cell logs (``eval/<bench>/<metric>``,
    ``eval/seconds``) at ``step`` (except those ``logged`` already has at that step, as a
    resumed cell does), the per-problem table (:data:`SAMPLES_TABLE`, replacing an earlier
    one: ``log_table`` would append to it) and ``files`` as artifacts."""
    scale = tracker.score_scale(run_id)  # points, or fractions on a run an older version logged to
    metrics = [m for m in eval_metrics(evaluation, step, scale=scale) if m.step not in (logged or {}).get(m.key, ())]
    tracker.log_metrics(run_id, metrics)
    log_problems_table(tracker, run_id, evaluation)
    tracker.log_artifacts(run_id, list(files))


def log_problems_table(tracker: Tracker, run_id: str, evaluation: Any) -> None:
    """The per-problem table (:data:`SAMPLES_TABLE`) of an evaluation, replacing an earlier
    one; a sweep cell logs it as a `train` run does."""
    if evaluation.problems:
        tracker.delete_artifact(run_id, SAMPLES_TABLE)
        table = samples_table(evaluation)
        tracker.call(lambda: tracker.client.log_table(run_id, data=table, artifact_file=SAMPLES_TABLE))


def create_run(tracker: Tracker, experiment: str, name: str, role: str, tags: Mapping[str, str]) -> tuple[str, str]:
    """A new top-level run ``name`` in ``experiment`` (created if missing); returns
    (experiment id, run id)."""
    experiment_id = tracker.ensure_experiment(experiment)
    run = tracker.call(
        lambda: tracker.client.create_run(experiment_id, run_name=name, tags={Tag.ROLE: role, **tags})
    )
    return experiment_id, run.info.run_id


def read_record(directory: str | os.PathLike[str]) -> dict[str, str] | None:
    """The ``tracking.json`` of a train output directory: tracking_uri, experiment_id,
    run_id; None when there is none (or it cannot be read)."""
    path = Path(directory) / RECORD_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), str) for k in ("tracking_uri", "run_id")):
        return None
    return data


def write_record(directory: str | os.PathLike[str], tracking_uri: str, experiment_id: str, run_id: str) -> Path:
    from bicc_lab.fileio import write_atomic

    text = json.dumps({"tracking_uri": tracking_uri, "experiment_id": experiment_id, "run_id": run_id}, indent=1)
    return write_atomic(Path(directory) / RECORD_FILE, text + "\n")
