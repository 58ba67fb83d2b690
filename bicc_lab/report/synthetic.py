"""Fill an MLflow store with sweep runs of known values, laid out like ``sweep run`` does.

For the report's tests and its scale benchmark: experiment, parent run (``role=sweep``),
one child run per cell with the worker's tags, params, per-step training metrics,
``eval/<bench>/<metric>`` values and the ``eval.json`` artifact (``EvalResult`` format).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bicc_lab.launch.layout import EVAL_FILE
from bicc_lab.tracking.naming import (
    Tag,
    eval_metric_key,
    flatten,
)
from bicc_lab.units import SCORE_SCALE, SCORE_UNIT, is_score

__all__ = ["SyntheticCell", "fill_store", "eval_payload"]

_ARM_FLAGS = {"base": (False, False), "rcc": (False, True), "bicc": (True, False), "bicc+rcc": (True, True)}


@dataclass
class SyntheticCell:
    """One child run: its grid values, per-problem correctness and training curves."""

    model: str
    variant: str
    arm: str
    seed: int
    correct: Mapping[str, Sequence[Sequence[bool]]] = field(default_factory=dict)  # bench -> problems -> k samples
    eval_metrics: Mapping[str, Mapping[str, float]] | None = None  # bench -> {avg@4: ...}; default from correct
    history: Mapping[str, Sequence[tuple[int, float]]] = field(default_factory=dict)
    summary: Mapping[str, float] = field(default_factory=dict)  # e.g. train/wall_time_s
    status: str = "FINISHED"
    # the unit the run's eval scores are logged in: "percent" (tagged, as runs are now) or
    # None (fractions, no tag: a run an older version logged); the values above are fractions
    score_unit: str | None = "percent"
    axes: Mapping[str, Any] = field(default_factory=dict)  # extra grid axes
    artifact: bool = True
    error: str = ""  # the worker's error tag of a FAILED run
    config: Mapping[str, Any] | None = None  # logged as the run's config.yaml artifact
    config_hash: str = ""  # default: one per cell; the same value marks a retry of a cell
    params: Mapping[str, Any] = field(default_factory=dict)  # extra run params (dotted keys)

    @property
    def name(self) -> str:
        return f"{self.model}/{self.variant}/{self.arm}/s{self.seed}"


def eval_payload(correct: Mapping[str, Sequence[Sequence[bool]]]) -> dict[str, Any]:
    """``EvalResult.to_dict()``-shaped JSON for per-problem correctness lists."""
    from bicc_lab.eval.metrics import aggregate

    benchmarks: dict[str, Any] = {}
    problems: list[dict[str, Any]] = []
    for bench, rows in correct.items():
        k = len(rows[0]) if rows else 0
        items = []
        for i, samples in enumerate(rows):
            c = [bool(x) for x in samples]
            items.append({
                "benchmark": bench, "problem_id": f"{bench}-{i}", "doc_id": i, "gold": "0",
                "n_correct": sum(c), "k": len(c), "correct": c, "maj_correct": sum(c) * 2 > len(c),
            })
        agg = aggregate(items)
        benchmarks[bench] = {
            "benchmark": bench, "task": f"bicc_{bench}", "n": len(items), "k": k,
            "metrics": {key: v for key, v in agg.items() if key != "n"}, "source": "synthetic",
            "distinct_fraction": None, "lm_eval": {},
        }
        problems.extend(items)
    return {"format": 1, "benchmarks": benchmarks, "problems": problems, "config": {}, "warnings": [], "seconds": 0.0}


def fill_store(
    uri: str,
    experiment: str,
    cells: Sequence[SyntheticCell],
    *,
    sweep: str | None = None,
    params: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Log ``cells`` into ``experiment`` at ``uri``; returns ``{"experiment_id", "parent", "runs"}``."""
    from mlflow.entities import Metric, Param

    from bicc_lab.tracking.store import Tracker

    sweep = sweep or experiment
    tracker = Tracker(uri)
    exp_id = tracker.ensure_experiment(experiment)
    parent = tracker.ensure_parent(exp_id, sweep, {Tag.N_CELLS: str(len(cells))})
    client = tracker.client
    run_ids = []
    base_params = dict(params or {})
    for i, cell in enumerate(cells):
        bicc, rcc = _ARM_FLAGS.get(cell.arm, (False, False))
        axes = {"model.name": cell.model, "variant": cell.variant, "bicc.enabled": bicc,
                "rcc.enabled": rcc, "seed": cell.seed, **dict(cell.axes)}
        tags = {
            Tag.ROLE: "cell", Tag.PARENT_RUN_ID: parent, Tag.SWEEP: sweep,
            Tag.CELL_ID: f"c{i:05d}", Tag.CELL_NAME: cell.name, Tag.CONFIG_HASH: cell.config_hash or f"h{i:05d}",
            Tag.ARM: cell.arm, Tag.VARIANT: cell.variant, Tag.MODEL: cell.model,
            Tag.SEED: str(cell.seed), Tag.AXES: json.dumps(axes), Tag.STATUS: cell.status,
        }
        if cell.error:
            tags[Tag.ERROR] = cell.error
        if cell.score_unit is not None:
            tags[Tag.SCORE_UNIT] = cell.score_unit
        scale = SCORE_SCALE if cell.score_unit == SCORE_UNIT else 1.0
        run = client.create_run(exp_id, run_name=cell.name, tags=tags)
        rid = run.info.run_id
        ts = int(time.time() * 1000)
        metrics = [Metric(k, float(v), ts, step) for k, pts in cell.history.items() for step, v in pts]
        metrics += [Metric(k, float(v), ts, 0) for k, v in cell.summary.items()]
        evals = cell.eval_metrics
        if evals is None:
            payload = eval_payload(cell.correct)
            evals = {b: {**r["metrics"], "n": r["n"]} for b, r in payload["benchmarks"].items()}
        for bench, values in evals.items():
            metrics += [Metric(eval_metric_key(bench, key), float(v) * (scale if is_score(key) else 1.0), ts, 0)
                        for key, v in values.items()]
        flat = flatten({**base_params, "variant": cell.variant, "seed": cell.seed,
                        "model": {"name": cell.model}, "bicc": {"enabled": bicc}, "rcc": {"enabled": rcc}})
        flat.update({k: str(v) for k, v in cell.params.items()})
        plist = [Param(k, v) for k, v in flat.items()]
        for j in range(0, max(len(metrics), len(plist), 1), 1000):
            client.log_batch(rid, metrics=metrics[j : j + 1000], params=plist[j : j + 100] if j == 0 else [],
                             synchronous=True)
        for j in range(100, len(plist), 100):
            client.log_batch(rid, params=plist[j : j + 100], synchronous=True)
        if cell.artifact and cell.correct:
            client.log_text(rid, json.dumps(eval_payload(cell.correct)), EVAL_FILE)
        if cell.config is not None:
            import yaml

            client.log_text(rid, yaml.safe_dump(dict(cell.config), sort_keys=False), "config.yaml")
        if cell.status != "RUNNING":
            client.set_terminated(rid, status=cell.status)
        run_ids.append(rid)
    return {"experiment_id": exp_id, "parent": parent, "runs": run_ids}
