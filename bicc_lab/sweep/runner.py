"""``sweep run``: hand every unfinished cell to the sweep's launcher, watch the cells, summarise.

The launcher (``launch.kind``: local processes or SLURM jobs, see ``bicc_lab.launch``) and
the loop (``bicc_lab.launch.schedule.run_jobs``) are shared with ``tune run``. A cell whose
SLURM job from an earlier ``sweep run`` is still queued or running is re-attached, not
submitted again.

Exactly-once: a cell is skipped when MLflow has a FINISHED child run with its config
hash; otherwise its worker reuses the cell's recorded MLflow run (``mlflow_run_id``), so
a crash never makes a second run. The per-cell ``flock`` keeps two ``sweep run``
processes off the same cell: a cell locked by another process waits here until the lock
is free, then its worker finds it FINISHED and exits at once (or resumes it).
"""

from __future__ import annotations

import json
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console

from bicc_lab.console import console as default_console
from bicc_lab.launch import LauncherError, layout, make_launcher
from bicc_lab.launch.base import (
    EXIT_BUSY,
    EXIT_ELSEWHERE,
    EXIT_FAILED,
    EXIT_KILLED,
    EXIT_OK,
    Job,
    first_error_line,
)
from bicc_lab.launch.locks import LOCK_NAME, is_locked
from bicc_lab.launch.schedule import DETACHED, INTERRUPTED, LEFT_RUNNING, run_jobs
from bicc_lab.launch.worker import KILLED_BY_TAG
from bicc_lab.sweep import state as st
from bicc_lab.sweep.context import SweepContext, store_start_lock
from bicc_lab.sweep.display import Row, fmt_duration, make_display

__all__ = ["SweepOutcome", "run_sweep"]

EXIT_INTERRUPTED = 130


@dataclass
class SweepOutcome:
    finished: list[str] = field(default_factory=list)  # names of cells finished in this run
    already: list[str] = field(default_factory=list)  # finished before
    failed: dict[str, str] = field(default_factory=dict)  # name -> last error line
    failed_before: dict[str, str] = field(default_factory=dict)
    killed: list[str] = field(default_factory=list)
    killed_why: dict[str, str] = field(default_factory=dict)  # name -> "worker killed by signal SIGKILL ..."
    elsewhere: list[str] = field(default_factory=list)
    interrupted: bool = False
    left_running: int = 0  # SLURM jobs left in the queue (--detach, or Ctrl-C and "leave them")
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return EXIT_INTERRUPTED
        # (killed without Ctrl-C here: a job cancelled with scancel; the cell is not done)
        return 1 if (self.failed or self.failed_before or self.killed) else 0


def cell_spec(
    ctx: SweepContext, cell: Any, experiment_id: str, parent_run_id: str, commit: str
) -> dict[str, Any]:
    return {
        "format": 1,
        "sweep": ctx.sweep.name,
        "sweep_file": str(ctx.sweep.path),
        "name": cell.name,
        "cell_id": cell.cell_id,
        "config_hash": cell.config_hash,
        "train_id": cell.train_id,
        "index": cell.index,
        "axes": cell.axes,
        "config": cell.config.model_dump(mode="json"),
        "tracking_uri": ctx.uri,
        "experiment_id": experiment_id,
        "parent_run_id": parent_run_id,
        "git_commit": commit,
    }


