"""Local process launcher: one worker process per cell, its output appended to ``run.log``.

Workers start in their own session (Ctrl-C in the terminal reaches only ``sweep run``,
which then stops them in order), get ``SIGTERM`` when the launching process dies
(the worker sets ``PR_SET_PDEATHSIG`` on Linux and watches its parent pid), and are pinned
to a GPU through ``CUDA_VISIBLE_DEVICES`` when the sweep lists ``gpus``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bicc_lab.launch import layout

__all__ = ["LocalLauncher", "WorkerProcess", "threads_per_worker"]


def threads_per_worker(parallel: int) -> int:
    cpus = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    )
    return max(1, cpus // max(1, parallel))


@dataclass
class WorkerProcess:
    """A running (or finished) worker."""

    key: str
    directory: Path
    popen: subprocess.Popen
    started: float = field(default_factory=time.time)
    gpu: int | None = None
    terminated_at: float | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def poll(self) -> int | None:
        return self.popen.poll()

    def terminate(self) -> None:
        """SIGTERM (the worker marks its run KILLED and exits)."""
        if self.popen.poll() is None:
            self.terminated_at = self.terminated_at or time.time()
            try:
                self.popen.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        if self.popen.poll() is None:
            try:
                self.popen.kill()
            except ProcessLookupError:
                pass


class LocalLauncher:
    """Starts ``python -m bicc_lab.launch.worker CELL_DIR`` processes.

    Args:
        gpus: GPU ids to spread workers over (the least-used first); None leaves
            ``CUDA_VISIBLE_DEVICES`` alone.
        threads: CPU threads per worker (``OMP_NUM_THREADS`` etc., unless already set).
        env: extra environment variables for every worker.
    """

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
        self.running: dict[str, WorkerProcess] = {}

    def _pick_gpu(self) -> int | None:
        if not self.gpus:
            return None
        load = {gpu: 0 for gpu in self.gpus}
        for proc in self.running.values():
            if proc.gpu in load and proc.poll() is None:
                load[proc.gpu] += 1
        return min(self.gpus, key=lambda gpu: (load[gpu], self.gpus.index(gpu)))

    def start(self, key: str, directory: Path) -> WorkerProcess:
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
        proc = WorkerProcess(key=key, directory=directory, popen=popen, gpu=gpu)
        self.running[key] = proc
        return proc

    def finished(self) -> list[tuple[WorkerProcess, int]]:
        """Workers that exited since the last call, with their exit codes."""
        done = []
        for key, proc in list(self.running.items()):
            code = proc.poll()
            if code is not None:
                done.append((proc, code))
                del self.running[key]
        return done

    def stop_all(self, grace_s: float = 10.0) -> list[tuple[WorkerProcess, int]]:
        """SIGTERM every worker, SIGKILL the ones still alive after ``grace_s``."""
        procs = list(self.running.values())
        for proc in procs:
            proc.terminate()
        deadline = time.time() + grace_s
        while time.time() < deadline and any(p.poll() is None for p in procs):
            time.sleep(0.1)
        for proc in procs:
            proc.kill()
        results = []
        for proc in procs:
            try:
                code = proc.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:  # pragma: no cover - unkillable
                code = -9
            results.append((proc, code))
        self.running.clear()
        return results
