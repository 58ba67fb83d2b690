"""``tune run``: the study loop. Ask a trial, run it as one cell, tell its result; resumable.

Each trial: the base config with the sampled values (``with_overrides``), in its own cell
directory ``runs/<study>/trial-<NNNN>-<cell id>/``, trained and evaluated by the sweep's
worker process (``python -m bicc_lab.launch.worker``) with the trial hook
(:mod:`bicc_lab.tune.hook`), as an MLflow child run of the study's parent run, tagged
``optuna.trial`` / ``optuna.params``. ``--n-jobs`` trials run at once.

Results: COMPLETE with the objective read back from the trial's MLflow run; PRUNED when the
hook stopped it; FAIL with user attribute ``fail_reason`` when the worker raised, died, or
produced a NaN (metric, loss or objective). Params that equal a COMPLETE trial's are not
trained again: the trial gets the same value (user attribute ``duplicate_of``).

Resuming: trials left RUNNING by a dead tune process are failed as ``interrupted`` (not
counted) and their parameters enqueued again; the study stops when COMPLETE + PRUNED + FAIL
trials reach ``n_trials``. A trial asked beyond that by a concurrent tune process on the
same storage is discarded at once (FAIL, ``discarded``), so the count is exact.
"""

from __future__ import annotations

import json
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bicc_lab.launch import layout
from bicc_lab.spec import config_hash, config_id
from bicc_lab.spec.grid import Cell
from bicc_lab.sweep.context import store_start_lock
from bicc_lab.tracking.naming import stale_after
from bicc_lab.tune import study as st
from bicc_lab.tune.setup import TuneError, TuneSetup, open_study

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["TuneOutcome", "run_study"]

EXIT_INTERRUPTED = 130

# tags of the MLflow runs (trials are role=cell children of the study's role=sweep parent)
T_TRIAL = "optuna.trial"
T_STUDY = "optuna.study"
T_PARAMS = "optuna.params"
T_STATE = "optuna.state"
T_VALUE = "optuna.value"
T_KIND = "kind"


@dataclass
class TuneOutcome:
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    interrupted: bool = False
    budget_reached: bool = False
    seconds: float = 0.0
    best: Any = None  # FrozenTrial
    reports: list[Path] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return EXIT_INTERRUPTED
        return 0 if self.best is not None else 1


@dataclass
class _Active:
    trial: Any  # optuna.Trial
    trial_id: int
    number: int
    params: dict[str, Any]
    directory: Path
    run_id: str
    started: float


def fmt_value(objective_key: str, value: float) -> str:
    """A study value as printed: an eval score in points (``45.2 (%)``; the study keeps
    fractions), another metric in its own unit."""
    from bicc_lab.tune.compare import objective_scale

    scale = objective_scale(objective_key)
    return f"{value * scale:.4g} (%)" if scale != 1.0 else f"{value:.4g}"