def prebuild_models(cells: list[Any], say: Callable[[str], None]) -> dict[str, str]:
    """Build each distinct tiny model once, here, before workers start (they share the cache).

    Returns ``{cell_id: error}`` for the cells whose model could not be built: launching
    them would only repeat the same (minutes-long) failed build in every worker.
    """
    from bicc_lab.spec.sections import tiny_preset

    tiny = [c for c in cells if tiny_preset(c.config.model.name) is not None]
    if not tiny:
        return {}
    from bicc_lab.backends.trl.run import resolve_model
    from bicc_lab.models.tiny import cache_key

    outcome: dict[str, str | None] = {}
    failed: dict[str, str] = {}
    for cell in tiny:
        try:
            key = cache_key(cell.config.model.tiny)
        except Exception:  # noqa: BLE001 - the cell will report its own error
            continue
        if key not in outcome:
            start = time.time()
            say(f"preparing the tiny model {key} (built once, shared by the cells) ...")
            try:
                path = resolve_model(cell.config, progress=True)  # minutes: show it
                outcome[key] = None
                say(f"tiny model ready in {fmt_duration(time.time() - start)}: {path}")
            except Exception as exc:  # noqa: BLE001
                outcome[key] = f"building the tiny model failed: {type(exc).__name__}: {exc}"
                say(f"error: {outcome[key]}")
        if outcome[key]:
            failed[cell.cell_id] = outcome[key]
    return failed


