"""Where a run executes.

- ``layout``: the files of a cell directory (standard library only);
- ``locks``: the per-cell ``fcntl.flock`` that makes a cell run in one process at a time;
- ``base``: the launcher protocol (submit, poll, cancel, logs) and the worker's exit codes;
- ``local``: N local worker processes, pinned to GPUs round-robin;
- ``slurm``: one SLURM job per cell (or one job array per sweep) through submitit;
- ``schedule``: the one loop ``sweep run`` and ``tune run`` schedule through;
- ``worker``: ``python -m bicc_lab.launch.worker CELL_DIR`` runs one cell
  (train -> evaluate -> log to MLflow).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bicc_lab.errors import UserError

__all__ = ["LauncherError", "describe_launch", "make_launcher"]


class LauncherError(UserError):
    """The launcher cannot be used here (e.g. kind slurm without SLURM or submitit)."""


def make_launcher(
    launch: Any,
    *,
    gpus: list[int] | None,
    max_parallel: int,
    sweep_dir: Path,
    job_name: str,
    vllm_server: bool = False,
    model: str = "",
) -> Any:
    """The launcher of a sweep's ``launch:`` block (``bicc_lab.spec.LaunchConfig``)."""
    if launch.kind == "slurm":
        from bicc_lab.launch.slurm import SlurmLauncher, SlurmUnavailable

        try:
            return SlurmLauncher(
                launch, sweep_dir=sweep_dir, job_name=job_name, vllm_server=vllm_server, model=model
            )
        except SlurmUnavailable as exc:
            raise LauncherError(str(exc)) from None
    from bicc_lab.launch.local import LocalLauncher, threads_per_worker

    return LocalLauncher(gpus=gpus, threads=None if gpus else threads_per_worker(max_parallel))


def describe_launch(launch: Any, *, n_cells: int, max_parallel: int, gpus: list[int] | None) -> str:
    """One line: where the cells would run and with what (``sweep plan``)."""
    if launch.kind == "local":
        where = f"GPUs {', '.join(map(str, gpus))} round-robin" if gpus else "CPU threads split evenly"
        return f"launcher local: {max_parallel} cell(s) at a time on this machine, {where}"
    parts = [f"{launch.nodes} node(s) x {launch.gpus_per_node} GPU(s)", f"{launch.cpus_per_task} CPU(s)/node"]
    if launch.mem_gb is not None:
        parts.append(f"{launch.mem_gb:g} GB/node")
    parts.append(f"{launch.time_min} min per job (requeued and resumed past it)")
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(launch, key) is not None:
            parts.append(f"{key} {getattr(launch, key)}")
    if launch.extra:
        parts.append("sbatch " + " ".join(f"--{k}={v}" for k, v in launch.extra.items()))
    if launch.array_parallelism is not None and n_cells > 1:
        how = f"one job array of {n_cells} tasks, at most {launch.array_parallelism} at once"
    else:
        how = f"{n_cells} job(s), one per cell"
    layout = ""
    if launch.nodes > 1:
        layout = "; multi-node: accelerate launch across the nodes (vLLM server on the last node with train.vllm_mode: server)"
    return f"launcher slurm: {how}; per cell: {', '.join(parts)}{layout}"
