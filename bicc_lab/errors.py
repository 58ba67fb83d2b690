"""The one base of every user mistake, at the bottom of the package (imports nothing).

A :class:`UserError`'s ``str()`` is one line naming what is wrong and where (file:line,
``--set key``, the cell); the CLI prints it as ``error: ...`` and exits with
:data:`USER_ERROR_EXIT`, never with a traceback. Every layer may import this module.
"""

from __future__ import annotations

__all__ = ["USER_ERROR_EXIT", "UserError"]

USER_ERROR_EXIT = 2


class UserError(Exception):
    """A mistake in the user's input (config, flag, file, store location): one line, exit 2."""