def run_sweep(
    ctx: SweepContext,
    *,
    max_parallel: int,
    retry_failed: bool = False,
    console: Console | None = None,
    live: bool | None = None,
    grace_s: float = 10.0,
    poll_s: float = 0.5,
    launcher_kind: str | None = None,
    detach: bool = False,
    ask_cancel: Callable[[int], bool] | None = None,
    progress_every_s: float | None = 30.0,
    progress_every_steps: int | None = None,
) -> SweepOutcome:
    """Run every unfinished cell through the sweep's launcher (``launch.kind``, or
    ``launcher_kind``); see the module docstring. ``detach``: submit and return (SLURM)."""
    import bicc_lab
    from bicc_lab.tracking.naming import Tag, git_commit

    console = console or default_console()
    sweep = ctx.sweep
    outcome = SweepOutcome()
    t_start = time.time()
    launch = launch_config(sweep, launcher_kind)
    if detach and launch.kind != "slurm":
        raise LauncherError("--detach needs the slurm launcher (local cells stop with `sweep run`)")

    ctx.check_store(create=True)
    commit = git_commit()
    with store_start_lock(ctx.sweep_dir):
        # Store creation too: a second `sweep run` started at once waits here, then finds it.
        tracker = ctx.tracker(create=True)
        experiment_id = tracker.ensure_experiment(ctx.experiment)
        parent_run_id = tracker.ensure_parent(
            experiment_id,
            sweep.name,
            {
                Tag.N_CELLS: str(len(sweep.cells)),
                Tag.VERSION: bicc_lab.__version__,
                Tag.GIT_COMMIT: commit,
                Tag.AXES: json.dumps({a.key: a.values for a in sweep.axes}, default=str),
            },
        )
        tracker.set_status(parent_run_id, "RUNNING")
        try:
            tracker.log_artifacts(parent_run_id, [sweep.path])
        except Exception:  # noqa: BLE001 - the sweep file is a convenience copy
            pass

    launcher = make_launcher(
        launch,
        gpus=sweep.spec.gpus,
        max_parallel=max_parallel,
        sweep_dir=ctx.sweep_dir,
        job_name=sweep.name,
        vllm_server=sweep.base_config.train.vllm_mode == "server",
        model=sweep.base_config.model.name,
    )
    statuses = st.cell_statuses(sweep, ctx.runs_dir, tracker.cell_runs(experiment_id))
    rows: dict[str, Row] = {}
    queue: deque[Any] = deque()
    by_id = {s.cell.cell_id: s for s in statuses}
    attached = 0
    for s in statuses:
        cell = s.cell
        row = Row(
            name=cell.name,
            cell_id=cell.cell_id,
            state=s.state,
            step=s.step,
            max_steps=s.max_steps,
            reward=s.progress.reward,
        )
        rows[cell.cell_id] = row
        if s.state == st.FINISHED:
            row.state = "done before"
            outcome.already.append(cell.name)
            continue
        job = launcher.attach(cell.cell_id, s.directory)
        if job is not None:  # a SLURM job left by an earlier `sweep run` is still queued/running
            row.state, row.note = "attached", job.describe()
            attached += 1
        elif s.state == st.FAILED and not retry_failed:
            row.state = "failed before"
            row.note = s.note[:120]
            outcome.failed_before[cell.name] = s.note
        elif s.state == st.ELSEWHERE:
            row.note = s.note
            outcome.elsewhere.append(cell.name)
        else:
            if s.state == st.RUNNING:
                row.state = "waiting"
                row.note = "locked by another process"
            else:
                row.state = "queued" if s.state == st.PENDING else s.state
                if s.state == st.KILLED and s.note:  # e.g. its worker was OOM-killed: resumed now
                    row.note = f"{s.note}; resuming"
            queue.append(cell)

    n_total = len(sweep.cells)
    at_once = f"{max_parallel} at a time" if launch.kind == "local" else "SLURM jobs"
    title = (
        f"sweep {sweep.name}: {n_total} cells, {len(queue)} to run, {len(outcome.already)} finished before"
        + (f", {attached} re-attached" if attached else "")
        + f" | {at_once} | MLflow {ctx.uri} (experiment {ctx.experiment}) | {ctx.sweep_dir}"
    )
    # (lines only: a training cell's progress every N s or N steps, and the sweep's ETA)
    display = make_display(console, title, live, parallel=max_parallel if launch.kind == "local" else len(queue) or 1,
                           every_s=progress_every_s, every_steps=progress_every_steps)

    def mark_if_running(job: Job, status: str, error: str | None, extra: dict[str, str] | None = None) -> None:
        """The worker could not record its end itself (SIGKILL, crash): do it here."""
        run_id = layout.read_text(job.directory / layout.RUN_ID_FILE)
        if not run_id:
            return
        try:
            run = tracker.get(run_id)
            if run is not None and run.status == "RUNNING":
                tags = {Tag.PHASE: status.lower(), **(extra or {})}
                if error:
                    tags[Tag.ERROR] = error
                tracker.set_tags(run_id, tags)
                tracker.set_status(run_id, status)
        except Exception as exc:  # noqa: BLE001
            display.say(f"warning: could not mark {job.key} {status} in MLflow: {exc}")

    class Source:
        """The sweep's queue of cells, for :func:`run_jobs`."""

        def next_cells(self, free: int) -> list[tuple[str, Any]]:
            cells = []
            tried = 0
            while len(cells) < free and queue and tried < len(queue):
                cell = queue.popleft()
                directory = st.cell_directory(ctx.runs_dir, sweep, cell)
                if is_locked(directory / LOCK_NAME):
                    queue.append(cell)  # another process runs it: wait for its lock
                    tried += 1
                    continue
                directory.mkdir(parents=True, exist_ok=True)
                layout.write_atomic(
                    directory / layout.CELL_SPEC,
                    json.dumps(
                        cell_spec(ctx, cell, experiment_id, parent_run_id, commit),
                        indent=1,
                        default=str,
                    ),
                )
                layout.write_atomic(directory / layout.PHASE_FILE, "starting\n")
                cells.append((cell.cell_id, directory))
            return cells

        def more(self) -> bool:
            return bool(queue)

        def on_submit(self, job: Job) -> None:
            row = rows[job.key]
            row.state, row.gpu = "starting", job.gpu
            row.note = job.describe() if job.job_id else ""

        def on_exit(self, job: Job, code: int, stopping: bool) -> None:
            row = rows[job.key]
            cell = by_id[job.key].cell
            row.gpu = None
            progress = layout.read_progress(job.directory)
            row.observe(progress.step, progress.reward, time.time())
            row.eta_s = None
            if code == EXIT_OK or progress.phase == "finished":
                # (a SIGTERM that lands while a finished worker shuts down changes only its exit code)
                row.state = "finished"
                row.note = fmt_duration(time.time() - job.started)
                outcome.finished.append(cell.name)
            elif code == EXIT_BUSY:
                row.state = "waiting"
                row.note = "locked by another process"
                queue.append(cell)
            elif code == EXIT_ELSEWHERE:
                row.state = "running elsewhere"
                outcome.elsewhere.append(cell.name)
            elif code == EXIT_FAILED:
                error = first_error_line(job.directory)
                row.state = "failed"
                row.note = f"{error[:100]} (log: {launcher.logs(job)})"
                outcome.failed[cell.name] = error
                mark_if_running(job, "FAILED", error)
            elif stopping or code == EXIT_KILLED or code == -signal.SIGTERM:
                row.state = "killed"
                outcome.killed.append(cell.name)
                mark_if_running(job, "KILLED", None)
            elif code < 0 and -code in _KILL_SIGNALS:
                # The worker alone was killed from outside (the OOM killer sends SIGKILL): not an
                # error of the cell, so it is KILLED, and the same command resumes it.
                why = f"worker killed by signal {signal.Signals(-code).name} (out of memory?)"
                row.state, row.note = "killed", f"{why}; the same command resumes it"
                outcome.killed.append(cell.name)
                outcome.killed_why[cell.name] = why
                mark_if_running(job, "KILLED", None, {KILLED_BY_TAG: why})
            else:
                how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
                error = f"worker died ({how}); see {launcher.logs(job)}"
                row.state = "failed"
                row.note = error
                outcome.failed[cell.name] = error
                mark_if_running(job, "FAILED", error)

        def on_tick(self) -> None:
            now = time.time()
            for job in launcher.running.values():
                row = rows[job.key]
                progress = layout.read_progress(job.directory)
                if progress.phase in ("starting", "training", "evaluating", "logging"):
                    row.state = progress.phase
                row.observe(progress.step, progress.reward, now, progress.tokens)
            display.update(list(rows.values()))

    display.start()
    previous_term = signal.getsignal(signal.SIGTERM)
    from bicc_lab.sweep.cancel import clear_runner_pid, write_runner_pid

    write_runner_pid(ctx.sweep_dir)  # `sweep cancel` stops this process first (SIGTERM)
    try:
        if queue:
            # (run_jobs turns SIGTERM into a stop; before it, the default would kill us mid-write)
            signal.signal(signal.SIGTERM, signal.default_int_handler)
            try:
                unbuildable = prebuild_models(list(queue), display.say)
            except KeyboardInterrupt:
                outcome.interrupted = True
                queue.clear()  # nothing was launched yet
                unbuildable = {}
            finally:
                signal.signal(signal.SIGTERM, previous_term)
            for cell in [c for c in queue if c.cell_id in unbuildable]:
                queue.remove(cell)  # not launched; not FAILED in MLflow: the next run tries again
                row = rows[cell.cell_id]
                row.state, row.note = "failed", unbuildable[cell.cell_id][:120]
                outcome.failed[cell.name] = unbuildable[cell.cell_id]
        if outcome.interrupted:  # Ctrl-C while the model was built: leave attached jobs alone
            launcher.release()
            result = LEFT_RUNNING if launcher.detachable else INTERRUPTED
        else:
            result = run_jobs(
                launcher,
                Source(),
                # SLURM queues what the cluster cannot run yet (launch.array_parallelism caps arrays)
                max_parallel=max_parallel if launch.kind == "local" else len(sweep.cells),
                poll_s=poll_s,
                grace_s=grace_s,
                detach=detach,
                ask_cancel=ask_cancel,
                say=display.say,
            )
        outcome.interrupted = outcome.interrupted or result in (INTERRUPTED, LEFT_RUNNING)
        if result in (DETACHED, LEFT_RUNNING):
            outcome.left_running = sum(1 for r in rows.values() if r.state in _IN_QUEUE)
        _quietly(Source().on_tick)
    finally:
        clear_runner_pid(ctx.sweep_dir)
        try:
            display.stop()
        except OSError:  # the terminal went away
            pass

    outcome.seconds = time.time() - t_start
    try:
        if outcome.left_running:
            pass  # the parent run stays RUNNING while its jobs are in the queue
        elif outcome.interrupted:
            tracker.set_status(parent_run_id, "KILLED")
        elif outcome.failed or outcome.failed_before:
            tracker.set_status(parent_run_id, "FAILED")
        elif not outcome.elsewhere:
            tracker.set_status(parent_run_id, "FINISHED")
    except Exception as exc:  # noqa: BLE001
        console.print(f"warning: could not update the sweep's parent run: {exc}", markup=False)
    _quietly(print_summary, console, ctx, outcome, n_total)
    return outcome


