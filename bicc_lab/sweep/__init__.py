"""Plan / run / status of a sweep (a grid of cells over one base experiment).

- ``context``: tracking URI, experiment name and runs directory of a sweep;
- ``state``: the state of each cell, from MLflow and the runs directory;
- ``runner``: ``run_sweep`` launches the unfinished cells as local worker processes;
- ``display``: the live table (terminal) or one line per state change (CI);
- ``views``: the ``plan`` and ``status`` tables.

Import the submodules; this package imports nothing itself (the CLI must stay light).
"""
