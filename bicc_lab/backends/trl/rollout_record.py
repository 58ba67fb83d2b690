"""Record, and replay, training generation batches: compare runs across world sizes.

- ``BICC_LAB_ROLLOUT_DUMP=DIR``: at each training generation batch ``b`` (0, 1, ...), every
  rank ``k`` writes ``DIR/batch<b>-rank<k>.pt``: the batch as every rank sees it after the
  gathers (prompts, completions, rewards, RCC's δ, covariance and baseline shift, the
  advantages, BICC's partition and conditioned prompts) and what this rank keeps of it
  (its rows' advantages and conditioned prompts). Meant for runs of a few steps.
- ``BICC_LAB_ROLLOUT_REPLAY=DIR``: training generation batch ``b`` takes its completions
  from ``DIR/batch<b>-rank0.pt`` (a dump of another run) instead of sampling them, while
  that file exists.

Why replay: sampling draws from each process's RNG over that process's rows, so a
2-process run and a 1-process run never sample the same completions, even with the same
seed and global batch. Everything after sampling (rewards, δ, advantages, BICC's
partition and packing) is deterministic, so with the same completions the two runs must
agree up to float rounding, and where they do not, the gathers or the per-rank slicing are
wrong. ``tests/test_multiprocess.py`` runs exactly that comparison.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "DUMP_ENV",
    "REPLAY_ENV",
    "dump_dir",
    "dump_file",
    "replay_completions",
    "replay_dir",
    "rows",
    "write_dump",
]

DUMP_ENV = "BICC_LAB_ROLLOUT_DUMP"
REPLAY_ENV = "BICC_LAB_ROLLOUT_REPLAY"


def dump_dir() -> Path | None:
    value = os.environ.get(DUMP_ENV)
    return Path(value) if value else None


def replay_dir() -> Path | None:
    value = os.environ.get(REPLAY_ENV)
    return Path(value) if value else None


def dump_file(directory: Path, batch: int, process_index: int) -> Path:
    return directory / f"batch{batch}-rank{process_index}.pt"


def rows(ids: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
    """The unpadded token ids of each row of a padded (B, L) batch (left or right padding)."""
    return [row[m.bool()].tolist() for row, m in zip(ids.cpu(), mask.cpu(), strict=True)]


def replay_completions(path: Path, prompt_ids: list[list[int]], process_index: int) -> list[list[int]]:
    """This rank's completions from a recorded batch, checked against this rank's prompts.

    The recorded batch must have the same global prompts in the same order (same data,
    seed and global batch size); this rank's rows are the slice TRL gives it.
    """
    record = torch.load(path, weights_only=True)
    n = len(prompt_ids)
    start = process_index * n
    recorded_prompts = record["prompts"][start : start + n]
    if recorded_prompts != [list(p) for p in prompt_ids]:
        raise RuntimeError(
            f"{REPLAY_ENV}={path}: rows {start}..{start + n - 1} of the recorded batch have other "
            "prompts than this rank's; replay needs the same data, seed and global batch size"
        )
    return [list(c) for c in record["completions"][start : start + n]]


def write_dump(directory: Path, batch: int, process_index: int, record: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = dump_file(directory, batch, process_index)
    tmp = path.with_suffix(".tmp")
    torch.save(record, tmp)
    os.replace(tmp, path)
    return path
