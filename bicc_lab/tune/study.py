"""Optuna plumbing of a study: storage, sampler, pruner, distributions, counting, liveness.

Liveness. Optuna 5's own heartbeat (``RDBStorage(heartbeat_interval=..., grace_period=...,
heartbeat_stale_trial_callback=...)``; ``failed_trial_callback`` is its deprecated name since
4.9) exists for RDB storages only and is driven by ``Study.optimize``, while a study here runs
through ``ask``/``tell`` and may live in a journal file. So the tune process keeps its own
heartbeat in the user attributes of the trials it owns (``owner``: host, pid and process
start time; ``heartbeat``: unix seconds), on every storage alike. A RUNNING trial is stale
when its owner process is gone (same host: checked at once through ``/proc``), or when its
heartbeat is older than ``$BICC_LAB_STALE_AFTER_S`` (default 60 s; other hosts).
"""

from __future__ import annotations

import math
import os
import socket
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bicc_lab.spec.sweep_sections import PrunerConfig, SamplerConfig, SearchConfig, SearchParam
from bicc_lab.tracking.naming import normalize_uri, sqlite_path

if TYPE_CHECKING:
    import optuna

__all__ = [
    "JOURNAL_PREFIX",
    "counts",
    "distributions",
    "is_stale",
    "make_pruner",
    "make_sampler",
    "open_storage",
    "owner_token",
    "quiet_optuna",
    "resolve_storage",
    "storage_exists",
]

JOURNAL_PREFIX = "journal:"

# user attributes written on trials
A_OWNER = "owner"
A_HEARTBEAT = "heartbeat"
A_INTERRUPTED = "interrupted"
A_DISCARDED = "discarded"
A_FAIL_REASON = "fail_reason"
A_RETRY_OF = "retry_of"
A_DUPLICATE_OF = "duplicate_of"
A_CELL_DIR = "cell_dir"
A_RUN_ID = "mlflow_run_id"
A_CONFIG_HASH = "config_hash"
A_STEPS = "steps"
A_MAX_STEPS = "max_steps"
A_PRUNED_AT = "pruned_at"
A_SECONDS = "seconds"

# study user attributes
S_BASE_HASH = "base_config_hash"
S_ENQUEUED = "enqueued"
S_OBJECTIVE = "objective"


def quiet_optuna() -> None:
    """Optuna logs every trial at INFO and warns about experimental APIs; we print our own lines."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message=".*Heartbeat of storage.*")


# --------------------------------------------------------------------------- storage


def resolve_storage(search: SearchConfig, study_dir: Path) -> str:
    """The storage URL of a study: ``search.storage`` (relative paths against the cwd), else
    ``sqlite:///<study_dir>/optuna.db``; a journal file is ``journal:/abs/path``."""
    configured = search.storage
    if configured is None:
        return f"sqlite:///{(study_dir / 'optuna.db').resolve()}"
    if configured.startswith(JOURNAL_PREFIX):
        path = configured[len(JOURNAL_PREFIX) :].strip()
        return JOURNAL_PREFIX + str(Path(path).expanduser().resolve())
    return normalize_uri(configured)


def storage_exists(url: str) -> bool:
    """False for a SQLite or journal file that does not exist yet (nothing to read); a
    directory, a corrupt or a foreign file there is a one-line StoreError."""
    from bicc_lab.tracking.check import check_optuna_storage

    check_optuna_storage(url, create=False)
    if url.startswith(JOURNAL_PREFIX):
        return Path(url[len(JOURNAL_PREFIX) :]).is_file()
    db = sqlite_path(url)
    return db is None or db.is_file()


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An Optuna storage for ``url`` (creates a SQLite / journal file and its folder)."""
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend

    if url.startswith(JOURNAL_PREFIX):
        path = Path(url[len(JOURNAL_PREFIX) :])
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    engine_kwargs: dict[str, Any] = {}
    db = sqlite_path(url)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
        # the tune process and every trial's worker write to the same file
        engine_kwargs = {"connect_args": {"timeout": 120}}
    from sqlalchemy.exc import IntegrityError, OperationalError

    for attempt in range(6):
        try:
            return RDBStorage(url, engine_kwargs=engine_kwargs)
        except (IntegrityError, OperationalError):
            # two processes creating the tables / stamping the schema version at once: the
            # other one won, and the next attempt finds the storage initialised
            if attempt == 5:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- sampler, pruner


def make_sampler(config: SamplerConfig, n_existing: int = 0) -> optuna.samplers.BaseSampler:
    """The configured sampler. On a resumed study (``n_existing`` trials) the seed is moved
    on, so that the sampler's random start does not propose the first trials again."""
    import optuna

    seed = config.seed
    if seed is not None and n_existing:
        seed = (seed * 1_000_003 + n_existing) % (2**32)
    if config.type == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    kwargs: dict[str, Any] = {"seed": seed}
    if config.n_startup_trials is not None:
        kwargs["n_startup_trials"] = config.n_startup_trials
    if config.multivariate is not None:
        kwargs["multivariate"] = config.multivariate
    return optuna.samplers.TPESampler(**kwargs)


