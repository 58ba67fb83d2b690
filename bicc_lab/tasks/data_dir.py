"""Where local benchmark / training data files live.

One function, shared by the training tasks and the eval worker: an explicit
argument wins, then the ``BICC_LAB_DATA_DIR`` environment variable, else None
(meaning: use hub ids).
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV = "BICC_LAB_DATA_DIR"


def resolve_data_dir(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """Return the data directory: ``explicit``, else ``$BICC_LAB_DATA_DIR``, else None.

    The path is expanded (``~``) but not checked for existence here: callers
    report a missing file with the file name they wanted.
    """
    if explicit is not None and str(explicit).strip():
        return Path(explicit).expanduser()
    env = os.environ.get(DATA_DIR_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    return None
