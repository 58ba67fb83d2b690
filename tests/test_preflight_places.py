"""Issue 19 (reliability): where a command writes, the values it is given, the MLflow URI
forms, the environment variables, and `sweep plan` = `sweep run`'s checks.

Each mistake runs the user's command exactly (a subprocess of the CLI) and must end in one
``error: ...`` line, exit 2, before any cell starts, any model loads or anything is written.
Read-only places are real ones (``/proc``, ``/sys``): tests run as root, where ``chmod 0o555``
stops nothing. No model is ever built here (the checks fail before).
"""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from conftest import subprocess_env

from bicc_lab.envvars import CHECKS
from bicc_lab.errors import UserError
from bicc_lab.fileio import check_writable_dir, check_writable_file


def _write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A clean project: a tiny base config, a one-cell sweep, a study, a file named afile."""
    monkeypatch.chdir(tmp_path)
    _write(
        tmp_path / "base.yaml",
        """
        name: t
        model: {name: tiny}
        train: {max_steps: 2, num_generations: 4, per_device_train_batch_size: 8}
        eval: {benchmarks: [arith_test], samples: 2, limit: 2}
        """,
    )
    _write(tmp_path / "s.yaml", "name: s\nbase: base.yaml\ngrid:\n  seed: [0]\n")
    _write(
        tmp_path / "study.yaml",
        """
        name: st
        base: base.yaml
        search:
          params:
            rcc.coef: {type: log-float, low: 0.1, high: 10}
          objective: reward
          n_trials: 1
        """,
    )
    (tmp_path / "afile").write_text("not a directory\n")
    return tmp_path


def _cli(args: list[str], cwd: Path, env: dict[str, str] | None = None, drop: tuple[str, ...] = ()):
    full = subprocess_env(cwd / "cache")
    full.pop("BICC_LAB_DATA_DIR", None)
    full.update(HF_HOME=str(cwd / "hf-home"), **(env or {}))
    for name in drop:
        full.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "bicc_lab.cli.main", *args],
        capture_output=True, text=True, cwd=cwd, env=full, timeout=300,
    )


def _one_line(proc, *fragments: str) -> str:
    """The command failed with exit 2 and one ``error:`` line holding every fragment."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def _entries(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# --------------------------------------------------------------------------- item 3: where a command writes