# Signals that kill a worker from outside (the OOM killer, a user's kill): the cell is not at
# fault, and a plain rerun resumes it. A crash (SIGSEGV, SIGABRT, SIGBUS) is a failure.
_KILL_SIGNALS = frozenset({signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT})

# Row states of a cell whose SLURM job is still queued or running.
_IN_QUEUE = frozenset({"starting", "training", "evaluating", "logging", "attached"})


def launch_config(sweep: Any, kind: str | None) -> Any:
    """The sweep's ``launch:`` block, with ``--launcher`` replacing its kind."""
    launch = sweep.spec.launch
    if kind is None or kind == launch.kind:
        return launch
    if kind not in ("local", "slurm"):
        raise LauncherError(f"--launcher must be local or slurm, got {kind!r}")
    if kind == "local" and launch.nodes > 1:
        raise LauncherError(f"--launcher local: {sweep.path} asks launch.nodes = {launch.nodes}; that needs slurm")
    data = launch.model_dump()
    data["kind"] = kind
    if kind == "local":
        for key in ("partition", "account", "qos", "constraint", "array_parallelism"):
            data[key] = None
    return type(launch).model_validate(data)


def _quietly(fn: Callable[..., Any], *args: Any) -> None:
    """Output that must not stop the cleanup when the terminal is gone."""
    try:
        fn(*args)
    except OSError:
        pass


