"""Optuna studies over config keys: ``bicc-lab tune run|status|best``.

A sweep file with a ``search:`` block (:class:`bicc_lab.spec.SearchConfig`) is a study:
each trial is the sweep's base config with the sampled values applied to the dotted keys
of ``search.params``, trained and evaluated as ONE cell by the sweep's worker process
(``python -m bicc_lab.launch.worker``), ``--n-jobs`` at once.

- ``study``: storage (SQLite ``runs/<study>/optuna.db`` by default, any RDB URL, or
  ``journal:<path>``), sampler, pruner, distributions, which trials count, stale trials;
- ``hook``: the worker-side hook: reports the pruner's metric each logging step to the
  trial (opened by id from the worker process) and stops training when it is pruned or
  the metric is not finite;
- ``setup``: a study file loaded (``prepare`` -> ``TuneSetup``) and its Optuna study opened;
- ``runner``: the study loop (ask -> launch -> tell), resumable;
- ``views``: the trials table, best parameters, importances and plots (never imports ``runner``:
  what both need lives in ``setup``).

Counting: a study is done when COMPLETE + PRUNED + FAIL trials reach ``n_trials``. A trial
whose tune process died (SIGKILL, power loss) or was stopped (Ctrl-C) is FAIL with user
attribute ``interrupted``, does not count, and its parameters are enqueued again.
"""
