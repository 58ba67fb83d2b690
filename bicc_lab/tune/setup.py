"""A loaded study: ``prepare`` reads a study file into a :class:`TuneSetup`, ``open_study``
opens its Optuna study. Shared by the study loop (:mod:`bicc_lab.tune.runner`) and the
views (:mod:`bicc_lab.tune.views`), which do not import each other's way round.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bicc_lab.errors import UserError
from bicc_lab.launch import layout
from bicc_lab.spec import Sweep, load_sweep
from bicc_lab.sweep.context import SweepContext
from bicc_lab.tracking.naming import eval_metric_key, metric_key, project_root
from bicc_lab.tune import study as st

__all__ = ["TuneError", "TuneSetup", "objective_key", "open_study", "prepare"]


class TuneError(UserError):
    """A user mistake or an unusable study (one line, exit code 2)."""


@dataclass
class TuneSetup:
    """A loaded study: the sweep, where it is tracked, stored and reported."""

    sweep: Sweep
    ctx: SweepContext
    study_name: str
    storage_url: str
    objective_key: str
    study_dir: Path
    reports_dir: Path

    @property
    def search(self) -> Any:
        return self.sweep.spec.search

    @property
    def base_config(self) -> Any:
        return self.sweep.base_config


def objective_key(objective: str, config: Any) -> str:
    """The MLflow metric name of ``search.objective`` as the worker logs it.

    ``eval/arith_test/avg@4`` -> ``eval/arith/avg_at_4`` (benchmark aliases resolved, ``@``
    spelled ``_at_``); a training metric keeps its name (``reward``).
    """
    parts = objective.split("/")
    if parts[0] != "eval" or len(parts) != 3:
        return metric_key(objective)
    from bicc_lab.eval.data import EvalDataError, get_benchmark

    try:
        bench = get_benchmark(parts[1]).name
    except EvalDataError as exc:
        raise TuneError(f"search.objective '{objective}': {exc}") from None
    evaluated = []
    for name in config.eval.benchmarks:
        try:
            evaluated.append(get_benchmark(name).name)
        except EvalDataError:
            evaluated.append(name)
    if config.eval.enabled and bench not in evaluated:
        raise TuneError(
            f"search.objective '{objective}': benchmark '{bench}' is not evaluated "
            f"(eval.benchmarks: {', '.join(config.eval.benchmarks)})"
        )
    metric = parts[2].replace("_at_", "@")
    match = re.fullmatch(r"(avg|maj)@(\d+)", metric)
    if match and int(match.group(2)) != config.eval.samples:
        raise TuneError(
            f"search.objective '{objective}': eval.samples is {config.eval.samples}, "
            f"so the logged metric is {match.group(1)}@{config.eval.samples}"
        )
    return eval_metric_key(bench, metric)


def prepare(
    path: str | Path,
    overrides: list[str] | None = None,
    *,
    runs_dir: str | Path | None = None,
    reports_dir: str | Path | None = None,
) -> TuneSetup:
    """Load a study file. Raises SpecError (bad file) or TuneError (not a usable study)."""
    sweep = load_sweep(path, overrides)
    search = sweep.spec.search
    if search is None:
        raise TuneError(
            f"{path} has no 'search:' block; `bicc-lab tune` needs one (see sweeps/rcc_tune.yaml)"
        )
    if len(sweep.cells) != 1:
        raise TuneError(
            f"{path} expands to {len(sweep.cells)} cells; a study tunes ONE config "
            "(move the grid axes to search.params, or fix them under set:)"
        )
    base_ctx = SweepContext.of(sweep, runs_dir)
    name = search.study_name or sweep.name
    experiment = sweep.spec.tracking.experiment or sweep.base_config.tracking.experiment or name
    ctx = SweepContext(sweep=sweep, uri=base_ctx.uri, experiment=experiment, runs_dir=base_ctx.runs_dir, uri_from=base_ctx.uri_from)
    study_dir = layout.sweep_dir(ctx.runs_dir, name)
    reports_root = Path(reports_dir) if reports_dir else project_root() / "reports"
    return TuneSetup(
        sweep=sweep,
        ctx=ctx,
        study_name=name,
        storage_url=st.resolve_storage(search, study_dir),
        objective_key=objective_key(search.objective, sweep.base_config),
        study_dir=study_dir,
        reports_dir=reports_root / layout.safe_name(name),
    )


def open_study(setup: TuneSetup, *, create: bool) -> tuple[Any, Any]:
    """(study, storage): the Optuna study (created when ``create``) with the configured
    sampler and pruner, and the storage it lives in."""
    import optuna

    from bicc_lab.tracking.check import check_optuna_storage

    st.quiet_optuna()
    check_optuna_storage(setup.storage_url, create=create)  # one line, not a sqlalchemy traceback
    storage = st.open_storage(setup.storage_url)
    search = setup.search
    pruner = st.make_pruner(search.pruner, setup.base_config.train.max_steps)
    if create:
        study = optuna.create_study(
            study_name=setup.study_name,
            storage=storage,
            direction=search.direction,
            pruner=pruner,
            load_if_exists=True,
        )
    else:
        study = optuna.load_study(study_name=setup.study_name, storage=storage, pruner=pruner)
    study.sampler = st.make_sampler(search.sampler, len(study.get_trials(deepcopy=False)))
    return study, storage
