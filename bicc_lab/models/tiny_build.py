"""The tiny model build's child process: ``python -m bicc_lab.models.tiny_build CONFIG_JSON OUT_DIR``.

:func:`bicc_lab.models.tiny.build_tiny_model` starts it with the pinned numeric environment
of :func:`bicc_lab.models.tiny.build_environment`, which must be in place before torch
loads; see that module for why.
"""

import sys

from bicc_lab.models.tiny import _child_main

if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