def fmt_params(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={_fmt(v)}" for k, v in params.items())


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if value is None:
        return "null"
    return str(value)


def run_study(
    setup: TuneSetup,
    *,
    n_jobs: int | None = None,
    console: Console | None = None,
    grace_s: float = 10.0,
    poll_s: float = 0.5,
    progress_every_s: float = 30.0,
    launcher_kind: str | None = None,
) -> TuneOutcome:
    """Run (or resume) the study until ``n_trials`` trials are finished. See the module doc."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    import bicc_lab
    from bicc_lab.console import console as default_console
    from bicc_lab.launch import make_launcher
    from bicc_lab.launch.base import EXIT_FAILED, EXIT_OK, EXIT_STOPPED, Job, first_error_line
    from bicc_lab.launch.locks import LOCK_NAME, is_locked
    from bicc_lab.launch.schedule import INTERRUPTED, run_jobs
    from bicc_lab.spec import SpecError, with_overrides
    from bicc_lab.sweep.runner import cell_spec, launch_config, prebuild_models
    from bicc_lab.tracking.naming import Tag, git_commit
    from bicc_lab.tune.hook import FACTORY, read_outcome

    console = console or default_console()

    def say(text: str) -> None:
        try:
            console.print(text, markup=False, highlight=False, soft_wrap=True)
        except OSError:  # the terminal went away
            pass

    t_start = time.time()
    outcome = TuneOutcome()
    search = setup.search
    ctx = setup.ctx
    sweep = setup.sweep
    base = setup.base_config
    n_trials = search.n_trials
    n_jobs = n_jobs or search.n_jobs
    dists = st.distributions(search)
    base_hash = config_hash(base)

    from bicc_lab.tracking.check import check_optuna_storage

    check_optuna_storage(setup.storage_url, create=True)
    ctx.check_store(create=True)
    commit = git_commit()
    with store_start_lock(setup.study_dir):
        # the MLflow store is created under the lock too (see `sweep run`)
        tracker = ctx.tracker(create=True)
        experiment_id = tracker.ensure_experiment(ctx.experiment)
        study, storage = open_study(setup, create=True)
        if study.direction.name.lower() != search.direction:
            raise TuneError(
                f"study '{setup.study_name}' exists with direction {study.direction.name.lower()}, "
                f"the file says {search.direction}; use another search.study_name"
            )
        for attr, value, what in (
            (st.S_BASE_HASH, base_hash, "base config"),
            (st.S_OBJECTIVE, setup.objective_key, "objective"),
        ):
            recorded = study.user_attrs.get(attr)
            if recorded is None:
                study.set_user_attr(attr, value)
            elif recorded != value:
                raise TuneError(
                    f"the {what} of study '{setup.study_name}' changed since its first trials "
                    f"({str(recorded)[:12]} -> {str(value)[:12]}): old and new trials would not be "
                    "comparable; start a new study with --set search.study_name=NEW"
                )
        if not study.user_attrs.get(st.S_ENQUEUED):
            for entry in search.enqueue:
                from bicc_lab.spec.search import param_value

                params = {k: param_value(search.params[k], v) for k, v in entry.items()}
                study.enqueue_trial(params, skip_if_exists=True)
            study.set_user_attr(st.S_ENQUEUED, True)
        parent_run_id = tracker.ensure_parent(
            experiment_id,
            setup.study_name,
            {
                T_KIND: "study",
                T_STUDY: setup.study_name,
                "optuna.storage": setup.storage_url,
                "objective": setup.objective_key,
                "direction": search.direction,
                Tag.N_CELLS: str(n_trials),
                Tag.VERSION: bicc_lab.__version__,
                Tag.GIT_COMMIT: commit,
            },
        )
        tracker.set_status(parent_run_id, "RUNNING")
        try:
            tracker.log_artifacts(parent_run_id, [sweep.path])
        except Exception:  # noqa: BLE001 - a convenience copy
            pass

    study_id = storage.get_study_id_from_name(setup.study_name)
    owner = st.owner_token()
    active: dict[int, _Active] = {}

    def trial_id_of(number: int) -> int:
        return storage.get_trial_id_from_study_id_trial_number(study_id, number)

    def mark_run(run_id: str | None, state: str, value: float | None = None, status: str | None = None) -> None:
        if not run_id:
            return
        try:
            tags = {T_STATE: state}
            if value is not None:
                tags[T_VALUE] = repr(value)  # the study's own value (fractions for a score)
            tracker.set_tags(run_id, tags)
            if status is not None:
                run = tracker.get(run_id)
                if run is not None and run.status == "RUNNING":
                    tracker.set_tags(run_id, {Tag.PHASE: status.lower()})
                    tracker.set_status(run_id, status)
        except Exception as exc:  # noqa: BLE001
            say(f"warning: could not tag MLflow run {run_id}: {type(exc).__name__}: {exc}")

    def runs_of_trial(number: int) -> list[str]:
        """MLflow runs tagged with this trial (a kill can land before the trial records its run)."""
        try:
            found = tracker.search(
                experiment_id,
                f"tags.`{T_STUDY}` = '{setup.study_name}' and tags.`{T_TRIAL}` = '{number}'",
            )
        except Exception:  # noqa: BLE001
            return []
        return [run.info.run_id for run in found]

    def interrupt(trial: Any, reason: str) -> None:
        """FAIL a trial whose tune process is gone (or stopping), not counted; retry its params."""
        tid = trial_id_of(trial.number)
        try:
            storage.set_trial_user_attr(tid, st.A_INTERRUPTED, True)
            storage.set_trial_user_attr(tid, st.A_FAIL_REASON, f"interrupted: {reason}")
            failed = storage.set_trial_state_values(tid, TrialState.FAIL)
        except UpdateFinishedTrialError:
            return  # another tune process got there first
        if not failed:
            return
        attrs = trial.user_attrs
        study.enqueue_trial(
            dict(trial.params), user_attrs={st.A_RETRY_OF: attrs.get(st.A_RETRY_OF, trial.number)}
        )
        run_ids = [attrs[st.A_RUN_ID]] if attrs.get(st.A_RUN_ID) else runs_of_trial(trial.number)
        for run_id in run_ids:  # (none when it was stopped before its run was created)
            mark_run(run_id, "FAIL", status="KILLED")
        say(f"trial {trial.number} interrupted ({reason}); not counted, its parameters are queued again")

    def settle(trial: Any, reason: str) -> None:
        """A trial whose tune process is gone: record what its worker did, if it ended on its
        own (finished, stopped by the hook, failed); else it was interrupted."""
        attrs = trial.user_attrs
        directory = Path(attrs[st.A_CELL_DIR]) if attrs.get(st.A_CELL_DIR) else None
        if directory is not None and directory.is_dir():
            deadline = time.time() + 20  # its worker follows its parent out (PDEATHSIG)
            while is_locked(directory / LOCK_NAME) and time.time() < deadline:
                time.sleep(0.5)
            phase = layout.read_text(directory / layout.PHASE_FILE)
            code = {"finished": EXIT_OK, "stopped": EXIT_STOPPED, "failed": EXIT_FAILED}.get(phase or "")
            if code is not None:
                start = trial.datetime_start.timestamp() if trial.datetime_start else time.time()
                say(f"trial {trial.number}: {reason}, but its worker had ended ({phase}); recording its result")
                a = _Active(None, trial_id_of(trial.number), trial.number, dict(trial.params),
                            directory, attrs.get(st.A_RUN_ID, ""), start)
                finish(a, code)
                return
        interrupt(trial, reason)

    def reap_stale() -> None:
        limit = stale_after()
        for trial in st.running(study.get_trials(deepcopy=False)):
            if trial.number in active:
                continue
            reason = st.is_stale(trial, limit)
            if reason is not None:
                settle(trial, reason)

    def set_attrs(a: _Active, attrs: dict[str, Any]) -> bool:
        try:
            for key, value in attrs.items():
                storage.set_trial_user_attr(a.trial_id, key, value)
            return True
        except UpdateFinishedTrialError:
            return False

    def tell(a: _Active, state: Any, value: float | None, attrs: dict[str, Any]) -> None:
        if not set_attrs(a, attrs):
            say(f"trial {a.number} was finished by another tune process meanwhile; result dropped")
            return
        if state == TrialState.COMPLETE:
            study.tell(a.number, value, skip_if_finished=True)
            outcome.complete += 1
        else:
            study.tell(a.number, state=state, skip_if_finished=True)
            if state == TrialState.PRUNED:
                outcome.pruned += 1
            else:
                outcome.failed += 1

    def describe_best() -> str:
        try:
            best = study.best_trial
        except ValueError:
            return "no complete trial yet"
        return f"best: trial {best.number} {setup.objective_key}={fmt_value(setup.objective_key, best.value)} ({fmt_params(best.params)})"

    def start_trial(trial: Any) -> tuple[str, Path] | None:
        """Prepare the trial's cell, to be submitted; None when it was told at once (a
        duplicate of a COMPLETE trial, or an invalid config)."""
        number = trial.number
        params = dict(trial.params)
        tid = trial_id_of(number)
        a = _Active(trial, tid, number, params, setup.study_dir, "", time.time())
        for other in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if other.params == params:
                tell(a, TrialState.COMPLETE, other.value, {st.A_DUPLICATE_OF: other.number,
                                                             st.A_RUN_ID: other.user_attrs.get(st.A_RUN_ID, "")})
                say(f"trial {number}: same parameters as trial {other.number}; its value {fmt_value(setup.objective_key, other.value)} is reused")
                return
        try:
            config = with_overrides(base, params)
        except SpecError as exc:
            tell(a, TrialState.FAIL, None, {st.A_FAIL_REASON: f"invalid config: {exc}"})
            say(f"trial {number} FAIL: invalid config: {exc}")
            return
        digest = config_hash(config)
        cell_id = config_id(config)
        directory = setup.study_dir / f"trial-{number:04d}-{cell_id}"
        directory.mkdir(parents=True, exist_ok=True)
        name = f"{setup.study_name}/trial-{number}"
        run_id = tracker.create_cell_run(
            experiment_id,
            parent_run_id,
            name,
            {
                Tag.CONFIG_HASH: digest,
                T_TRIAL: str(number),
                T_STUDY: setup.study_name,
                T_PARAMS: json.dumps(params, default=str),
                T_STATE: "RUNNING",
            },
        )
        a.directory, a.run_id = directory, run_id
        set_attrs(
            a,
            {
                st.A_CELL_DIR: str(directory),
                st.A_RUN_ID: run_id,
                st.A_CONFIG_HASH: digest,
                st.A_MAX_STEPS: config.train.max_steps,
            },
        )
        cell = Cell(config=config, axes=params, name=name, cell_id=cell_id, config_hash=digest, index=number)
        spec = cell_spec(ctx, cell, experiment_id, parent_run_id, commit)
        spec["sweep"] = setup.study_name
        spec["hook"] = {
            "factory": FACTORY,
            "storage": setup.storage_url,
            "study": setup.study_name,
            "trial_id": tid,
            "trial_number": number,
            "metric": search.pruner.metric if search.pruner is not None else "reward",
            "pruner": search.pruner.model_dump(mode="json", exclude_unset=True) if search.pruner else None,
            "max_steps": base.train.max_steps,
        }
        layout.write_atomic(directory / layout.CELL_SPEC, json.dumps(spec, indent=1, default=str))
        layout.write_atomic(directory / layout.RUN_ID_FILE, run_id + "\n")
        layout.write_atomic(directory / layout.PHASE_FILE, "starting\n")
        a.started = time.time()
        active[number] = a
        retry = trial.user_attrs.get(st.A_RETRY_OF)
        again = f" (retry of trial {retry})" if retry is not None else ""
        say(f"trial {number} started{again}: {fmt_params(params)}  [{directory}]")
        return str(number), directory

    def finish(a: _Active, code: int) -> None:
        directory = a.directory
        result = read_outcome(directory)
        progress = layout.read_progress(directory)
        seconds = time.time() - a.started
        run_id = layout.read_text(directory / layout.RUN_ID_FILE) or a.run_id
        if run_id != a.run_id:  # the worker found this config already FINISHED in MLflow
            try:
                tracker.client.delete_run(a.run_id)
            except Exception:  # noqa: BLE001
                pass
        attrs: dict[str, Any] = {st.A_STEPS: progress.step, st.A_SECONDS: round(seconds, 1), st.A_RUN_ID: run_id}
        steps = f"{progress.step}/{base.train.max_steps} steps" if progress.step else "no step"
        state = result.get("state")
        if state == "pruned":
            attrs[st.A_PRUNED_AT] = result.get("step")
            tell(a, TrialState.PRUNED, None, attrs)
            mark_run(run_id, "PRUNED")
            say(f"trial {a.number} PRUNED {result.get('reason', '')} ({steps}, {seconds:.0f}s)")
            return
        if state == "fail":
            reason = str(result.get("reason"))
        elif code == EXIT_OK:
            run = tracker.get(run_id)
            metrics = run.metrics if run is not None else {}
            value = metrics.get(setup.objective_key)
            if value is None:
                logged = sorted(k for k in metrics if k.startswith("eval/")) or sorted(metrics)[:8]
                reason = f"objective '{setup.objective_key}' was not logged (logged: {', '.join(logged) or 'nothing'})"
            elif not st.finite(value):
                reason = f"objective {setup.objective_key} is {value}"
            else:
                tell(a, TrialState.COMPLETE, float(value), attrs)
                mark_run(run_id, "COMPLETE", float(value))
                say(f"trial {a.number} COMPLETE {setup.objective_key}={fmt_value(setup.objective_key, value)} ({steps}, {seconds:.0f}s); {describe_best()}")
                return
        elif code == EXIT_FAILED:
            reason = first_error_line(directory) or "the worker failed"
        else:
            how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
            reason = f"worker died ({how}); see {directory / layout.LOG_FILE}"
        attrs[st.A_FAIL_REASON] = reason[:2000]
        tell(a, TrialState.FAIL, None, attrs)
        mark_run(run_id, "FAIL", status="FAILED")
        say(f"trial {a.number} FAIL: {reason[:300]} ({steps}; log: {directory / layout.LOG_FILE})")

    def budget() -> tuple[int, int]:
        trials = study.get_trials(deepcopy=False)
        return sum(1 for t in trials if st.counts(t)), len(st.running(trials))

    def surplus(trial: Any) -> bool:
        """True when ``n_trials`` trials were already counted or running before this one."""
        ahead = [
            t for t in study.get_trials(deepcopy=False)
            if t.number < trial.number and (st.counts(t) or t.state == TrialState.RUNNING)
        ]
        return len(ahead) >= n_trials

    launch = launch_config(sweep, launcher_kind)
    launcher = make_launcher(
        launch,
        gpus=sweep.spec.gpus,
        max_parallel=n_jobs,
        sweep_dir=setup.study_dir,
        job_name=setup.study_name,
        vllm_server=base.train.vllm_mode == "server",
        model=base.model.name,
    )
    heartbeat_s = min(15.0, max(1.0, stale_after() / 4))
    clock = {"beat": time.time(), "reap": time.time(), "progress": time.time()}

    class Source:
        """Trials asked from the study, for :func:`run_jobs` (at most ``n_jobs`` at once)."""

        def next_cells(self, free: int) -> list[tuple[str, Path]]:
            cells = []
            while len(cells) < free:
                done, running_now = budget()
                if done + running_now >= n_trials:
                    break
                trial = study.ask(fixed_distributions=dists)
                storage.set_trial_user_attr(trial_id_of(trial.number), st.A_OWNER, owner)
                storage.set_trial_user_attr(trial_id_of(trial.number), st.A_HEARTBEAT, time.time())
                if surplus(trial):
                    storage.set_trial_user_attr(trial_id_of(trial.number), st.A_DISCARDED, True)
                    study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
                    break
                cell = start_trial(trial)
                if cell is not None:
                    cells.append(cell)
            return cells

        def more(self) -> bool:
            # finished when the budget is reached (or only other tune processes' trials run);
            # a trial asked by a process that died before claiming it is no one's: wait until
            # on_tick reaps it (its parameters are then queued again)
            done, running_now = budget()
            if done + running_now < n_trials:
                return True
            return any(
                t.number not in active and st.A_OWNER not in t.user_attrs
                for t in st.running(study.get_trials(deepcopy=False))
            )

        def on_submit(self, job: Job) -> None:
            active[int(job.key)].started = job.started

        def on_exit(self, job: Job, code: int, stopping: bool) -> None:
            a = active.pop(int(job.key))
            if not stopping or code == EXIT_OK:
                finish(a, code)
            else:
                frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == a.number)
                interrupt(frozen, "stopped with its tune process")

        def on_tick(self) -> None:
            now = time.time()
            if now - clock["beat"] >= heartbeat_s:
                for a in list(active.values()):
                    set_attrs(a, {st.A_HEARTBEAT: now})
                clock["beat"] = now
            if now - clock["reap"] >= heartbeat_s * 2:
                reap_stale()
                clock["reap"] = now
            if active and now - clock["progress"] >= progress_every_s:
                parts = []
                for a in active.values():
                    p = layout.read_progress(a.directory)
                    reward = f" reward {p.reward:.3f}" if p.reward is not None else ""
                    parts.append(f"trial {a.number} {p.phase or '?'} {p.step}/{base.train.max_steps}{reward}")
                say("running: " + "; ".join(parts))
                clock["progress"] = now

    done, running_now = budget()
    where = f"{n_jobs} at a time" if launch.kind == "local" else f"{n_jobs} SLURM job(s) at a time"
    say(
        f"study {setup.study_name}: {done}/{n_trials} trials finished before, {where} | "
        f"objective {setup.objective_key} ({search.direction}) | storage {setup.storage_url} | "
        f"MLflow {ctx.uri} (experiment {ctx.experiment}) | {setup.study_dir}"
    )
    previous = signal.getsignal(signal.SIGTERM)
    try:
        # (run_jobs turns SIGTERM into a stop; before it, the default would kill us mid-write)
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        reap_stale()
        done, running_now = budget()
        if done + running_now < n_trials:
            unbuildable = prebuild_models(
                [Cell(config=base, axes={}, name="base", cell_id="base", config_hash=base_hash)], say
            )
            if unbuildable:
                tracker.set_status(parent_run_id, "FAILED")
                raise TuneError(next(iter(unbuildable.values())))
    except KeyboardInterrupt:
        outcome.interrupted = True
    finally:
        signal.signal(signal.SIGTERM, previous)
    if not outcome.interrupted:
        result = run_jobs(
            launcher, Source(), max_parallel=n_jobs, poll_s=poll_s, grace_s=grace_s, say=say
        )
        outcome.interrupted = result == INTERRUPTED
        done, _ = budget()
        outcome.budget_reached = not outcome.interrupted and done >= n_trials

    outcome.seconds = time.time() - t_start
    try:
        outcome.best = study.best_trial
    except ValueError:
        outcome.best = None
    try:
        tags: dict[str, str] = {}
        if outcome.best is not None:
            tags = {"best_trial": str(outcome.best.number), "best_value": repr(outcome.best.value)}
            tags.update({f"best.{k}": json.dumps(v) for k, v in outcome.best.params.items()})
            tracker.set_tags(parent_run_id, tags)
        if outcome.interrupted:
            tracker.set_status(parent_run_id, "KILLED")
        elif outcome.budget_reached:
            tracker.set_status(parent_run_id, "FINISHED")
    except Exception as exc:  # noqa: BLE001
        say(f"warning: could not update the study's parent run: {exc}")
    try:
        from bicc_lab.tune.views import write_reports

        outcome.reports = write_reports(study, setup)
    except Exception as exc:  # noqa: BLE001 - plots are a convenience
        say(f"warning: could not write the plots: {type(exc).__name__}: {exc}")
    done, _ = budget()
    say(
        f"study {setup.study_name}: {done}/{n_trials} trials finished "
        f"({outcome.complete} complete, {outcome.pruned} pruned, {outcome.failed} failed in this run) "
        f"in {outcome.seconds:.0f}s on {socket.gethostname()}; {describe_best()}"
    )
    if outcome.reports:
        say(f"plots: {', '.join(str(p) for p in outcome.reports)}")
    return outcome
