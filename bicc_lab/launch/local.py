"""Local process launcher: one worker process per cell, its output appended to ``run.log``.

Workers start in their own session (Ctrl-C in the terminal reaches only ``sweep run``,
which then stops them in order), get ``SIGTERM`` when the launching process dies
(the worker sets ``PR_SET_PDEATHSIG`` on Linux and watches its parent pid), and are pinned
to a GPU through ``CUDA_VISIBLE_DEVICES`` when the sweep lists ``gpus``. Stopping is
SIGTERM (the worker marks its run KILLED), then SIGKILL after a grace period.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from bicc_lab.launch import layout
from bicc_lab.launch.base import Job

__all__ = ["LocalLauncher", "threads_per_worker"]


def threads_per_worker(parallel: int) -> int:
    cpus = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    )
    return max(1, cpus // max(1, parallel))


class LocalLauncher:
    """Starts ``python -m bicc_lab.launch.worker CELL_DIR`` processes.

    Args:
        gpus: GPU ids to spread workers over (the least-used first); None leaves
            ``CUDA_VISIBLE_DEVICES`` alone.
        threads: CPU threads per worker (``OMP_NUM_THREADS`` etc., unless already set).
        env: extra environment variables for every worker.
    """

    kind = "local"
    detachable = False  # workers follow the launching process out

    def __init__(
        self,
        *,
        gpus: Sequence[int] | None = None,
        threads: int | None = None,
        env: Mapping[str, str] | None = None,
        python: str | None = None,
    ) -> None:
        self.gpus = list(gpus) if gpus else None
        self.threads = threads
        self.env = dict(env or {})
        self.python = python or sys.executable
        self.running: dict[str, Job] = {}

    def _pick_gpu(self) -> int | None:
        if not self.gpus:
            return None
        load = {gpu: 0 for gpu in self.gpus}
        for job in self.running.values():
            if job.gpu in load and job.handle.poll() is None:
                load[job.gpu] += 1
        return min(self.gpus, key=lambda gpu: (load[gpu], self.gpus.index(gpu)))

    def attach(self, key: str, directory: Path) -> Job | None:
        """Never: a local worker does not outlive the process that started it."""
        return None

    def logs(self, job: Job) -> Path:
        return job.directory / layout.LOG_FILE

    def submit(self, cells: list[tuple[str, Path]]) -> list[Job]:
        return [self._start(key, directory) for key, directory in cells]

    def _start(self, key: str, directory: Path) -> Job:
        env = dict(os.environ)
        env.update(self.env)
        env["PYTHONUNBUFFERED"] = "1"
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        if self.threads and "OMP_NUM_THREADS" not in env:  # the user's setting wins
            env["OMP_NUM_THREADS"] = str(self.threads)
            env.setdefault("MKL_NUM_THREADS", str(self.threads))
        gpu = self._pick_gpu()
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = str(gpu)
        log = open(directory / layout.LOG_FILE, "ab")  # noqa: SIM115 - owned by the child
        try:
            popen = subprocess.Popen(
                [
                    self.python,
                    "-m",
                    "bicc_lab.launch.worker",
                    str(directory),
                    "--parent-pid",
                    str(os.getpid()),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=os.getcwd(),
                start_new_session=True,
            )
        finally:
            log.close()
        job = Job(key=key, directory=directory, gpu=gpu, handle=popen)
        self.running[key] = job
        return job

    def poll(self) -> list[tuple[Job, int]]:
        """Workers that exited since the last call, with their exit codes."""
        done = []
        for key, job in list(self.running.items()):
            code = job.handle.poll()
            if code is not None:
                done.append((job, code))
                del self.running[key]
        return done

    def cancel(self, jobs: list[Job] | None = None, grace_s: float = 10.0) -> list[tuple[Job, int]]:
        """SIGTERM the workers (all by default), SIGKILL the ones alive after ``grace_s``."""
        jobs = list(self.running.values()) if jobs is None else jobs
        for job in jobs:
            _signal(job, signal.SIGTERM)
        deadline = time.time() + grace_s
        while time.time() < deadline and any(j.handle.poll() is None for j in jobs):
            time.sleep(0.1)
        for job in jobs:
            _signal(job, signal.SIGKILL)
        results = []
        for job in jobs:
            try:
                code = job.handle.wait(timeout=10)
            except subprocess.TimeoutExpired:  # pragma: no cover - unkillable
                code = -9
            results.append((job, code))
            self.running.pop(job.key, None)
        return results

    def release(self) -> None:
        # Local workers cannot outlive `sweep run` (PDEATHSIG): leaving them means stopping them.
        self.cancel()


def _signal(job: Job, sig: signal.Signals) -> None:
    if job.handle.poll() is None:
        try:
            job.handle.send_signal(sig)
        except ProcessLookupError:
            pass
