"""SLURM launcher: each cell a SLURM job (or a task of one job array), through submitit.

What a job runs (:class:`CellJob`, on every node of the job): the cell's worker,
``python -m bicc_lab.launch.worker CELL_DIR``, with its output appended to the cell's
``run.log`` (submitit's own logs go to ``<cell dir>/slurm/``, or ``<sweep dir>/slurm-array/``
for arrays). With ``gpus_per_node > 1`` or ``nodes > 1`` the worker runs under
``accelerate launch``, one process per GPU, the rendezvous taken from the SLURM environment
(first node of the job, a port derived from the job id); with ``train.vllm_mode: server``
and ``nodes > 1`` the last node runs ``trl vllm-serve`` and the others train
(:func:`node_command`).

Preemption and timeouts: :class:`CellJob` is a submitit ``Checkpointable``, so SLURM's
warning signal before the time limit (or a preemption) requeues the job; the requeued job
runs the worker again, which resumes from the cell's newest checkpoint into the same
MLflow run (``mlflow_run_id`` in the cell directory): one run, ``attempts`` counts the tries.

Which job runs a cell is recorded in ``<cell dir>/slurm_job.json``, so a later ``sweep run``
or ``sweep status`` re-attaches to a job that is still queued or running.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bicc_lab.launch import layout
from bicc_lab.launch.base import EXIT_FAILED, EXIT_KILLED, Job

__all__ = [
    "ACTIVE_STATES",
    "JOB_FILE",
    "CellJob",
    "SlurmLauncher",
    "SlurmUnavailable",
    "node_command",
    "read_job_record",
    "sbatch_parameters",
    "slurm_states",
]

JOB_FILE = "slurm_job.json"
# squeue/sacct states of a job that is not over (a requeued job passes through them again)
ACTIVE_STATES = frozenset(
    {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING",
     "SUSPENDED", "CONFIGURING", "COMPLETING", "PREEMPTED", "STOPPED", "SIGNALING", "STAGE_OUT"}
)
RESULT_GRACE_S = 10.0  # a finished job's result file may land just after squeue forgets it
RENDEZVOUS_PORT_BASE = 29500
QUEUE_QUERY_EVERY_S = 3.0


class SlurmUnavailable(RuntimeError):
    """No SLURM commands here (sbatch/squeue), or submitit is not installed."""


def _check_available() -> None:
    import shutil

    missing = [cmd for cmd in ("sbatch", "squeue", "scancel") if shutil.which(cmd) is None]
    if missing:
        raise SlurmUnavailable(
            f"launch.kind slurm: {', '.join(missing)} not found on PATH; run on a SLURM login node"
        )
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise SlurmUnavailable(
            "launch.kind slurm needs submitit: pip install 'bicc-lab[slurm]'"
        ) from None


# --------------------------------------------------------------------------- in the job


def node_command(
    directory: Path,
    *,
    nodes: int,
    gpus_per_node: int,
    node_rank: int,
    hostnames: list[str],
    job_id: str,
    vllm_server: bool = False,
    model: str = "",
    python: str | None = None,
) -> tuple[list[str], dict[str, str]]:
    """The command (argv) and extra environment of one node of a cell's job.

    - one node, at most one GPU: the worker itself;
    - otherwise ``accelerate launch`` over the training nodes, one process per GPU (one per
      node on CPU), rendezvous at the first node on port ``29500 + job id % 1000``;
    - ``vllm_server`` (``train.vllm_mode: server``) with ``nodes > 1``: the last node runs
      ``trl vllm-serve`` on its GPUs, and the training nodes reach it through
      ``BICC_LAB_VLLM_SERVER_HOST`` (the worker sets ``vllm_server_host``).
    """
    python = python or sys.executable
    worker = ["-m", "bicc_lab.launch.worker", str(directory)]
    serve = vllm_server and nodes > 1
    train_nodes = nodes - 1 if serve else nodes
    env: dict[str, str] = {}
    if serve:
        env["BICC_LAB_VLLM_SERVER_HOST"] = hostnames[-1]
        if node_rank == nodes - 1:
            gpus = max(1, gpus_per_node)
            return [
                python, "-m", "trl.cli.main", "vllm-serve",
                "--model", model,
                "--tensor_parallel_size", str(gpus),
                "--host", "0.0.0.0",
            ], env
    if train_nodes == 1 and gpus_per_node <= 1:
        return [python, *worker], env
    per_node = max(1, gpus_per_node)
    digits = "".join(ch for ch in job_id.split("_")[0] if ch.isdigit()) or "0"
    port = RENDEZVOUS_PORT_BASE + int(digits) % 1000
    return [
        python, "-m", "accelerate.commands.launch",
        "--num_machines", str(train_nodes),
        "--machine_rank", str(node_rank),
        "--num_processes", str(train_nodes * per_node),
        "--main_process_ip", hostnames[0],
        "--main_process_port", str(port),
        *(["--multi_gpu"] if train_nodes * per_node > 1 and gpus_per_node >= 1 else []),
        *(["--cpu"] if gpus_per_node == 0 else []),
        "--same_network",
        *worker,
    ], env


class CellJob:
    """The callable submitit runs on each node of a cell's job (see the module docstring).

    Checkpointable: on a timeout or preemption warning submitit asks ``checkpoint`` for
    what to run when the job comes back, and requeues it; that is this same call.
    """

    def __init__(self, nodes: int, gpus_per_node: int, vllm_server: bool, model: str) -> None:
        self.nodes = nodes
        self.gpus_per_node = gpus_per_node
        self.vllm_server = vllm_server
        self.model = model

    def __call__(self, directory: str) -> int:
        import submitit

        job_env = submitit.JobEnvironment()
        cell = Path(directory)
        argv, extra_env = node_command(
            cell,
            nodes=self.nodes,
            gpus_per_node=self.gpus_per_node,
            node_rank=int(job_env.node),
            hostnames=list(job_env.hostnames),
            job_id=str(job_env.job_id),
            vllm_server=self.vllm_server,
            model=self.model,
        )
        env = {**os.environ, **extra_env, "PYTHONUNBUFFERED": "1"}
        with open(cell / layout.LOG_FILE, "ab") as log:
            log.write(
                f"[bicc-lab slurm] job {job_env.job_id} node {job_env.node} on {job_env.hostname}: "
                f"{shlex.join(argv)}\n".encode()
            )
            log.flush()
            # SIGUSR2 (SLURM's warning before the time limit) is submitit's to handle: it
            # requeues the job, and SLURM's SIGTERM then stops the worker, which marks its
            # run KILLED; the requeued job resumes it.
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                preexec_fn=lambda: signal.signal(signal.SIGUSR2, signal.SIG_IGN),
            )
            while True:
                try:
                    return proc.wait()
                except KeyboardInterrupt:  # pragma: no cover - SLURM sends SIGTERM, not SIGINT
                    proc.terminate()

    def checkpoint(self, directory: str) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(self, directory)


# --------------------------------------------------------------------------- state queries


def _run(cmd: list[str], timeout: float = 30) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout if out.returncode == 0 else ""


def _squeue_states() -> dict[str, str]:
    """Every queued/running job of this user, array tasks one per line: ``{job id: state}``."""
    user = os.environ.get("USER") or _run(["id", "-un"]).strip()
    text = _run(["squeue", "-h", "-r", "-u", user, "-o", "%i|%T"])
    states = {}
    for line in text.splitlines():
        if "|" in line:
            job_id, state = line.strip().split("|", 1)
            states[job_id] = state
    return states


def slurm_states(job_ids: list[str]) -> dict[str, str]:
    """Each job's state from ``sacct`` (its last record: a requeued job shows its current
    try), falling back to ``squeue`` where accounting is off. Unknown ids are left out."""
    if not job_ids:
        return {}
    states: dict[str, str] = {}
    text = _run(["sacct", "-n", "-X", "-P", "-D", "-o", "JobID,State", "-j", ",".join(job_ids)])
    for line in text.splitlines():
        if "|" not in line:
            continue
        job_id, state = line.strip().split("|", 1)
        states[job_id] = state.split()[0] if state else state  # "CANCELLED by 0" -> CANCELLED
    if len(states) < len(job_ids):
        queued = _squeue_states()
        for job_id in job_ids:
            if job_id not in states and job_id in queued:
                states[job_id] = queued[job_id]
    return {k: v for k, v in states.items() if k in set(job_ids)}


def read_job_record(directory: Path) -> dict[str, Any] | None:
    record = layout.read_json(directory / JOB_FILE)
    return record if isinstance(record, dict) and record.get("job_id") else None


# --------------------------------------------------------------------------- the launcher


class SlurmLauncher:
    """Submits cells as SLURM jobs through submitit (see the module docstring).

    Args:
        launch: the sweep's ``launch:`` block (``bicc_lab.spec.LaunchConfig``).
        sweep_dir: where array jobs keep submitit's files.
        job_name: the SLURM job name (the sweep's name).
        vllm_server: cells generate with ``train.vllm_mode: server``.
        model: the model a ``trl vllm-serve`` node serves.
    """

    kind = "slurm"
    detachable = True

    def __init__(
        self,
        launch: Any,
        *,
        sweep_dir: Path,
        job_name: str = "bicc-lab",
        vllm_server: bool = False,
        model: str = "",
    ) -> None:
        _check_available()
        self.launch = launch
        self.sweep_dir = Path(sweep_dir)
        self.job_name = job_name
        self.vllm_server = vllm_server
        self.model = model
        self.running: dict[str, Job] = {}
        self._gone_since: dict[str, float] = {}
        self._queue: tuple[float, dict[str, str]] = (0.0, {})

    def _queued(self, max_age_s: float = QUEUE_QUERY_EVERY_S) -> dict[str, str]:
        """``squeue`` of this user's jobs, at most once per ``max_age_s`` (controllers of real
        clusters ask users not to poll them every second)."""
        taken, states = self._queue
        if time.time() - taken >= max_age_s:
            states = _squeue_states()
            self._queue = (time.time(), states)
        return states

    # ---------------------------------------------------------------- submission
    def sbatch_parameters(self) -> dict[str, Any]:
        return sbatch_parameters(self.launch, self.job_name)

    def _executor(self, folder: Path, array_parallelism: int | None = None) -> Any:
        import submitit

        # a long run may need many time slots; each one resumes from the last checkpoint
        executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=100)
        params = self.sbatch_parameters()
        if array_parallelism is not None:
            params["array_parallelism"] = array_parallelism
        executor.update_parameters(**params)
        return executor

    def _cell_job(self) -> CellJob:
        return CellJob(self.launch.nodes, self.launch.gpus_per_node, self.vllm_server, self.model)

    def submit(self, cells: list[tuple[str, Path]]) -> list[Job]:
        if not cells:
            return []
        # (sbatch hands this process's environment to the job: data dir, caches, MLflow URI)
        if self.launch.array_parallelism is not None and len(cells) > 1:
            executor = self._executor(self.sweep_dir / "slurm-array" / "%j", self.launch.array_parallelism)
            with executor.batch():
                handles = [executor.submit(self._cell_job(), str(d)) for _, d in cells]
        else:
            handles = [
                self._executor(directory / "slurm").submit(self._cell_job(), str(directory))
                for _, directory in cells
            ]
        self._queue = (0.0, {})  # the next poll asks squeue again: it knows the new jobs
        jobs = []
        for (key, directory), handle in zip(cells, handles, strict=True):
            job = Job(key=key, directory=directory, job_id=str(handle.job_id), handle=handle)
            layout.write_atomic(
                directory / JOB_FILE,
                json.dumps(
                    {"job_id": job.job_id, "folder": str(handle.paths.folder), "submitted": time.time()}
                ),
            )
            self.running[key] = job
            jobs.append(job)
        return jobs

    def attach(self, key: str, directory: Path) -> Job | None:
        """The cell's recorded job when it is still queued or running (and track it)."""
        record = read_job_record(directory)
        if record is None:
            return None
        job_id = str(record["job_id"])
        if self._queued().get(job_id) not in ACTIVE_STATES:
            return None
        import submitit

        handle = submitit.SlurmJob(folder=record["folder"], job_id=job_id)
        job = Job(key=key, directory=directory, job_id=job_id, handle=handle,
                  started=float(record.get("submitted") or time.time()))
        self.running[key] = job
        return job

    # ---------------------------------------------------------------- progress
    def logs(self, job: Job) -> Path:
        return job.directory / layout.LOG_FILE

    def poll(self) -> list[tuple[Job, int]]:
        """Jobs over since the last call: the worker's exit code from submitit's result file,
        or, for a job that ended without one (scancel, node failure, out of memory), a code
        from its final SLURM state."""
        if not self.running:
            return []
        queued = self._queued()
        done = []
        now = time.time()
        for key, job in list(self.running.items()):
            if queued.get(job.job_id) in ACTIVE_STATES:
                # (a requeued job may hold the result file of its stopped first try)
                self._gone_since.pop(key, None)
                continue
            code = self._result_code(job)
            if code is None:
                first = self._gone_since.setdefault(key, now)
                if now - first < RESULT_GRACE_S:
                    continue
                state = slurm_states([job.job_id]).get(job.job_id, "UNKNOWN")
                if state in ACTIVE_STATES:  # requeued between the two queries
                    self._gone_since.pop(key, None)
                    continue
                code = self._result_code(job)
                if code is None:
                    code = _code_of_state(state)
            self._gone_since.pop(key, None)
            del self.running[key]
            done.append((job, code))
        return done

    @staticmethod
    def _result_code(job: Job) -> int | None:
        handle = job.handle
        if not handle.paths.result_pickle.exists():
            return None
        try:
            outcome, result = handle._get_outcome_and_result()
        except Exception:  # noqa: BLE001 - an unreadable result: the job failed
            return EXIT_FAILED
        if outcome == "success" and isinstance(result, int):
            return result
        return EXIT_FAILED

    # ---------------------------------------------------------------- stopping
    def cancel(self, jobs: list[Job] | None = None, grace_s: float = 10.0) -> list[tuple[Job, int]]:
        """``scancel`` (SLURM sends SIGTERM, then SIGKILL after its KillWait), then wait for
        the jobs to leave the queue (at most ``grace_s`` + 30 s)."""
        jobs = list(self.running.values()) if jobs is None else jobs
        if not jobs:
            return []
        _run(["scancel", *[j.job_id for j in jobs if j.job_id]])
        deadline = time.time() + grace_s + 30
        while time.time() < deadline:
            queued = _squeue_states()
            if not any(j.job_id in queued for j in jobs):
                break
            time.sleep(0.5)
        results = []
        for job in jobs:
            code = self._result_code(job)
            results.append((job, EXIT_KILLED if code is None else code))
            self.running.pop(job.key, None)
        return results

    def release(self) -> None:
        """Forget the running jobs (they stay in SLURM's queue; ``slurm_job.json`` remembers them)."""
        self.running.clear()


