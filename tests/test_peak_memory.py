"""The trainer's peak-memory figure (``perf/peak_memory_mib``): the process's peak resident set
on a CPU, CUDA's peak allocation on a GPU, in MiB."""

from __future__ import annotations

import torch

from bicc_lab.backends.trl import peak_memory
from bicc_lab.backends.trl.peak_memory import MIB, peak_memory_mib


def _status_mib(field: str) -> float:
    """A /proc/self/status memory field (kB) in MiB: VmHWM is the peak resident set."""
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024 / MIB
    raise AssertionError(f"no {field}")


def test_cpu_peak_is_the_processs_peak_resident_set_in_mib():
    held = torch.ones(64 * MIB // 4)  # 64 MiB, written, so resident
    peak = peak_memory_mib(torch.device("cpu"))
    # The kernel's own peak figure, read the other way: the same MiB (a KiB/MiB slip is 1024x off).
    assert abs(peak - _status_mib("VmHWM")) <= 1.0
    assert peak >= _status_mib("VmRSS") - 1.0 >= 64
    del held


def test_cuda_peak_is_the_allocators_peak_in_mib(monkeypatch):
    monkeypatch.setattr(peak_memory.torch.cuda, "max_memory_allocated", lambda device=None: 3 * MIB + MIB // 2)
    assert peak_memory_mib(torch.device("cuda", 0)) == 3.5