def make_pruner(config: PrunerConfig | None, max_steps: int) -> optuna.pruners.BasePruner:
    """The configured pruner (``NopPruner`` for none); hyperband's max_resource defaults to
    the base config's ``train.max_steps``."""
    import optuna

    if config is None or config.type == "none":
        return optuna.pruners.NopPruner()
    if config.type == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=config.n_startup_trials,
            n_warmup_steps=config.n_warmup_steps,
            interval_steps=config.interval_steps,
        )
    max_resource: int | str = (
        config.max_resource if config.max_resource is not None else max(max_steps, config.min_resource)
    )
    return optuna.pruners.HyperbandPruner(
        min_resource=config.min_resource,
        max_resource=max_resource,
        reduction_factor=config.reduction_factor,
    )


def distribution(param: SearchParam) -> optuna.distributions.BaseDistribution:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if param.type == "categorical":
        return CategoricalDistribution(list(param.choices or []))
    assert param.low is not None and param.high is not None
    if param.type == "int":
        return IntDistribution(
            int(param.low), int(param.high), log=param.log, step=int(param.step or 1)
        )
    return FloatDistribution(param.low, param.high, log=param.is_log, step=param.step)


def distributions(search: SearchConfig) -> dict[str, optuna.distributions.BaseDistribution]:
    """Dotted key -> Optuna distribution (the names of the trial parameters are the keys)."""
    return {key: distribution(param) for key, param in search.params.items()}


# --------------------------------------------------------------------------- counting


def counts(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether a finished trial uses up one of ``n_trials``: COMPLETE, PRUNED, and FAIL
    unless it was interrupted (its tune process died or was stopped) or discarded."""
    from optuna.trial import TrialState

    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    if trial.state == TrialState.FAIL:
        attrs = trial.user_attrs
        return not attrs.get(A_INTERRUPTED) and not attrs.get(A_DISCARDED)
    return False


def finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# --------------------------------------------------------------------------- liveness


def _proc_start(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), else None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after the last ')'
    fields = text.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def owner_token() -> dict[str, Any]:
    """Who runs a trial: this host, pid and the process's start time."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "start": _proc_start(pid) or ""}


def _alive(owner: dict[str, Any]) -> bool:
    pid = int(owner.get("pid") or 0)
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, another user
    start = owner.get("start")
    current = _proc_start(pid)
    return not (start and current is not None and current != start)  # pid reused


ORPHAN_GRACE_S = 30.0  # a trial asked but never claimed for this long has lost its asker


def is_stale(trial: optuna.trial.FrozenTrial, stale_after: float, now: float | None = None) -> str | None:
    """Why a RUNNING trial is orphaned (its tune process is gone), or None while it lives."""
    now = now or time.time()
    attrs = trial.user_attrs
    owner = attrs.get(A_OWNER)
    if owner is None and A_HEARTBEAT not in attrs:
        # the asking process records itself right after study.ask(): without a record after
        # ORPHAN_GRACE_S, it died in between (a kill between the two writes)
        start = trial.datetime_start
        age = now - start.timestamp() if start is not None else float("inf")
        if age > min(stale_after, ORPHAN_GRACE_S):
            return "its tune process died before recording itself"
        return None
    if isinstance(owner, dict) and owner.get("host") == socket.gethostname():
        if _alive(owner):
            return None
        return f"its tune process (pid {owner.get('pid')}) is gone"
    beat = attrs.get(A_HEARTBEAT)
    if not finite(beat):
        start = trial.datetime_start
        beat = start.timestamp() if start is not None else None
    if beat is None or now - float(beat) > stale_after:
        host = owner.get("host") if isinstance(owner, dict) else "?"
        age = f"{now - float(beat):.0f} s" if beat is not None else "ever"
        return f"no heartbeat from its tune process (host {host}) for {age}"
    return None


def running(trials: Iterable[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    from optuna.trial import TrialState

    return [t for t in trials if t.state == TrialState.RUNNING]