def test_the_write_check_probes_instead_of_trusting_os_access(tmp_path):
    """/proc says yes to os.access(W_OK) for root but takes no file: the probe catches it."""
    assert os.access("/proc", os.W_OK) or os.geteuid() != 0
    with pytest.raises(UserError, match=r"^x: cannot create a directory in /proc \("):
        check_writable_dir("/proc/bicc-lab-nope/deeper", "x")
    (tmp_path / "f").write_text("")
    with pytest.raises(UserError, match=f"^x: {tmp_path / 'f'} is a file, not a directory$"):
        check_writable_dir(tmp_path / "f" / "sub", "x")
    with pytest.raises(UserError, match="is a directory; expected a file name"):
        check_writable_file(tmp_path, "x")
    check_writable_dir(tmp_path / "new" / "deeper", "x")
    check_writable_file(tmp_path / "new" / "out.yaml", "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]  # nothing made, probes removed
    with pytest.raises(UserError, match="is 300 bytes, longer than the 255 bytes"):
        check_writable_dir(tmp_path / ("n" * 300), "x")


def test_eval_output_path_is_checked_before_the_evaluation(project):
    before = _entries(project)
    start = time.perf_counter()
    proc = _cli(["eval", "--model", "tiny", "--benchmarks", "arith_test", "--output-path", "afile/res.json"], project)
    _one_line(proc, "--output_path afile/res.json: ", f"{project / 'afile'} is a file, not a directory")
    for target, said in (("/proc/bicc-lab/out", "cannot create a directory in /proc"), ("/sys/res.json", "cannot write in /sys")):
        proc = _cli(["eval", "--model", "tiny", "--benchmarks", "arith_test", "--output-path", target], project)
        _one_line(proc, f"--output_path {target}: {said}")
    assert time.perf_counter() - start < 60  # no tiny model was built, nothing evaluated
    assert _entries(project) == before


def test_report_out_dir_and_tune_best_output_path(project):
    proc = _cli(["report", "s.yaml", "--out-dir", "afile"], project)
    _one_line(proc, f"--out-dir afile: {project / 'afile'} is a file, not a directory")
    proc = _cli(["tune", "best", "study.yaml", "--output-path", "/proc/best.yaml"], project)
    _one_line(proc, "--output-path /proc/best.yaml: cannot write in /proc")


@pytest.mark.parametrize(
    ("runs_dir", "said"),
    [("afile", "is a file, not a directory"), ("/proc/nope", "cannot create a directory in /proc")],
)
def test_sweep_and_tune_runs_dir(project, runs_dir, said):
    before = _entries(project)
    for command, file in (("sweep", "s.yaml"), ("tune", "study.yaml")):
        proc = _cli([command, "run", file, "--runs-dir", runs_dir], project)
        _one_line(proc, f"--runs-dir {runs_dir}: ", said)
    assert _entries(project) == before  # no mlflow.db, no study storage, no cache


def test_a_sweep_name_longer_than_name_max(project):
    long = "x" * 300
    _write(project / "long.yaml", f"name: {long}\nbase: base.yaml\n")
    before = _entries(project)
    for command in ("run", "plan"):
        proc = _cli(["sweep", command, "long.yaml"], project)
        _one_line(proc, "the name of long.yaml: ", "is 300 bytes, longer than the 255 bytes", "choose a shorter name")
    assert _entries(project) == before


def test_bicc_lab_cache_that_is_a_file(project):
    proc = _cli(["train", "base.yaml"], project, env={"BICC_LAB_CACHE": str(project / "afile")})
    _one_line(proc, f"BICC_LAB_CACHE={project / 'afile'}: {project / 'afile'} is a file, not a directory")


# --------------------------------------------------------------------------- item 4: values


def test_seeds_outside_numpys_range(project):
    proc = _cli(["train", "base.yaml", "--set", "seed=-1"], project)
    _one_line(proc, "invalid value for 'seed' at --set seed; expected a number >= 0, got -1")
    _write(project / "seeds.yaml", "name: seeds\nbase: base.yaml\ngrid:\n  seed: [0, 4294967296]\n")
    proc = _cli(["sweep", "run", "seeds.yaml"], project)
    _one_line(proc, "'seed' at seeds.yaml:4:13 (in cell seed=4294967296); expected a number <= 4294967295")


@pytest.mark.parametrize(
    ("flag", "value", "said"),
    [
        ("--temperature", "-1", "--temperature -1: expected a number >= 0"),
        ("--top_p", "0", "--top_p 0: expected a number > 0 and <= 1"),
        ("--max-new-tokens", "0", "--max_new_tokens 0: expected a number >= 1"),  # the dash spelling works too
    ],
)
def test_eval_sampling_flags(project, flag, value, said):
    proc = _cli(["eval", "--model", "tiny", "--benchmarks", "arith_test", flag, value], project)
    _one_line(proc, said)


class _FakeHub(http.server.BaseHTTPRequestHandler):
    """The hub's answer for a repository that does not exist (HTTP 404, RepoNotFound)."""

    def do_GET(self):  # noqa: N802 - http.server's name
        self.send_response(404)
        self.send_header("X-Error-Code", "RepoNotFound")
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"error": "Repository not found"}')

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_hub():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unknown_or_unreachable_hub_id_is_one_line_in_seconds(project, fake_hub):
    # (TRANSFORMERS_OFFLINE too: huggingface_hub reads it as HF_HUB_OFFLINE, and other test
    # modules set it for the whole test process)
    online = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
    start = time.perf_counter()
    proc = _cli(["eval", "--model", "nobody/no-such-model", "--benchmarks", "arith_test"], project,
                env={"HF_ENDPOINT": fake_hub}, drop=online)
    _one_line(proc, "--model: nobody/no-such-model: no such model on the hub")
    proc = _cli(["train", "base.yaml", "--set", "model.name=nobody/no-such-model"], project,
                env={"HF_ENDPOINT": fake_hub}, drop=online)
    _one_line(proc, "model.name: nobody/no-such-model: no such model on the hub", "at --set model.name")
    unreachable = f"http://127.0.0.1:{_closed_port()}"
    proc = _cli(["eval", "--model", "nobody/no-such-model", "--benchmarks", "arith_test"], project,
                env={"HF_ENDPOINT": unreachable}, drop=online)
    _one_line(proc, "not in the HF cache", "the hub cannot be reached", "hf download nobody/no-such-model",
              "local model directory", "HF_HUB_OFFLINE=1")
    assert time.perf_counter() - start < 60  # three CLI starts; no 45 s of retries


