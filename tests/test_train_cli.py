"""`bicc-lab train`: user mistakes are one line and exit 2, before any model is loaded."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "experiments" / "tiny.yaml"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    # A fresh process, so that "nothing heavy was loaded" is observable.
    code = (
        "import sys\n"
        "from bicc_lab.cli.main import main\n"
        "try:\n"
        f"    main({list(args)!r})\n"
        "finally:\n"
        "    print('LOADED=' + ','.join(m for m in ('transformers', 'trl') if m in sys.modules), file=sys.stderr)\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["variant=drgrpo"], "did you mean 'dr_grpo'"),
        (["data.train=/nonexistent/train.jsonl"], "/nonexistent/train.jsonl"),
        (["bicc.context_fraction=1.5"], "bicc.context_fraction"),
        (["train.num_generations=1"], "num_generations must be >= 2"),
        (["model.name=./no/such/model"], "no such model directory"),
        (["bicc.contxt_fraction=0.3"], "did you mean 'bicc.context_fraction'"),
    ],
)
def test_bad_input_is_one_line_exit_2_before_loading_a_model(overrides, expected):
    args = ["train", str(TINY)]
    for item in overrides:
        args += ["--set", item]
    proc = run_cli(*args)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [x for x in proc.stderr.splitlines() if not x.startswith("LOADED=")]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert expected in lines[0]
    assert "LOADED=\n" in proc.stderr + "\n" or proc.stderr.strip().endswith("LOADED=")


def test_missing_config_file_is_one_line_exit_2():
    proc = run_cli("train", "experiments/nope.yaml")
    assert proc.returncode == 2
    assert "nope.yaml" in proc.stderr.splitlines()[0]
