"""`make install` picks its installer as the README says: uv when the venv has it, pip when
it does not or when USE_UV=0, the same pins and extras either way. Run against a stand-in
venv whose `uv` and `pip` print what they were asked, so no package is installed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _fake_venv(tmp_path: Path, *, with_uv: bool) -> Path:
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").write_text("#!/bin/sh\nexit 0\n")  # the venv's target is satisfied
    tools = ("pip", "uv") if with_uv else ("pip",)
    for tool in tools:
        (bin_dir / tool).write_text(f'#!/bin/sh\necho "{tool} $*"\n')
    for path in bin_dir.iterdir():
        path.chmod(0o755)
    return tmp_path / "venv"


def _make_install(venv: Path, *extra: str) -> str:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    proc = subprocess.run(["make", "-s", "install", f"VENV={venv}", "TORCH=torch==2.13.0", *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_uv_installs_the_project_when_the_venv_has_it_and_torch_goes_through_pip(tmp_path):
    out = _make_install(_fake_venv(tmp_path, with_uv=True)).splitlines()
    assert out[0] == "pip install torch==2.13.0"  # its CPU wheel lies where only pip looks
    assert out[1].startswith("uv pip install --python ") and out[1].endswith("-e .[dev,released]")


def test_pip_installs_the_same_extras_without_uv_or_with_use_uv_0(tmp_path):
    without = _make_install(_fake_venv(tmp_path / "a", with_uv=False)).splitlines()
    refused = _make_install(_fake_venv(tmp_path / "b", with_uv=True), "USE_UV=0").splitlines()
    assert without == refused == ["pip install torch==2.13.0", "pip install -e .[dev,released]"]
