"""``tune status`` / ``tune best``: the trials table, best parameters, importances, plots.

Plots (matplotlib, Agg) go to ``reports/<study>/``: ``history.png`` (objective per trial and
best so far), ``importance.png`` (parameter importances, from 2 complete trials on),
``intermediate.png`` (the pruner's metric per step), and ``trials.csv``.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bicc_lab.tune import study as st
from bicc_lab.tune.compare import objective_scale, objective_unit

if TYPE_CHECKING:
    from rich.console import Console

    from bicc_lab.tune.setup import TuneSetup

__all__ = ["best_json", "best_overrides", "importances", "print_status", "status_data", "write_best", "write_reports"]


def _complete(study: Any) -> list[Any]:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def importances(study: Any) -> tuple[dict[str, float] | None, str]:
    """Parameter importances (Optuna's default evaluator), or None and why not."""
    import optuna

    complete = _complete(study)
    if len(complete) < 2:
        return None, f"needs 2 complete trials, {len(complete)} so far"
    try:
        with warnings.catch_warnings():  # "importances will be equal" on tiny studies
            warnings.simplefilter("ignore")
            return dict(optuna.importance.get_param_importances(study)), ""
    except Exception as exc:  # noqa: BLE001 - e.g. every complete trial has the same params
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"


def _note(trial: Any) -> str:
    attrs = trial.user_attrs
    parts = []
    if attrs.get(st.A_DISCARDED):
        parts.append("discarded (asked beyond n_trials by a concurrent process)")
    if attrs.get(st.A_FAIL_REASON):
        parts.append(str(attrs[st.A_FAIL_REASON]))
    if attrs.get(st.A_PRUNED_AT) is not None:
        parts.append(f"pruned at step {attrs[st.A_PRUNED_AT]}")
    if attrs.get(st.A_DUPLICATE_OF) is not None:
        parts.append(f"same params as trial {attrs[st.A_DUPLICATE_OF]}")
    if attrs.get(st.A_RETRY_OF) is not None:
        parts.append(f"retry of trial {attrs[st.A_RETRY_OF]}")
    return "; ".join(parts)


def _state(trial: Any) -> str:
    name = trial.state.name
    if name == "FAIL" and trial.user_attrs.get(st.A_INTERRUPTED):
        return "FAIL*"  # interrupted: not counted
    return name


def _value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


def _param(value: Any) -> str:
    return "null" if value is None else _value(value)


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: those become None; other values pass through."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _shown(value: Any, scale: float) -> Any:
    """A study value as shown: an eval score in points (``scale`` 100), NaN as None."""
    value = _finite(value)
    return round(value * scale, 9) if isinstance(value, float) and scale != 1.0 else value


def _trial_record(t: Any, scale: float = 1.0) -> dict[str, Any]:
    attrs = t.user_attrs
    seconds = attrs.get(st.A_SECONDS)
    return {
        "number": t.number,
        "state": _state(t),
        "value": _shown(t.value, scale) if t.state.name == "COMPLETE" else None,
        "params": {k: _finite(v) for k, v in t.params.items()},
        "steps": attrs.get(st.A_STEPS),
        "max_steps": attrs.get(st.A_MAX_STEPS),
        "seconds": _finite(float(seconds)) if isinstance(seconds, int | float) else None,
        "note": _note(t),
    }


def status_data(setup: TuneSetup) -> dict[str, Any]:
    """The study as JSON-able data: trials, best trial, importances (``tune status --json``)."""
    from bicc_lab.tune.setup import open_study

    search = setup.search
    data: dict[str, Any] = {
        "study": setup.study_name,
        "storage": setup.storage_url,
        "objective": setup.objective_key,
        "score_unit": objective_unit(setup.objective_key),  # "percent": values in points; null: the metric's own
        "direction": search.direction,
        "n_trials": search.n_trials,
        "started": False,
    }
    if not st.storage_exists(setup.storage_url):
        return data
    try:
        study, _ = open_study(setup, create=False)
    except KeyError:
        return data
    trials = study.get_trials(deepcopy=False)
    complete = _complete(study)
    imp, why = importances(study)
    best = study.best_trial if complete else None
    scale = objective_scale(setup.objective_key)
    data.update(
        started=True,
        finished=sum(1 for t in trials if st.counts(t)),
        running=len(st.running(trials)),
        trials=[_trial_record(t, scale) for t in trials],
        best=None if best is None else {"number": best.number, "value": _shown(best.value, scale),
                                        "params": {k: _finite(v) for k, v in best.params.items()}},
        importances=imp,
        importances_note=why or None,
    )
    return data


def print_status(setup: TuneSetup, console: Console, *, reports: bool = True, as_json: bool = False) -> int:
    """Print the study's trials, best trial and importances (or, ``as_json``, the same as one
    JSON object); write the plots. Returns an exit code."""
    import json
    import sys

    from bicc_lab.tune.setup import open_study

    def say(text: str) -> None:
        if not as_json:
            console.print(text, markup=False, highlight=False, soft_wrap=True)

    if as_json:
        # Straight to stdout: Rich would wrap and highlight it. Plots are written as usual.
        data = status_data(setup)
        sys.stdout.write(json.dumps(data, indent=2, allow_nan=False, default=str) + "\n")
        if not (reports and data["started"]):
            return 0
    if not st.storage_exists(setup.storage_url):
        say(f"study {setup.study_name}: not started (no storage at {setup.storage_url}); "
            f"run `bicc-lab tune run {setup.sweep.path}`")
        return 0
    try:
        study, _ = open_study(setup, create=False)
    except KeyError:
        say(f"study {setup.study_name}: not started (not in {setup.storage_url})")
        return 0
    if not as_json:
        _print_trials(setup, study, console, say)
    if reports:
        try:
            written = write_reports(study, setup)
        except Exception as exc:  # noqa: BLE001
            say(f"warning: could not write the plots: {type(exc).__name__}: {exc}")
        else:
            if written:
                say("plots: " + ", ".join(str(p) for p in written))
    return 0


def _print_trials(setup: TuneSetup, study: Any, console: Console, say: Any) -> None:
    from rich.table import Table

    search = setup.search
    trials = study.get_trials(deepcopy=False)
    counted = sum(1 for t in trials if st.counts(t))
    running = len(st.running(trials))
    say(
        f"study {setup.study_name}: {counted}/{search.n_trials} trials finished, {running} running | "
        f"objective {setup.objective_key} ({search.direction}) | storage {setup.storage_url}"
    )
    keys = list(search.params)
    for t in trials:
        keys.extend(k for k in t.params if k not in keys)
    table = Table(title_justify="left", expand=False)
    scale = objective_scale(setup.objective_key)
    value_title = "value (%)" if scale != 1.0 else "value"  # an eval score: in points
    for column in ["#", "state", value_title, *keys, "steps", "time", "note"]:
        table.add_column(column, overflow="fold")
    for t in trials:
        attrs = t.user_attrs
        steps = attrs.get(st.A_STEPS)
        max_steps = attrs.get(st.A_MAX_STEPS)
        steps_text = f"{steps}/{max_steps}" if steps is not None and max_steps else _value(steps)
        seconds = attrs.get(st.A_SECONDS)
        table.add_row(
            str(t.number),
            _state(t),
            _value(_shown(t.value, scale)) if t.state.name == "COMPLETE" else "-",  # PRUNED keeps its last report
            *[_param(t.params[k]) if k in t.params else "" for k in keys],
            steps_text,
            f"{seconds:.0f}s" if isinstance(seconds, int | float) else "-",
            _note(t),
        )
    console.print(table)
    if any(_state(t) == "FAIL*" for t in trials):
        say("FAIL*: interrupted (its tune process died or was stopped): not counted, parameters retried")
    complete = _complete(study)
    if complete:
        best = study.best_trial
        say(f"best: trial {best.number}, {setup.objective_key} = {_show_value(setup, best.value)}")
        for key, value in best.params.items():
            say(f"  {key}: {_param(value)}")
    else:
        say("best: no complete trial yet")
    imp, why = importances(study)
    if imp is not None:
        say("importances: " + ", ".join(f"{k} {v:.2f}" for k, v in imp.items()))
    else:
        say(f"importances: n/a ({why})")


def write_reports(study: Any, setup: TuneSetup) -> list[Path]:
    """History / importance / intermediate-value plots and trials.csv in ``reports/<study>/``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    st.quiet_optuna()
    out = setup.reports_dir
    written: list[Path] = []
    trials = study.get_trials(deepcopy=False)
    if not trials:
        return written
    scale = objective_scale(setup.objective_key)  # an eval score: plotted and written in points
    objective_title = f"{setup.objective_key} (%)"
    out.mkdir(parents=True, exist_ok=True)

    def save(ax: Any, name: str, title: str) -> None:
        figure = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        figure.suptitle(title)
        figure.set_size_inches(8, 5)
        figure.tight_layout()
        path = out / name
        figure.savefig(path, dpi=100)
        plt.close(figure)
        written.append(path)

    complete = _complete(study)
    if complete:
        save(
            ovm.plot_optimization_history(
                study, target=lambda t: t.value * scale, target_name=objective_title
            ) if scale != 1.0 else ovm.plot_optimization_history(study, target_name=setup.objective_key),
            "history.png",
            f"{setup.study_name}: {setup.objective_key}",
        )
    imp, _ = importances(study)
    if imp is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ax = ovm.plot_param_importances(study)
        save(ax, "importance.png", f"{setup.study_name}: importances")
    if any(t.intermediate_values for t in trials):
        save(
            ovm.plot_intermediate_values(study),
            "intermediate.png",
            f"{setup.study_name}: pruner metric per step",
        )
    frame = study.trials_dataframe()
    if scale != 1.0 and "value" in frame.columns:
        frame["value"] = frame["value"] * scale  # an eval score: in points, as every output
    path = out / "trials.csv"
    frame.to_csv(path, index=False)
    written.append(path)
    return written


def _show_value(setup: TuneSetup, value: float) -> str:
    """A study value as printed: an eval score in points (``45.2 (%)``), else as it is."""
    scale = objective_scale(setup.objective_key)
    return f"{value * scale:.4g} (%)" if scale != 1.0 else f"{value:.6g}"


def best_overrides(study: Any) -> tuple[Any, dict[str, Any]]:
    """(best trial, its params as dotted-key overrides)."""
    best = study.best_trial
    return best, dict(best.params)


def _open_best(setup: TuneSetup) -> tuple[Any, Any, dict[str, Any]]:
    """(study, best trial, overrides); ValueError when there is no complete trial."""
    from bicc_lab.tune.setup import open_study

    if not st.storage_exists(setup.storage_url):
        raise ValueError(f"study {setup.study_name} has not started (no storage at {setup.storage_url})")
    try:
        study, _ = open_study(setup, create=False)
    except KeyError:
        raise ValueError(f"study {setup.study_name} is not in {setup.storage_url}") from None
    if not _complete(study):
        raise ValueError(f"study {setup.study_name} has no complete trial yet")
    best, overrides = best_overrides(study)
    return study, best, overrides


def write_best(setup: TuneSetup, out: Path | None) -> str:
    """The best params as a YAML overrides file (``--set-file``); written to ``out`` if given.

    Raises:
        ValueError: no complete trial.
    """
    import yaml

    from bicc_lab.fileio import write_atomic

    study, best, overrides = _open_best(setup)
    second = compare_with_runner_up(setup, study, best)
    header = (
        f"# bicc-lab tune best: study {setup.study_name}, trial {best.number}, "
        f"{setup.objective_key} = {_show_value(setup, best.value)} ({setup.search.direction})\n"
        + (f"# {second.verdict}\n" if second is not None else "# no runner-up with other parameters\n")
        + f"# apply with: bicc-lab sweep run SWEEP.yaml --set-file {out or 'THIS_FILE'}\n"
    )
    text = header + yaml.safe_dump(overrides, sort_keys=False, default_flow_style=False)
    if out is not None:
        write_atomic(out, text)
    return text


def best_json(setup: TuneSetup, out: Path | None = None) -> str:
    """``tune best --json``: the best trial and its overrides as one JSON object.

    Raises:
        ValueError: no complete trial.
    """
    import json

    study, best, overrides = _open_best(setup)
    second = compare_with_runner_up(setup, study, best)
    scale = objective_scale(setup.objective_key)
    return json.dumps({
        "study": setup.study_name,
        "objective": setup.objective_key,
        "direction": setup.search.direction,
        "score_unit": objective_unit(setup.objective_key),
        "trial": best.number,
        "value": _shown(best.value, scale),
        "params": {k: _finite(v) for k, v in overrides.items()},
        "output_path": None if out is None else str(out),
        "runner_up": second.as_dict(scale) if second is not None else None,
    }, indent=2, allow_nan=False)


def compare_with_runner_up(setup: TuneSetup, study: Any, best: Any) -> Any:
    """:func:`bicc_lab.tune.compare.compare_best` of the study's best trial, with the problem
    counts read from the trials' MLflow runs (``eval/<benchmark>/n``); None: no runner-up."""
    from bicc_lab.tune.compare import compare_best, runner_up

    second = runner_up(_complete(study), best, setup.search.direction)
    if second is None:
        return None
    parts = setup.objective_key.split("/")
    n_key = f"eval/{parts[1]}/n" if len(parts) == 3 else None

    def problems(trial: Any) -> int | None:
        run_id = trial.user_attrs.get(st.A_RUN_ID)
        if not run_id or n_key is None:
            return None
        try:
            run = setup.ctx.tracker(create=False).get(run_id)
        except Exception:  # noqa: BLE001 - no store: the verdict says the noise is unknown
            return None
        value = run.metrics.get(n_key) if run is not None else None
        return int(value) if value else None

    return compare_best(best.value, second, setup.objective_key, lambda r: (problems(best), problems(r)))