def print_summary(console: Console, ctx: SweepContext, outcome: SweepOutcome, n_total: int) -> None:
    def say(text: str) -> None:
        console.print(text, markup=False, highlight=False, soft_wrap=True)

    done = len(outcome.finished) + len(outcome.already)
    parts = [
        f"{done}/{n_total} finished ({len(outcome.finished)} now, {len(outcome.already)} before)"
    ]
    if outcome.failed:
        parts.append(f"{len(outcome.failed)} failed")
    if outcome.failed_before:
        parts.append(f"{len(outcome.failed_before)} failed before (rerun with --retry-failed)")
    if outcome.killed:
        parts.append(f"{len(outcome.killed)} killed (the same command resumes them)")
    if outcome.elsewhere:
        parts.append(f"{len(outcome.elsewhere)} running elsewhere")
    if outcome.left_running:
        parts.append(
            f"{outcome.left_running} left in the SLURM queue (`sweep status` shows them; "
            "`sweep run` again waits for them)"
        )
    say(f"sweep {ctx.sweep.name}: " + ", ".join(parts) + f" in {fmt_duration(outcome.seconds)}")
    by_error: dict[str, list[str]] = {}
    for name, error in {**outcome.failed_before, **outcome.failed}.items():
        by_error.setdefault(error or "(no error recorded)", []).append(name)
    for error, names in by_error.items():
        if len(names) == 1:
            say(f"  FAILED {names[0]}: {error}")
        else:
            shown = ", ".join(names[:4]) + (
                f", ... ({len(names) - 4} more)" if len(names) > 4 else ""
            )
            say(f"  FAILED {len(names)} cells ({shown}): {error}")
    for name, why in outcome.killed_why.items():
        say(f"  KILLED {name}: {why}; not a failure: the same command resumes it")
    if outcome.failed or outcome.failed_before:
        say("  a failed cell is rerun only with --retry-failed (after fixing what failed)")
    if outcome.failed:
        say(f"  logs: {ctx.sweep_dir}/<cell>/run.log")
