"""Trainer callbacks: per-step metrics to a JSONL file (and a hook), and a Rich progress bar."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback


def _numeric(logs: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in logs.items():
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int | float) and math.isfinite(float(value)):
            out[key] = float(value)
    return out


class MetricsFileCallback(TrainerCallback):
    """Append every logging step to ``metrics.jsonl`` and pass it to ``on_log``.

    On resume, lines past the checkpoint's step are dropped first: those steps are
    trained again, and a report must not count them twice.
    """

    def __init__(
        self,
        path: Path,
        on_log: Callable[[int, dict[str, float]], None] | None = None,
        truncate_after: int | None = None,
    ) -> None:
        self.path = Path(path)
        self._hook = on_log  # not `self.on_log`: that name is the Trainer hook below
        self.last: dict[str, float] = {}
        self._sums: dict[str, tuple[float, int]] = {}
        if self.path.exists():
            kept = []
            for line in self.path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a kill
                if truncate_after is not None and record.get("step", 0) <= truncate_after:
                    kept.append(line)
                    self._accumulate(record)
            self.path.write_text("".join(k + "\n" for k in kept))

    def _accumulate(self, metrics: dict[str, Any]) -> None:
        for key, value in metrics.items():
            if isinstance(value, int | float):
                total, count = self._sums.get(key, (0.0, 0))
                self._sums[key] = (total + float(value), count + 1)

    def mean(self, key: str) -> float | None:
        total, count = self._sums.get(key, (0.0, 0))
        return total / count if count else None

    def on_step_end(self, args, state, control, **kwargs):  # noqa: D102 - Trainer hook
        # The last step is always logged: when max_steps is not a multiple of logging_steps
        # (`--set train.max_steps=2` on a config that logs every 5), the final steps' metrics
        # would otherwise never reach metrics.jsonl, MLflow or the run's result.
        if state.max_steps and state.global_step >= state.max_steps:
            control.should_log = True
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: D102 - Trainer hook
        if not logs or not state.is_world_process_zero:
            return
        metrics = _numeric(logs)
        if "train_runtime" in metrics:  # the end-of-training summary, not a step
            return
        record = {"step": state.global_step, **metrics}
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        self._accumulate(metrics)
        self.last = metrics
        if self._hook is not None:
            self._hook(state.global_step, metrics)


class RichProgressCallback(TrainerCallback):
    """Training progress on stderr: step, reward, step time, ETA (plain lines in log files)."""

    def __init__(self, label: str = "train") -> None:
        self.label = label
        self._progress = None

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        from bicc_lab.progress import StepProgress

        self._progress = StepProgress(self.label, state.max_steps, fields={"reward": "-", "step_time": "-"})
        self._progress.update(state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        # A step that is logged gets its line from on_log, with its own reward: updating here
        # first printed "step N" with step N-1's reward (DefaultFlowCallback, first in the
        # list, has already set control.should_log for this step).
        if self._progress is not None and not getattr(control, "should_log", False):
            self._progress.update(state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self._progress is None or not logs:
            return
        fields = {}
        if "reward" in logs:
            fields["reward"] = f"{logs['reward']:.3f}"
        if "step_time" in logs:
            fields["step_time"] = f"{logs['step_time']:.2f}s"
        self._progress.update(state.global_step, **fields)

    def on_train_end(self, args, state, control, **kwargs):
        if self._progress is not None:
            self._progress.update(state.global_step)
            self._progress.close()
            self._progress = None
