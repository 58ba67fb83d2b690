"""The worker-side half of a trial: report a training metric, stop when pruned.

``bicc-lab tune`` writes ``"hook": {"factory": "bicc_lab.tune.hook:make_hook", ...}`` into a
trial's ``cell.json``; the worker (``bicc_lab.launch.worker``) builds the hook and passes
its Trainer callback to ``train_run``. At each logging step the callback

- stops training when the metric (or the loss) is NaN/inf: the trial is then FAIL;
- reports the metric to the Optuna trial, opened by id in this process
  (``optuna.trial.Trial(study, trial_id)``), and asks ``should_prune()``; when pruned it sets
  ``control.should_training_stop``, so the run ends after this step with fewer steps than
  ``train.max_steps``, and the worker skips evaluation.

What happened is written to ``trial_outcome.json`` in the cell directory, where the tune
process reads it when the worker exits.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from bicc_lab.launch import layout

OUTCOME_FILE = "trial_outcome.json"
FACTORY = "bicc_lab.tune.hook:make_hook"


def read_outcome(directory: str | Path) -> dict[str, Any]:
    return layout.read_json(Path(directory) / OUTCOME_FILE) or {}


def _lookup(logs: dict[str, Any], metric: str) -> Any:
    if metric in logs:
        return logs[metric]
    from bicc_lab.tracking.naming import metric_key

    wanted = metric_key(metric)
    for key, value in logs.items():
        if metric_key(key) == wanted:
            return value
    return None


def _retry(fn: Any, attempts: int = 5) -> Any:
    delay = 0.5
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - a locked SQLite file, a network blip
            if attempt == attempts - 1:
                raise
            print(f"[bicc-lab trial] storage busy ({type(exc).__name__}); retrying", flush=True)
            time.sleep(delay)
            delay *= 2
    return None


class TrialHook:
    """Built by the worker from the ``hook`` entry of ``cell.json``."""

    def __init__(self, spec: dict[str, Any], directory: Path) -> None:
        import optuna

        from bicc_lab.spec.sweep_sections import PrunerConfig
        from bicc_lab.tune.study import make_pruner, open_storage, quiet_optuna

        quiet_optuna()
        self.directory = Path(directory)
        self.metric: str = spec.get("metric") or "reward"
        self.trial_number = int(spec["trial_number"])
        pruner_spec = spec.get("pruner")
        pruner_config = PrunerConfig.model_validate(pruner_spec) if pruner_spec else None
        storage = open_storage(spec["storage"])
        study = _retry(
            lambda: optuna.load_study(
                study_name=spec["study"],
                storage=storage,
                sampler=optuna.samplers.RandomSampler(),  # no sampling here
                pruner=make_pruner(pruner_config, int(spec.get("max_steps") or 1)),
            )
        )
        self.trial = _retry(lambda: optuna.trial.Trial(study, int(spec["trial_id"])))
        self.reported = 0
        self._stop: str | None = None
        self._write({"state": "running", "reported": 0})

    def _write(self, payload: dict[str, Any]) -> None:
        layout.write_atomic(self.directory / OUTCOME_FILE, json.dumps(payload))

    def callbacks(self) -> list[TrainerCallback]:
        return [_TrialCallback(self)]

    def stop_reason(self) -> str | None:
        return self._stop

    def on_metrics(self, step: int, logs: dict[str, Any]) -> bool:
        """Handle one logging step; True stops training."""
        if self._stop is not None:
            return True
        loss = logs.get("loss")
        value = _lookup(logs, self.metric)
        for name, number in ((self.metric, value), ("loss", loss)):
            if isinstance(number, int | float) and not math.isfinite(float(number)):
                self._stop = f"{name} is {number} at step {step}"
                self._write({"state": "fail", "reason": self._stop, "step": step, "reported": self.reported})
                return True
        if not isinstance(value, int | float) or isinstance(value, bool):
            return False
        _retry(lambda: self.trial.report(float(value), step))
        self.reported += 1
        if _retry(self.trial.should_prune):
            self._stop = f"pruned at step {step} ({self.metric} = {float(value):.4g})"
            self._write(
                {"state": "pruned", "reason": self._stop, "step": step, "value": float(value),
                 "reported": self.reported}
            )
            return True
        self._write({"state": "running", "step": step, "reported": self.reported})
        return False


class _TrialCallback(TrainerCallback):
    def __init__(self, hook: TrialHook) -> None:
        self.hook = hook

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: D102 - Trainer hook
        if not logs or "train_runtime" in logs or not state.is_world_process_zero:
            return
        if self.hook.on_metrics(state.global_step, logs):
            control.should_training_stop = True


def make_hook(spec: dict[str, Any], directory: Path) -> TrialHook:
    return TrialHook(spec, directory)