def sbatch_parameters(launch: Any, job_name: str) -> dict[str, Any]:
    """submitit's SlurmExecutor parameters for one cell of a ``launch:`` block."""
    params: dict[str, Any] = {
        "job_name": job_name,
        "nodes": launch.nodes,
        "ntasks_per_node": 1,  # one CellJob per node; it starts the node's processes
        "cpus_per_task": launch.cpus_per_task,
        "time": launch.time_min,
        "stderr_to_stdout": True,
        # SIGUSR2 this long before the time limit: submitit requeues, the worker stops cleanly
        "signal_delay_s": min(120, max(30, launch.time_min * 60 // 20)),
    }
    if launch.gpus_per_node:
        params["gpus_per_node"] = launch.gpus_per_node
    if launch.mem_gb is not None:
        params["mem"] = f"{int(launch.mem_gb * 1024)}M"
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(launch, key) is not None:
            params[key] = getattr(launch, key)
    if launch.setup:
        params["setup"] = list(launch.setup)
    if launch.extra:
        params["additional_parameters"] = dict(launch.extra)
    return params


def _code_of_state(state: str) -> int:
    if state in ("CANCELLED", "PREEMPTED", "DEADLINE", "TIMEOUT"):
        return EXIT_KILLED
    if state == "OUT_OF_MEMORY":
        return -signal.SIGKILL
    return EXIT_FAILED


def cell_job_states(directories: list[Path]) -> dict[Path, tuple[str, str]]:
    """``{cell dir: (job id, SLURM state)}`` for the cells that were submitted to SLURM
    (one ``sacct`` call; no call at all when no cell was)."""
    records = {d: read_job_record(d) for d in directories}
    ids = {d: str(r["job_id"]) for d, r in records.items() if r is not None}
    if not ids:
        return {}
    states = slurm_states(sorted(set(ids.values())))
    return {d: (job_id, states.get(job_id, "UNKNOWN")) for d, job_id in ids.items()}
