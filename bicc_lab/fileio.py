"""Atomic file writes: a reader sees the old file or the new one, never half of one.

A crashed or killed process must never leave a truncated result behind (a half-written
``train_result.json`` would mark a run finished), so every result file goes through here.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def missing_reason(path: str | os.PathLike[str]) -> str:
    """Why ``path`` (for which ``exists()`` is False) cannot be opened: ``is a symlink loop``,
    ``is a broken symlink (to X)``, or plainly ``not found``."""
    import errno

    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a symlink loop"
        if os.path.islink(path):
            return f"is a broken symlink (to {os.readlink(path)})"
    return "not found"


def write_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` through a temp file in the same folder and ``os.replace``."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return p
