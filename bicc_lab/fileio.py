"""Atomic file writes: a reader sees the old file or the new one, never half of one.

A crashed or killed process must never leave a truncated result behind (a half-written
``train_result.json`` would mark a run finished), so every result file goes through here.

Where a command will write is checked before any work (:func:`check_writable_dir`,
:func:`check_writable_file`): a folder under a file, a read-only mount or a name longer
than the filesystem allows is one :class:`~bicc_lab.errors.UserError` line, not a
traceback after the work is done.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from bicc_lab.errors import UserError


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


# --------------------------------------------------------------------------- where a command writes


def _stat_mode(path: Path) -> int | None:
    """``st_mode`` of ``path``, or None when it cannot be seen (missing, or a name too long:
    ``Path.exists`` raises for that one on Python 3.11)."""
    try:
        return path.stat().st_mode
    except (OSError, ValueError):
        return None


def _nearest_existing(path: Path) -> Path:
    existing = path
    while _stat_mode(existing) is None and existing.parent != existing:
        existing = existing.parent
    return existing


def check_name_lengths(directory: str | os.PathLike[str], names: list[str], what: str) -> None:
    """Each of ``names`` (file or folder names to be made in ``directory``) fits the
    filesystem's NAME_MAX (``os.pathconf``), else one :class:`UserError` line."""
    existing = _nearest_existing(Path(directory).expanduser().absolute())
    try:
        limit = os.pathconf(existing, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    for name in names:
        size = len(os.fsencode(name))
        if size > limit:
            shown = name if len(name) <= 60 else name[:40] + "..." + name[-12:]
            raise UserError(
                f"{what}: the name {shown!r} is {size} bytes, longer than the {limit} bytes "
                f"a file name may have on the filesystem of {existing}; choose a shorter name"
            )


def check_writable_dir(directory: str | os.PathLike[str], what: str) -> None:
    """``directory`` exists or can be made, and a file can be written in it; creates nothing.

    The nearest existing folder must be a directory and take a probe file (a temp file,
    removed at once): ``os.access`` alone says yes to root on a read-only mount. Raises one
    :class:`UserError` line that starts with ``what`` (e.g. ``--runs-dir runs``).
    """
    target = Path(directory).expanduser()
    absolute = target.absolute()
    existing = _nearest_existing(absolute)
    if not stat.S_ISDIR(_stat_mode(existing) or 0):
        raise UserError(f"{what}: {existing} is a file, not a directory")
    missing = list(absolute.relative_to(existing).parts)
    check_name_lengths(existing, missing, what)
    problem = None
    if not os.access(existing, os.W_OK | os.X_OK):
        problem = "no write permission"
    else:
        try:
            fd, probe = tempfile.mkstemp(prefix=".bicc-lab-write-test-", dir=existing)
        except OSError as exc:
            problem = exc.strerror or str(exc)
        else:
            os.close(fd)
            os.unlink(probe)
    if problem is not None:
        verb = "write in" if not missing else "create a directory in"
        raise UserError(f"{what}: cannot {verb} {existing} ({problem})")


def check_writable_file(path: str | os.PathLike[str], what: str) -> None:
    """``path`` can be written as a file: it is not a directory, and its folder is (or can
    be made) writable. Creates nothing."""
    target = Path(path).expanduser()
    if stat.S_ISDIR(_stat_mode(target) or 0):
        raise UserError(f"{what}: is a directory; expected a file name")
    check_name_lengths(target.parent, [target.name], what)
    check_writable_dir(target.parent, what)
