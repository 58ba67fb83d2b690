"""A cell hook for the resume tests: SIGKILLs (or fails) its own worker at a planned point.

``<cell dir>/kill_plan`` holds one point per attempt, first line first; the worker of an
attempt takes the first line (rewriting the file without it) and dies there:

- ``log:N``       in the Trainer's ``on_log`` of step N (after metrics.jsonl got the step);
- ``train_end``   in ``on_train_end`` (training done, train_result.json not written yet);
- ``stop_reason`` when the worker asks the hook why training stopped (after the training
  metrics and the summary were logged, before the evaluation);
- ``raise:N``     a Python exception at step N (the attempt ends FAILED, not killed).

No line left: the attempt runs to the end.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class KillHook:
    def __init__(self, point: str) -> None:
        self.point = point

    def callbacks(self) -> list:
        from transformers import TrainerCallback

        point = self.point

        class Killer(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                if point == f"log:{state.global_step}":
                    _die()
                if point == f"raise:{state.global_step}":
                    raise RuntimeError(f"planned failure at step {state.global_step}")

            def on_train_end(self, args, state, control, **kwargs):
                if point == "train_end":
                    _die()

        return [Killer()]

    def stop_reason(self) -> None:
        if self.point == "stop_reason":
            _die()
        return None


def factory(spec: dict, cell_dir: Path) -> KillHook:
    plan = Path(cell_dir) / "kill_plan"
    lines = plan.read_text().splitlines() if plan.is_file() else []
    point = lines[0].strip() if lines else ""
    plan.write_text("".join(line + "\n" for line in lines[1:]))
    return KillHook(point)