def test_eval_backend_and_device_that_this_machine_lacks(project):
    import importlib.util

    import torch

    if importlib.util.find_spec("vllm") is None:
        proc = _cli(["eval", "--model", "vllm", "--model_args", "pretrained=tiny", "--benchmarks", "arith_test"], project)
        _one_line(proc, "vLLM is not installed", "--backend hf")
    if not torch.cuda.is_available():
        proc = _cli(["eval", "--model", "tiny", "--benchmarks", "arith_test", "--device", "cuda"], project)
        _one_line(proc, "--device cuda: CUDA is not available", "use --device cpu")


# --------------------------------------------------------------------------- item 5: MLflow URI forms


@pytest.mark.parametrize("form", ["file", "bare"])
def test_mlflow_file_store_is_refused_in_one_line_and_leaves_nothing(project, form):
    uri = (project / "mlruns").as_uri() if form == "file" else "mlruns"
    before = _entries(project)
    proc = _cli(["sweep", "run", "s.yaml", "--set", f"tracking.uri={uri}"], project, drop=("MLFLOW_ALLOW_FILE_STORE",))
    _one_line(proc, "an MLflow file store, which MLflow refuses", "MLFLOW_ALLOW_FILE_STORE=true",
              f"sqlite:///{project / 'mlflow.db'}")
    assert _entries(project) == before  # no runs/s/.sweep.lock, no mlruns/


def test_a_store_mlflow_refuses_late_leaves_no_sweep_folder(project):
    """databricks passes the preflight (its SDK is installed) and fails when MLflow reads
    the credentials, under the sweep's lock: one line, and the folders made for it go."""
    import importlib.util

    if importlib.util.find_spec("databricks.sdk") is None:
        pytest.skip("databricks-sdk is not installed (the preflight refuses databricks then)")
    before = _entries(project)
    proc = _cli(["sweep", "run", "s.yaml", "--set", "tracking.uri=databricks"], project,
                drop=("DATABRICKS_HOST", "DATABRICKS_TOKEN", "DATABRICKS_CONFIG_PROFILE"),
                env={"DATABRICKS_CONFIG_FILE": str(project / "no-databrickscfg")})
    _one_line(proc, "MLflow store databricks: Databricks authentication is not configured")
    assert _entries(project) == before


def test_mlflow_file_store_works_when_mlflow_allows_it(tmp_path, monkeypatch):
    from mlflow.entities import Metric

    from bicc_lab.tracking.check import check_tracking_uri
    from bicc_lab.tracking.store import Tracker

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    store = check_tracking_uri("mlruns", create=True)
    assert store.kind == "file" and store.path == tmp_path / "mlruns" and not store.path.exists()
    tracker = Tracker(store)
    experiment = tracker.ensure_experiment("x")
    run = tracker.create_cell_run(experiment, None, "c", {"config_hash": "h"})
    tracker.log_metrics(run, [Metric("loss", 1.0, 0, 1), Metric("loss", 0.5, 0, 2)])
    tracker.set_status(run, "FINISHED")
    assert tracker.metric_steps(run) == {"loss": {1, 2}}
    assert [r.status for r in tracker.cell_runs(experiment, "h")] == ["FINISHED"]
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "yes")
    with pytest.raises(UserError, match="MLFLOW_ALLOW_FILE_STORE='yes': expected true or false"):
        check_tracking_uri("mlruns", create=True)


def test_other_mlflow_uri_forms_are_one_line(tmp_path):
    import importlib.util

    from bicc_lab.tracking.check import check_tracking_uri
    from bicc_lab.tracking.naming import StoreURI

    assert StoreURI.parse("databricks").kind == "databricks"  # MLflow reads the bare name as a scheme
    assert StoreURI.parse("sqlite:///x.db", base=tmp_path).path == tmp_path / "x.db"
    if importlib.util.find_spec("psycopg2") is None:
        with pytest.raises(UserError, match=r"the Python package psycopg2 is not installed \(pip install psycopg2-binary\)"):
            check_tracking_uri("postgresql://u@127.0.0.1/db", create=True)
    if importlib.util.find_spec("pymysql") is not None:
        with pytest.raises(UserError, match=f"cannot reach the mysql server of .* at 127.0.0.1:{_closed_port()}"):
            check_tracking_uri(f"mysql+pymysql://u@127.0.0.1:{_closed_port()}/db", create=True)


