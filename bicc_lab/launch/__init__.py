"""Where a run executes.

- ``layout``: the files of a cell directory (standard library only);
- ``locks``: the per-cell ``fcntl.flock`` that makes a cell run in one process at a time;
- ``local``: N local worker processes, pinned to GPUs round-robin;
- ``worker``: ``python -m bicc_lab.launch.worker CELL_DIR`` runs one cell
  (train -> evaluate -> log to MLflow).

SLURM (submitit) is not implemented yet.
"""
