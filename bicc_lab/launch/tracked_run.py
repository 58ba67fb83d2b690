"""The life of one tracked training run in MLflow, shared by a sweep cell's worker
(:mod:`bicc_lab.launch.worker`) and ``bicc-lab train`` (:mod:`bicc_lab.launch.single`):
its tags and params, the exact resume point, the replay of ``metrics.jsonl``, the
heartbeat thread, the checkpoint gate of held-back metrics, signal handling and the
KILLED/FAILED bookkeeping.

MLflow, transformers and the tracking store are imported inside the functions.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bicc_lab.launch import layout

ERROR_LINES = 30
STOP_REASON_TAG = "stop_reason"  # why a cell hook stopped training (tune's pruning)


class Terminated(BaseException):
    """Raised in the main thread by SIGTERM / SIGINT / SIGHUP or the parent's death."""


def _log(message: str) -> None:
    print(f"[bicc-lab worker {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _install_signal_handlers() -> None:
    def handler(signum: int, frame: Any) -> None:
        # Further signals must not interrupt the KILLED bookkeeping.
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        raise Terminated(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, handler)


class _Heartbeat:
    """Refreshes the ``heartbeat`` tag (and progress) from a background thread."""

    def __init__(self, beat: Callable[[], None], interval: float) -> None:
        self._beat = beat
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._beat()
            except Exception as exc:  # noqa: BLE001 - a missed beat is not fatal
                _log(f"heartbeat failed: {type(exc).__name__}: {exc}")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def run_tags(
    config: Any, *, digest: str, train_id: str, commit: str, attempts: int, output_dir: Path | None = None
) -> dict[str, str]:
    """The tags every training run starts with, a sweep cell's or a single ``train``'s:
    ``output_dir`` leads from the run to its checkpoints and final model (``eval --run ID``)."""
    import bicc_lab
    from bicc_lab.tracking.naming import Tag
    from bicc_lab.tracking.store import host_tags

    tags = {
        Tag.CONFIG_HASH: digest,
        Tag.TRAIN_ID: train_id,
        Tag.ARM: config.arm,
        Tag.VARIANT: config.variant,
        Tag.MODEL: config.model.name,
        Tag.SEED: str(config.seed),
        Tag.VERSION: bicc_lab.__version__,
        Tag.GIT_COMMIT: commit,
        Tag.ATTEMPTS: str(attempts),
        Tag.PHASE: "starting",
        Tag.PROGRESS: f"0/{config.train.max_steps}",
        Tag.HEARTBEAT: f"{time.time():.3f}",
        **host_tags(),
    }
    if commit and re.fullmatch(r"[0-9a-f]{7,40}(\+dirty)?", commit):  # not bicc-lab==<version>
        tags[Tag.SOURCE_COMMIT] = commit.split("+", 1)[0]
    if output_dir is not None:
        tags["output_dir"] = str(Path(output_dir).resolve())
    # Where it ran: a SLURM job (array task) or this machine's processes.
    job = os.environ.get("SLURM_JOB_ID")
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    tags["launcher"] = "slurm" if job else "local"
    if job:
        tags["job_id"] = f"{os.environ.get('SLURM_ARRAY_JOB_ID', job)}_{task}" if task else job
    from bicc_lab.models.released import model_source

    source = model_source(config.model.name)
    if source:  # converted weights say where they came from, in every run that used them
        tags[Tag.MODEL_SOURCE] = source
    return tags


def log_config_params(
    tracker: Any, run_id: str, config: Any, *, first_attempt: bool, say: Callable[[str], None]
) -> None:
    """Every config key as a param, except where it is tracked (the store itself says that).
    A later attempt that cannot re-log one (e.g. a data_dir changed between attempts) says so."""
    from bicc_lab.tracking.naming import flatten

    params = flatten(config.model_dump(mode="json", exclude={"tracking"}))
    try:
        tracker.log_params(run_id, params)
    except Exception as exc:  # noqa: BLE001 - MLflow refuses to change a logged param
        if first_attempt:
            raise
        say(f"params not re-logged ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})")


def resume_point(
    tracker: Any, run_id: str, directory: Path, *, new: bool, log: Callable[[str], None] = _log
) -> tuple[int, dict[str, set[int]]]:
    """Exact resume of a tracked run in ``directory``: the steps after ``kept`` (the
    finished run's last step, else the newest checkpoint's, else 0) are trained again, those
    up to it never are. Deletes the run's metric entries after ``kept`` where the store can
    (SQL) and returns ``(kept, {metric key: steps logged up to kept})``; a new run has none.
    `bicc-lab train` shares it, so that a resumed single run is as exact as a cell."""
    from bicc_lab.backends.trl.run import last_checkpoint, read_train_result

    result = read_train_result(directory)
    if result is not None:
        kept = result.steps
    else:
        checkpoint = last_checkpoint(directory)
        kept = int(Path(checkpoint).name.rsplit("-", 1)[1]) if checkpoint else 0
    logged = {} if new else tracker.metric_steps(run_id)
    stale = sum(1 for steps in logged.values() for step in steps if step > kept)
    if stale and tracker.can_rewrite_metrics:
        removed = tracker.drop_metric_steps_after(run_id, kept)
        log(f"dropped {removed} metric entries after step {kept} (trained again from there)")
        logged = {k: {x for x in v if x <= kept} for k, v in logged.items()}
    elif stale:
        log(
            f"warning: {stale} metric entries after step {kept} stay in MLflow: a server store "
            "cannot delete metrics, and those steps are trained again"
        )
    return kept, logged


def _replay_metrics(
    path: Path, batcher: Any, *, upto: int, logged: dict[str, set[int]]
) -> None:
    """Log the steps of ``metrics.jsonl`` up to ``upto`` that MLflow lacks: those logged but
    not yet flushed when an earlier attempt died (or all of them, for a new MLflow run over
    existing outputs). Later steps are trained again and logged then."""
    if not path.is_file():
        return
    import json

    from bicc_lab.tracking.naming import metric_key

    count = 0
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill (always past the checkpoint)
        step = record.pop("step", None)
        if not isinstance(step, int) or step > upto:
            continue
        values = {
            k: v
            for k, v in record.items()
            if isinstance(v, int | float)
            and not isinstance(v, bool)
            and step not in logged.get(metric_key(k), ())
        }
        if values:
            batcher.add(step, values)
            count += 1
    batcher.flush()
    if count:
        _log(f"replayed {count} logged steps from {path.name} that MLflow lacked")


def _checkpoint_gate(batcher: Any) -> Any:
    """A Trainer callback: a saved checkpoint releases the metrics held back up to its step."""
    from transformers import TrainerCallback

    class CheckpointGate(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):  # noqa: D102 - Trainer hook
            batcher.release(state.global_step)

    return CheckpointGate()


def _finish_badly(
    tracker: Any,
    run_id: str,
    batcher: Any,
    client_lock: threading.Lock,
    status: str,
    error: str | None,
    directory: Path,
) -> None:
    """Best effort: flush metrics, record the error, set the status (MLflow may be the problem)."""
    from bicc_lab.tracking.naming import Tag

    try:
        batcher.flush()
    except Exception as exc:  # noqa: BLE001
        _log(f"could not flush metrics: {exc}")
    try:
        with client_lock:
            tags = {Tag.PHASE: status.lower()}
            if error:
                tags[Tag.ERROR] = error[-7900:]
            tracker.set_tags(run_id, tags)
            if error:
                tracker.log_artifacts(run_id, [directory / layout.ERROR_FILE])
            sys.stdout.flush()
            sys.stderr.flush()
            tracker.log_artifacts(run_id, [directory / layout.LOG_FILE])
            tracker.set_status(run_id, status)
    except Exception as exc:  # noqa: BLE001
        _log(f"could not record status {status} in MLflow: {type(exc).__name__}: {exc}")