def test_a_sweep_start_parses_the_store_uri_once(tmp_path, monkeypatch):
    import bicc_lab.tracking.naming as naming
    from bicc_lab.preflight import preflight
    from bicc_lab.spec import load_sweep
    from bicc_lab.sweep.context import SweepContext

    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "base.yaml", "name: t\nmodel: {name: tiny}\ntracking: {uri: sqlite:///m/mlflow.db}\n")
    _write(tmp_path / "s.yaml", "name: s\nbase: base.yaml\n")
    ctx = SweepContext.of(load_sweep("s.yaml"))
    parsed = []
    real = naming.StoreURI.parse.__func__

    def counting(cls, uri, base=None):
        if not isinstance(uri, naming.StoreURI):
            parsed.append(uri)
        return real(cls, uri, base)

    monkeypatch.setattr(naming.StoreURI, "parse", classmethod(counting))
    preflight([], tracking_uri=ctx.store, create_store=True)
    ctx.check_store(create=True)
    ctx.tracker(create=True).ensure_experiment("s")
    assert parsed == []  # the value made once by SweepContext, handed to every step
    assert ctx.store.path == tmp_path / "m" / "mlflow.db"


# --------------------------------------------------------------------------- item 8: env variables, plan = run


def test_every_environment_variable_has_a_check():
    from bicc_lab.cli.main import ENVIRONMENT

    assert set(ENVIRONMENT) - {"MLFLOW_TRACKING_URI"} <= set(CHECKS)  # that one: with the store


@pytest.mark.parametrize(
    ("name", "value", "said"),
    [
        ("BICC_LAB_HEARTBEAT_S", "fast", "BICC_LAB_HEARTBEAT_S='fast': expected a number of seconds > 0"),
        ("BICC_LAB_STALE_AFTER_S", "1", "must be greater than BICC_LAB_HEARTBEAT_S (2 s)"),
        ("BICC_LAB_STORE_WAIT_S", "-1", "BICC_LAB_STORE_WAIT_S='-1': expected a number of seconds >= 0"),
        ("BICC_LAB_MP_START", "threads", "BICC_LAB_MP_START='threads': expected one of"),
        ("BICC_LAB_DATA_DIR", "/nonexistent/data", "BICC_LAB_DATA_DIR=/nonexistent/data: no such directory"),
        ("BICC_LAB_ROLLOUT_DUMP", "/proc/dump", "BICC_LAB_ROLLOUT_DUMP=/proc/dump: cannot create a directory in /proc"),
        ("BICC_LAB_ROLLOUT_REPLAY", "/nonexistent/replay", "BICC_LAB_ROLLOUT_REPLAY=/nonexistent/replay: no such directory"),
        ("BICC_LAB_VLLM_SERVER_HOST", "http://node", "expected a host name"),
        ("RANK", "zero", "RANK='zero': expected an integer >= 0"),
    ],
)
def test_a_bad_environment_variable_is_one_line(project, name, value, said):
    proc = _cli(["sweep", "plan", "s.yaml"], project, env={name: value})
    _one_line(proc, said)


def test_a_bad_mlflow_tracking_uri_is_named_as_the_variable(project):
    for command in (["sweep", "plan", "s.yaml"], ["train", "base.yaml"]):
        proc = _cli(command, project, env={"MLFLOW_TRACKING_URI": "foo://x"})
        _one_line(proc, "MLFLOW_TRACKING_URI 'foo://x': unknown scheme 'foo://'")
    assert not (project / "runs").exists()


def test_help_still_works_with_a_bad_environment_variable(project):
    for args in (["sweep", "plan", "-h"], ["--help"]):
        proc = _cli(args, project, env={"BICC_LAB_HEARTBEAT_S": "fast"})
        assert proc.returncode == 0 and "Usage:" in proc.stdout, proc.stderr
    proc = _cli(["data", "list"], project, env={"BICC_LAB_HEARTBEAT_S": "fast"})  # no preflight there
    _one_line(proc, "BICC_LAB_HEARTBEAT_S='fast'")


def test_sweep_plan_refuses_what_sweep_run_refuses(project):
    for key, said in (
        ("train.extra.bogus", "train.extra.bogus: 'bogus' is not a field of TRL's GRPOConfig"),
        ("train.extra.seed", "train.extra.seed would replace the seed that bicc-lab sets from seed"),
    ):
        lines = []
        for command in ("plan", "run"):
            proc = _cli(["sweep", command, "s.yaml", "--set", f"{key}=3"], project)
            lines.append(_one_line(proc, said, f"at --set {key} (in cell tiny/grpo/base/s0)"))
        assert lines[0] == lines[1]
    assert not (project / "runs").exists() and not (project / "mlflow.db").exists()
