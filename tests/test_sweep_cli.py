"""`bicc-lab sweep plan|run|status` without training: user mistakes, the shipped sweeps, states."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bicc_lab.cli.main import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()

BASE = """\
name: t
model:
  name: tiny
  tiny: {layers: 2, hidden: 32, heads: 2, max_warmup_steps: 0}
train: {max_steps: 2, num_generations: 4, per_device_train_batch_size: 8, max_completion_length: 4}
eval: {enabled: false}
"""


def _write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


@pytest.fixture()
def sweep_dir(tmp_path):
    _write(tmp_path / "base.yaml", BASE)
    return tmp_path


def _invoke(*args: str):
    return runner.invoke(app, list(args))


def _one_line_exit_2(result, *fragments: str) -> str:
    assert result.exit_code == 2, result.output
    text = result.output.strip()
    assert "\n" not in text, text
    assert "Traceback" not in text
    for fragment in fragments:
        assert fragment in text, text
    return text


BAD_SWEEPS = {
    "broken YAML": (
        """
        base: base.yaml
        grid:
          seed: [0, 1
          variant: [grpo]
        """,
        "invalid YAML",
    ),
    "unknown key": (
        """
        base: base.yaml
        max_paralel: 2
        """,
        "unknown key 'max_paralel'",
    ),
    "unknown key in set": (
        """
        base: base.yaml
        set:
          train:
            max_stpes: 3
        """,
        "unknown key 'train.max_stpes'",
    ),
    "wrong type": (
        """
        base: base.yaml
        grid:
          train.max_steps: [2, lots]
        """,
        "train.max_steps",
    ),
    "unknown grid axis": (
        """
        base: base.yaml
        grid:
          seed: [0]
          bicc.enabeld: [true, false]
        """,
        "unknown grid axis 'bicc.enabeld'",
    ),
}


@pytest.mark.parametrize("command", ["plan", "run", "status"])
@pytest.mark.parametrize("case", list(BAD_SWEEPS))
def test_user_mistakes_are_one_line_with_file_and_line_and_exit_2(sweep_dir, case, command):
    body, fragment = BAD_SWEEPS[case]
    path = _write(sweep_dir / "s.yaml", body)
    db = sweep_dir / "mlflow.db"
    result = _invoke(
        "sweep",
        command,
        str(path),
        "--runs-dir",
        str(sweep_dir / "runs"),
        "--set",
        f"tracking.uri=sqlite:///{db}",
    )
    text = _one_line_exit_2(result, fragment)
    assert re.search(r"s\.yaml:\d+(:\d+)?", text), text
    assert not db.exists() and not (sweep_dir / "runs").exists()  # nothing was started


def test_missing_sweep_file_and_bad_set(sweep_dir):
    _one_line_exit_2(_invoke("sweep", "plan", str(sweep_dir / "nope.yaml")), "nope.yaml")
    _write(sweep_dir / "s.yaml", "base: base.yaml\ngrid: {seed: [0, 1]}\n")
    _one_line_exit_2(
        _invoke("sweep", "plan", str(sweep_dir / "s.yaml"), "--set", "train.max_steps=abc"),
        "train.max_steps",
        "--set",
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_tracking_server_is_one_line(sweep_dir):
    _write(sweep_dir / "s.yaml", "base: base.yaml\ngrid: {seed: [0, 1]}\n")
    uri = f"http://127.0.0.1:{_free_port()}"
    for command in ("run", "plan"):
        result = _invoke(
            "sweep",
            command,
            str(sweep_dir / "s.yaml"),
            "--runs-dir",
            str(sweep_dir / "runs"),
            "--set",
            f"tracking.uri={uri}",
        )
        _one_line_exit_2(result, "cannot reach the MLflow tracking server", uri)


def _plan_in_subprocess(sweep: Path, tmp_path: Path) -> tuple[str, list[str]]:
    """`sweep plan` in a fresh interpreter; returns its output and the heavy modules it imported."""
    code = textwrap.dedent(
        f"""
        import sys
        from bicc_lab.cli.main import app
        try:
            app(["sweep", "plan", {str(sweep)!r}, "--runs-dir", {str(tmp_path / "runs")!r},
                 "--set", "tracking.uri=sqlite:///{tmp_path / "mlflow.db"}"])
        except SystemExit as exc:
            assert exc.code in (0, None), exc.code
        heavy = ("torch", "transformers", "trl", "mlflow", "lm_eval", "datasets", "pandas")
        print("HEAVY=" + ",".join(m for m in heavy if m in sys.modules))
        """
    )
    env = {"HF_HUB_OFFLINE": "1", "COLUMNS": "250", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    heavy = out.stdout.strip().splitlines()[-1].removeprefix("HEAVY=")
    return out.stdout, [m for m in heavy.split(",") if m]


def test_paper_sweep_plans_offline_without_loading_anything(tmp_path):
    text, heavy = _plan_in_subprocess(ROOT / "sweeps" / "paper.yaml", tmp_path)
    assert heavy == []
    assert "48 cells" in text and "48 pending" in text
    for name in ("Qwen3-4B-Instruct-2507/grpo/base/s0", "Phi-4-mini-instruct/gspo/bicc+rcc/s0"):
        assert name in text
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "runs").exists()


def test_quickstart_sweep_plans(tmp_path):
    text, heavy = _plan_in_subprocess(ROOT / "sweeps" / "quickstart.yaml", tmp_path)
    assert heavy == []
    assert "16 pending" in text and "tiny/dr_grpo/bicc+rcc/s1" in text


def test_plan_and_status_read_states_from_mlflow_and_the_runs_dir(sweep_dir):
    """A finished, a failed and an interrupted cell, written directly into MLflow and files."""
    from bicc_lab.launch import layout
    from bicc_lab.spec import load_sweep
    from bicc_lab.sweep.context import SweepContext
    from bicc_lab.sweep.state import cell_directory
    from bicc_lab.tracking.naming import Tag
    from bicc_lab.tracking.store import Tracker

    path = _write(sweep_dir / "s.yaml", "base: base.yaml\ngrid: {seed: [0, 1, 2, 3]}\n")
    uri = f"sqlite:///{sweep_dir / 'mlflow.db'}"
    args = ["--runs-dir", str(sweep_dir / "runs"), "--set", f"tracking.uri={uri}"]
    ctx = SweepContext.of(load_sweep(path, [f"tracking.uri={uri}"]), sweep_dir / "runs")
    cells = ctx.sweep.cells
    tracker = Tracker(uri)
    exp = tracker.ensure_experiment(ctx.experiment)
    parent = tracker.ensure_parent(exp, ctx.sweep.name, {})

    def make(cell, status, **tags):
        run = tracker.create_cell_run(
            exp, parent, cell.name, {Tag.CONFIG_HASH: cell.config_hash, **tags}
        )
        tracker.set_status(run, status)
        return run

    finished = make(cells[0], "FINISHED")
    tracker.log_metrics(
        finished,
        [
            __import__("mlflow").entities.Metric(k, v, 0, 2)
            for k, v in {"reward": 0.75, "eval/arith/avg_at_4": 0.5}.items()
        ],
    )
    make(cells[1], "FAILED", **{Tag.ERROR: "Traceback ...\nDataError: no such file"})
    run3 = make(cells[2], "RUNNING", **{Tag.HEARTBEAT: "1"})
    d3 = cell_directory(ctx.runs_dir, ctx.sweep, cells[2])
    d3.mkdir(parents=True)
    layout.write_atomic(d3 / layout.RUN_ID_FILE, run3 + "\n")
    (d3 / layout.METRICS_FILE).write_text(json.dumps({"step": 1, "reward": 0.25}) + "\n")

    plan = _invoke("sweep", "plan", str(path), *args)
    assert plan.exit_code == 0, plan.output
    assert "1 finished, 1 interrupted, 1 failed, 1 pending" in plan.output
    assert "DataError: no such file" in plan.output

    status = _invoke("sweep", "status", str(path), *args)
    assert status.exit_code == 0, status.output
    # avg@4 0.5 logged without a score_unit tag (an older run): shown in points
    assert "arith avg@4 (%)" in status.output and "50.0" in status.output and "0.750" in status.output
    assert "training steps 3/8" in status.output  # 2 (finished) + 1 (interrupted) of 4 x 2


def test_local_launcher_pins_cells_to_the_least_used_gpu(tmp_path):
    """`gpus: [0, 1]` -> CUDA_VISIBLE_DEVICES round-robin over the running cells; threads set."""
    from bicc_lab.launch.local import LocalLauncher

    fake_python = tmp_path / "python"
    fake_python.write_text("#!/bin/sh\nenv\nsleep 3\n")
    fake_python.chmod(0o755)
    launcher = LocalLauncher(gpus=[0, 1], threads=3, python=str(fake_python))
    dirs = []
    for i in range(3):
        d = tmp_path / f"cell{i}"
        d.mkdir()
        dirs.append(d)
        (job,) = launcher.submit([(f"c{i}", d)])
        assert job.gpu == [0, 1, 0][i]
    deadline = time.time() + 20
    while time.time() < deadline and not all(
        "PYTHONUNBUFFERED" in (d / "run.log").read_text() for d in dirs
    ):
        time.sleep(0.05)
    for job, _code in launcher.cancel(grace_s=5):
        assert job.handle.poll() is not None
    assert launcher.running == {}
    logs = [(d / "run.log").read_text() for d in dirs]
    assert ["CUDA_VISIBLE_DEVICES=0" in t for t in logs] == [True, False, True]
    assert "CUDA_VISIBLE_DEVICES=1" in logs[1]
    assert all("PYTHONUNBUFFERED=1" in t for t in logs)


def _plan_memory(tmp_path: Path, n_cells: int) -> tuple[int, dict]:
    """`sweep plan --json` of a grid of ``n_cells`` (seeds x 10 x 10) in a fresh interpreter, with
    max_cells raised on the command line: its peak RSS (KiB) and the JSON it printed."""
    _write(tmp_path / "base.yaml", BASE)
    # A product of short axes (the grid file stays small; the cells are many).
    _write(
        tmp_path / "big.yaml",
        """
        base: base.yaml
        max_cells: 10
        grid:
          train.learning_rate: [1.0e-4, 2.0e-4, 3.0e-4, 4.0e-4, 5.0e-4, 6.0e-4, 7.0e-4, 8.0e-4, 9.0e-4, 1.0e-3]
          rcc.coef: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
        """,
    )
    out_file = tmp_path / f"plan-{n_cells}.json"
    code = textwrap.dedent(
        f"""
        import resource, sys
        from bicc_lab.cli.main import app
        sys.stdout = open({str(out_file)!r}, "w")
        try:
            app(["sweep", "plan", "big.yaml", "--json", "--runs-dir", "runs",
                 "--set", "tracking.uri=sqlite:///{tmp_path / "mlflow.db"}",
                 "--set", "grid.seed=[{", ".join(map(str, range(n_cells // 100)))}]",
                 "--set", "max_cells={n_cells}"])
        except SystemExit as exc:
            assert exc.code in (0, None), exc.code
        sys.stdout.close()
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
        """
    )
    # PYTHONPATH: this checkout's bicc_lab, whichever one the interpreter has installed.
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr
    return int(out.stderr.strip().splitlines()[-1]), json.loads(out_file.read_text())


@pytest.mark.slow
def test_plan_of_a_large_grid_streams_in_bounded_memory(tmp_path):
    """Built and held, a cell costs ~16 KB: 19,000 more cells would add ~300 MB of peak
    memory. Streamed, the larger plan grows only by its digests (~100 bytes a cell, under
    2 MB here; 1 KB a cell is allowed for the allocator's noise). 13-30 s on two cores."""
    small, large = 1000, 20000
    rss_small, plan_small = _plan_memory(tmp_path, small)
    rss_large, plan_large = _plan_memory(tmp_path, large)
    for n, plan in ((small, plan_small), (large, plan_large)):
        assert plan["n_cells"] == n and len(plan["cells"]) == n
        assert plan["counts"] == {"pending": n}
        assert [c["index"] for c in plan["cells"]] == list(range(n))
        assert len({c["cell_id"] for c in plan["cells"]}) == n
    assert plan_large["cells"][-1]["name"] == f"tiny/grpo/base/s{large // 100 - 1}/learning_rate=0.001/coef=1.0"
    growth_kib = rss_large - rss_small
    assert growth_kib < 1 * (large - small), (rss_small, rss_large)


def test_plan_past_one_chunk_streams_the_same_rows(sweep_dir, monkeypatch):
    """Past PLAN_CHUNK rows the plan streams (tables of PLAN_CHUNK rows, JSON written as
    the cells come): the same rows, records, counts and launch line as one table."""
    from bicc_lab.sweep import views

    _write(
        sweep_dir / "s.yaml",
        """
        base: base.yaml
        grid:
          bicc.enabled: [false, true]
          seed: [0, 1, 2, 3, 4]
        exclude:
          - {bicc.enabled: true, seed: 4}
        """,
    )
    args = ("sweep", "plan", str(sweep_dir / "s.yaml"), "--runs-dir", str(sweep_dir / "runs"),
            "--set", f"tracking.uri=sqlite:///{sweep_dir / 'mlflow.db'}")
    whole_json = _invoke(*args, "--json")
    whole_text = _invoke(*args)
    monkeypatch.setattr(views, "PLAN_CHUNK", 4)
    streamed_json = _invoke(*args, "--json")
    streamed_text = _invoke(*args)
    for result in (whole_json, whole_text, streamed_json, streamed_text):
        assert result.exit_code == 0, result.output
    assert json.loads(streamed_json.output) == json.loads(whole_json.output)
    assert len(json.loads(streamed_json.output)["cells"]) == 9

    def rows(text: str) -> list[str]:
        return re.findall(r"^│ +(\d+) │ (\S+)", text, flags=re.M)

    assert rows(streamed_text.output) == rows(whole_text.output)
    assert len(rows(streamed_text.output)) == 9
    assert streamed_text.output.count("┏") == 3  # tables of 4, 4 and 1 rows
    tail = lambda text: text.strip().splitlines()[-2:]  # noqa: E731
    assert tail(streamed_text.output) == tail(whole_text.output)
    assert "9 pending" in tail(streamed_text.output)[0]
