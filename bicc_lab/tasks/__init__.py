"""Training tasks and rewards: synthetic arithmetic, MATH / GSM8K / DAPO-style math.

Nothing heavy is imported here; ``datasets`` and ``math_verify`` load inside functions.
"""

from bicc_lab.tasks.data_dir import DATA_DIR_ENV, resolve_data_dir
from bicc_lab.tasks.math import DataError
from bicc_lab.tasks.registry import build_dataset, load_task, reward_kind, task_kind

__all__ = [
    "DATA_DIR_ENV",
    "DataError",
    "build_dataset",
    "load_task",
    "resolve_data_dir",
    "reward_kind",
    "task_kind",
]
