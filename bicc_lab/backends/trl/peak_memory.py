"""Peak memory of a training process, the cost table's memory column (``perf/peak_memory_mib``).

On a GPU, CUDA's peak allocation on the training device (``torch.cuda.max_memory_allocated``):
the tensors the run held at its busiest, without the caching allocator's slack. On a CPU, the
process's peak resident set (``getrusage``): everything the process ever held, the Python
runtime and the loaded libraries included, so compare it across arms of one sweep (same
libraries, same model) rather than read it as the run's tensors alone.
"""

from __future__ import annotations

import resource
import sys

import torch

MIB = 2**20


def peak_memory_mib(device: torch.device) -> float:
    """The peak memory of this process so far, in MiB (see the module docstring for which)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / MIB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in KiB on Linux, in bytes on macOS.
    return peak / MIB if sys.platform == "darwin" else peak * 1024 / MIB
