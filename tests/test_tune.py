"""`bicc-lab tune`: Optuna studies whose trials are sweep cells run by worker processes.

Fast: objective names, which trials count, stale trials, resumed sampler seeds, the trial
hook (report / prune / NaN) against a real SQLite storage.

End to end on a tiny untrained model (4 steps per trial, no evaluation):
- a study SIGKILLed mid-way, then re-run, ends with exactly n_trials finished trials (all
  COMPLETE), the interrupted ones FAIL*/not counted and their parameters retried, one
  FINISHED MLflow run per COMPLETE trial, and a third run that does nothing;
- in a journal-file study, a trial that raises is FAIL with its reason and the study goes on,
  and a pruned trial really stops early (1 of 4 steps, in Optuna, train_result.json and MLflow);
  `tune status` / `tune best` / `sweep run --set-file` read the result.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import late_bad_jsonl, subprocess_env


def _write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


# --------------------------------------------------------------------------- fast


def test_objective_names_are_the_logged_metric_names():
    from bicc_lab.spec import ExperimentConfig
    from bicc_lab.tune.setup import TuneError, objective_key

    config = ExperimentConfig(name="x")  # eval: arith_test, 4 samples
    assert objective_key("eval/arith_test/avg@4", config) == "eval/arith/avg_at_4"
    assert objective_key("eval/arith/pass_at_1", config) == "eval/arith/pass_at_1"
    assert objective_key("reward", config) == "reward"
    assert objective_key("rewards/accuracy_reward/mean", config) == "rewards/accuracy_reward/mean"
    with pytest.raises(TuneError, match="eval.samples is 4, so the logged metric is avg@4"):
        objective_key("eval/arith/avg@8", config)
    with pytest.raises(TuneError, match="benchmark 'math500' is not evaluated"):
        objective_key("eval/math500/avg@4", config)
    with pytest.raises(TuneError, match="unknown benchmark"):
        objective_key("eval/nope/avg@4", config)


def _study(tmp_path: Path | None = None, **kwargs):
    import optuna

    from bicc_lab.tune.study import quiet_optuna

    quiet_optuna()
    storage = (
        optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'o.db'}") if tmp_path else optuna.storages.InMemoryStorage()
    )
    return optuna.create_study(storage=storage, study_name="s", **kwargs), storage


def test_counted_trials_and_stale_ones():
    from optuna.trial import TrialState

    from bicc_lab.tune import study as st

    study, storage = _study()
    states = {}
    for number, (state, attrs) in enumerate(
        [
            (TrialState.COMPLETE, {}),
            (TrialState.PRUNED, {}),
            (TrialState.FAIL, {}),
            (TrialState.FAIL, {st.A_INTERRUPTED: True}),
            (TrialState.FAIL, {st.A_DISCARDED: True}),
        ]
    ):
        trial = study.ask()
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        study.tell(trial, 1.0 if state == TrialState.COMPLETE else None, state=state)
        states[number] = state
    assert [st.counts(t) for t in study.trials] == [True, True, True, False, False]

    # a RUNNING trial: alive while its owner process lives (same host), or while its
    # heartbeat is fresh (another host)
    trial = study.ask()
    # asked but never claimed (its asker died between ask and recording itself): orphaned
    # after ORPHAN_GRACE_S, or after stale_after when that is shorter
    unclaimed = study.trials[-1]
    asked = unclaimed.datetime_start.timestamp()
    assert st.is_stale(unclaimed, 600, asked + st.ORPHAN_GRACE_S - 1) is None
    assert "before recording itself" in st.is_stale(unclaimed, 600, asked + st.ORPHAN_GRACE_S + 1)
    assert st.is_stale(unclaimed, 5, asked + 6) is not None
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    now = time.time()

    def frozen(owner, beat):
        trial.set_user_attr(st.A_OWNER, owner)
        trial.set_user_attr(st.A_HEARTBEAT, beat)
        return study.trials[-1]

    assert st.is_stale(frozen(st.owner_token(), now - 1e6), 60, now) is None  # this process
    gone = {"host": socket.gethostname(), "pid": dead.pid, "start": "1"}
    assert "pid" in st.is_stale(frozen(gone, now), 60, now)
    reused = {**st.owner_token(), "start": "not-my-start-time"}  # same pid, another process
    assert st.is_stale(frozen(reused, now), 60, now) is not None
    remote = {"host": "elsewhere.example", "pid": 1, "start": ""}
    assert st.is_stale(frozen(remote, now - 10), 60, now) is None
    assert "no heartbeat" in st.is_stale(frozen(remote, now - 61), 60, now)


def test_a_resumed_sampler_does_not_repeat_its_first_proposals():
    from optuna.distributions import FloatDistribution

    from bicc_lab.spec.sweep_sections import SamplerConfig
    from bicc_lab.tune.study import make_sampler

    dist = {"x": FloatDistribution(0.0, 1.0)}
    config = SamplerConfig(seed=0)

    def proposals(n_existing: int, n: int) -> list[float]:
        study, _ = _study(sampler=make_sampler(config, n_existing))
        out = []
        for _ in range(n):
            trial = study.ask(dist)
            out.append(trial.params["x"])
            study.tell(trial, 0.0)
        return out

    first = proposals(0, 3)
    assert first == proposals(0, 3)  # seeded
    resumed = proposals(2, 2)  # a second session after 2 trials
    assert not set(resumed) & set(first)


def test_the_trial_hook_reports_prunes_and_stops_on_nan(tmp_path):
    import optuna

    from bicc_lab.tune.hook import FACTORY, make_hook, read_outcome

    study, _ = _study(tmp_path, direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=1))
    done = study.ask()
    done.report(1.0, 1)
    study.tell(done, 1.0)
    trial = study.ask()
    spec = {
        "factory": FACTORY,
        "storage": f"sqlite:///{tmp_path / 'o.db'}",
        "study": "s",
        "trial_id": trial._trial_id,
        "trial_number": trial.number,
        "metric": "reward",
        "pruner": {"type": "median", "metric": "reward", "n_startup_trials": 1},
        "max_steps": 4,
    }
    hook = make_hook(spec, tmp_path)
    assert hook.on_metrics(1, {"loss": 0.5, "learning_rate": 1e-3}) is False  # metric not logged
    assert hook.on_metrics(1, {"reward": 0.25}) is True  # 0.25 < median 1.0 at step 1
    assert study.trials[1].intermediate_values == {1: 0.25}
    assert hook.stop_reason() == "pruned at step 1 (reward = 0.25)"
    assert read_outcome(tmp_path) == {
        "state": "pruned", "reason": "pruned at step 1 (reward = 0.25)", "step": 1, "value": 0.25, "reported": 1,
    }

    other = tmp_path / "nan"
    other.mkdir()
    third = study.ask()
    hook = make_hook({**spec, "trial_id": third._trial_id, "trial_number": third.number}, other)
    assert hook.on_metrics(1, {"reward": 2.0}) is False  # above the median: goes on
    assert hook.on_metrics(2, {"reward": 1.0, "loss": float("nan")}) is True
    assert read_outcome(other)["state"] == "fail"
    assert hook.stop_reason() == "loss is nan at step 2"


# --------------------------------------------------------------------------- end to end


def _cli(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bicc_lab.cli.main", *args],
        capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout,
    )


def _load(storage: str, name: str):
    import optuna

    from bicc_lab.tune.study import open_storage, quiet_optuna

    quiet_optuna()
    return optuna.load_study(study_name=name, storage=open_storage(storage))


@pytest.fixture(scope="module")
def project(tmp_path_factory, untrained_tiny_dir):
    root = tmp_path_factory.mktemp("tune-project")
    _write(
        root / "base.yaml",
        f"""
        name: t
        model: {{name: {untrained_tiny_dir}}}
        train: {{max_steps: 4, num_generations: 4, per_device_train_batch_size: 8,
                 max_completion_length: 4, logging_steps: 1, save_steps: 100}}
        eval: {{enabled: false}}
        tracking: {{uri: sqlite:///{root / 'mlflow.db'}}}
        """,
    )
    return root


def _wait_pids_gone(directory: Path, timeout: float = 60) -> None:
    pids = []
    for pid_file in directory.glob("*/worker.pid"):
        try:
            pids.append(int(pid_file.read_text().strip()))
        except (OSError, ValueError):
            pass
    deadline = time.time() + timeout
    for pid in pids:
        while time.time() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)


@pytest.mark.slow
def test_a_killed_study_resumes_to_exactly_n_trials(project):
    from optuna.trial import TrialState

    from bicc_lab.tracking.store import Tracker
    from bicc_lab.tune import study as st

    _write(
        project / "kill.yaml",
        """
        name: kill
        base: base.yaml
        set: {rcc.enabled: true}
        search:
          params:
            rcc.coef: {type: log-float, low: 0.1, high: 10}
          objective: reward
          n_trials: 3
        """,
    )
    env = subprocess_env(project / "cache")
    args = ["tune", "run", "kill.yaml", "--runs-dir", "runs", "--reports-dir", "reports", "--n-jobs", "2"]
    storage = f"sqlite:///{project / 'runs' / 'kill' / 'optuna.db'}"
    log = open(project / "kill-first.log", "w")  # noqa: SIM115
    first = subprocess.Popen(
        [sys.executable, "-m", "bicc_lab.cli.main", *args], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=project
    )
    deadline = time.time() + 300
    try:
        while True:  # kill once one trial is COMPLETE and another one is running
            assert first.poll() is None, (project / "kill-first.log").read_text()
            assert time.time() < deadline, (project / "kill-first.log").read_text()
            time.sleep(0.5)
            if not (project / "runs" / "kill" / "optuna.db").is_file():
                continue
            try:
                states = [t.state for t in _load(storage, "kill").get_trials(deepcopy=False)]
            except Exception:  # noqa: BLE001 - not created yet / locked
                continue
            if TrialState.COMPLETE in states and TrialState.RUNNING in states:
                break
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
        log.close()
    _wait_pids_gone(project / "runs" / "kill")  # the workers follow their parent (PDEATHSIG)
    before = _load(storage, "kill").get_trials(deepcopy=False)
    left_running = [t.number for t in before if t.state == TrialState.RUNNING]
    assert left_running

    second = _cli(args, env, project)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "Traceback" not in second.stdout
    trials = _load(storage, "kill").get_trials(deepcopy=False)
    counted = [t for t in trials if st.counts(t)]
    shown = [(t.number, t.state.name, t.user_attrs.get(st.A_FAIL_REASON)) for t in trials]
    assert len(counted) == 3 and all(t.state == TrialState.COMPLETE for t in counted), (shown, second.stdout)
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    # a trial left RUNNING was interrupted (FAIL, not counted, retried with the same params),
    # unless its worker had finished it just before the kill (then its result is recorded)
    interrupted = [t for t in trials if t.user_attrs.get(st.A_INTERRUPTED)]
    assert interrupted and {t.number for t in interrupted} <= set(left_running)
    assert "interrupted (its tune process (pid" in second.stdout
    for t in interrupted:
        assert t.state == TrialState.FAIL
        retries = [r for r in trials if r.user_attrs.get(st.A_RETRY_OF) == t.number]
        assert len(retries) == 1 and retries[0].params == t.params and st.counts(retries[0])
    for number in left_running:
        assert trials[number].state == TrialState.COMPLETE or trials[number] in interrupted

    # MLflow: exactly one FINISHED child run per COMPLETE trial, tagged with it; killed ones KILLED
    tracker = Tracker(f"sqlite:///{project / 'mlflow.db'}")
    runs = {r.run_id: r for r in tracker.cell_runs(tracker.experiment_id("kill"))}
    finished = {run_id for run_id, r in runs.items() if r.status == "FINISHED"}
    assert finished == {t.user_attrs[st.A_RUN_ID] for t in counted}
    for t in counted:
        run = runs[t.user_attrs[st.A_RUN_ID]]
        assert run.tags["optuna.trial"] == str(t.number) and run.tags["optuna.state"] == "COMPLETE"
        assert run.metrics["reward"] == pytest.approx(t.value)
        assert json.loads(run.tags["optuna.params"]) == t.params
    for t in interrupted:  # (a kill right after `ask` leaves a trial without a run)
        tagged = [r for r in runs.values() if r.tags.get("optuna.trial") == str(t.number)]
        assert all(r.status == "KILLED" for r in tagged)
        assert t.user_attrs.get(st.A_RUN_ID) is None or len(tagged) == 1

    third = _cli(args, env, project)
    assert third.returncode == 0, third.stdout + third.stderr
    assert "3/3 trials finished before" in third.stdout and "started" not in third.stdout
    assert len(_load(storage, "kill").trials) == len(trials)


@pytest.mark.slow
def test_failing_and_pruned_trials_in_a_journal_study(project):
    from optuna.trial import TrialState

    from bicc_lab.spec.search import read_set_file
    from bicc_lab.tracking.store import Tracker
    from bicc_lab.tune import study as st

    bad = late_bad_jsonl(project)  # passes the preflight, fails the trial that trains on it
    _write(
        project / "prune.yaml",
        f"""
        name: prune
        base: base.yaml
        search:
          params:
            train.learning_rate: [1.0e-3, 1.0e-5]
            data.train: [synthetic_arithmetic, {bad}]
          objective: reward
          n_trials: 3
          storage: journal:journal/prune.log
          # learning_rate as the pruner's metric: trial 2 (1e-5) is below the median of trial 0
          # (1e-3) at step 1, whatever the untrained model samples
          pruner: {{type: median, metric: learning_rate, n_startup_trials: 1}}
          enqueue:
            - {{train.learning_rate: 1.0e-3, data.train: synthetic_arithmetic}}
            - {{data.train: {bad}}}
            - {{train.learning_rate: 1.0e-5, data.train: synthetic_arithmetic}}
        """,
    )
    env = subprocess_env(project / "cache")
    common = ["--runs-dir", "runs"]
    proc = _cli(["tune", "run", "prune.yaml", *common, "--reports-dir", "reports"], env, project)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout
    storage = f"journal:{project / 'journal' / 'prune.log'}"
    trials = _load(storage, "prune").trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED]
    complete, failed, pruned = trials

    # COMPLETE: the objective is the last logged reward of the run
    records = [json.loads(line) for line in (Path(complete.user_attrs[st.A_CELL_DIR]) / "metrics.jsonl").read_text().splitlines()]
    assert complete.value == pytest.approx(records[-1]["reward"]) and records[-1]["step"] == 4

    # FAIL: the worker raised; the reason is recorded and the study went on
    assert f"{bad}:7: not valid JSON" in failed.user_attrs[st.A_FAIL_REASON]
    assert "trial 1 FAIL: " in proc.stdout

    # PRUNED: stopped after step 1 of 4, everywhere
    assert pruned.intermediate_values == {1: pytest.approx(1e-5)}
    assert pruned.user_attrs[st.A_PRUNED_AT] == 1 and pruned.user_attrs[st.A_STEPS] == 1
    cell = Path(pruned.user_attrs[st.A_CELL_DIR])
    assert json.loads((cell / "train_result.json").read_text())["steps"] == 1
    assert not (cell / "eval.json").exists()
    tracker = Tracker(f"sqlite:///{project / 'mlflow.db'}")
    run = tracker.get(pruned.user_attrs[st.A_RUN_ID])
    assert run.status == "KILLED" and run.tags["progress"] == "1/4"
    assert run.tags["stop_reason"].startswith("pruned at step 1")
    history = tracker.client.get_metric_history(run.run_id, "learning_rate")
    assert max(m.step for m in history) == 1

    # status: the table, the best trial, importances need 2 complete trials; plots
    status = _cli(["tune", "status", "prune.yaml", *common, "--reports-dir", "reports"], env, project)
    assert status.returncode == 0, status.stdout + status.stderr
    out = status.stdout
    assert "3/3 trials finished, 0 running" in out
    assert "PRUNED" in out and "pruned at step 1" in out and "late_bad.jsonl:7" in out
    assert "best: trial 0, reward =" in out
    assert "importances: n/a (needs 2 complete trials, 1 so far)" in out
    assert {p.name for p in (project / "reports" / "prune").iterdir()} >= {"history.png", "intermediate.png", "trials.csv"}

    # best -> overrides file -> sweep run --set-file
    best = _cli(["tune", "best", "prune.yaml", *common, "--out", "best.yaml"], env, project)
    assert best.returncode == 0, best.stderr
    assert read_set_file(project / "best.yaml") == complete.params
    _write(project / "bad.yaml", "train.learning_rat: 1.0e-3\n")
    _write(project / "plain.yaml", "base: base.yaml\n")
    bad = _cli(["sweep", "run", "plain.yaml", "--set-file", "bad.yaml", *common], env, project)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "error: unknown key 'train.learning_rat' at bad.yaml:1:1; did you mean 'train.learning_rate'?"
    ]
