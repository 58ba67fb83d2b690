"""One preflight for every entry point: what a user can get wrong, before any work starts.

``train``, ``sweep run``, ``tune run`` and ``eval`` call :func:`preflight` with everything
they are about to run (one config, every cell of a sweep, each configuration a study can
produce, an evaluation), before a cell starts, a model loads, a store is created or a
file is written. The first problem is one :class:`~bicc_lab.spec.SpecError` line naming
the key, where it is written and the cell::

    data.train: /data/train.jsonl: file not found at sweeps/s.yaml:7:31 (in cell tiny/grpo/base/s1)

What is checked, first: every environment variable bicc-lab reads
(:func:`bicc_lab.envvars.check_environment`) and every place the command will write
(:class:`Write`: a folder under a file, a read-only place, a name over NAME_MAX; nothing is
created). Per run: the model reference (``tiny`` names, hub id syntax, a local path that
exists and holds a model; a hub id must be cached, or with the hub on known to it by one
short probe); the training data (the file exists, its first records parse with the
fields training reads); ``eval.benchmarks`` (known names; their files, when a data dir is
set or the hub is off); the backend's own checks (variant overrides, vLLM settings,
``train.extra`` keys against TRL's GRPOConfig fields, none replacing a field set from the
config). ``sweep plan`` runs the same checks but for what can be fetched. Then, once, the
tracking store (every URI form MLflow accepts: scheme, SQLite location writable, server
reachable, file store allowed, SQL driver installed). An ``eval`` also has its sampling
flags (the bounds of ``eval.*``), its backend (vLLM installed) and device (CUDA) checked.

Layering: this module sits with sweep/tune/eval (the CLI calls it); it imports the
checks of models, tasks, eval data, the backend and tracking, and nothing imports it
from below.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bicc_lab.errors import UserError
from bicc_lab.spec.errors import Loc, SpecError
from bicc_lab.spec.models import ExperimentConfig
from bicc_lab.spec.yamlio import KeyLoc, LocMap

if TYPE_CHECKING:
    from bicc_lab.tracking.naming import StoreURI

__all__ = ["EvalCheck", "RunCheck", "Write", "preflight", "study_checks", "sweep_checks", "sweep_writes"]


@dataclass(frozen=True)
class RunCheck:
    """One training run about to start (a ``train``, a sweep cell, a study's configuration).

    Attributes:
        config: the resolved config.
        locs: where its keys are written (``load_experiment_located``, ``Cell.locs``).
        cell: the name shown as ``(in cell NAME)``; None for a single run.
        evaluate: whether the run will evaluate (``train --no-eval`` skips the eval checks).
    """

    config: ExperimentConfig
    locs: LocMap = field(default_factory=dict)
    cell: str | None = None
    evaluate: bool = True


@dataclass(frozen=True)
class EvalCheck:
    """One ``bicc-lab eval``: a model reference, the benchmarks to score it on, and the
    generation settings and machine it asks for (each named by its flag when wrong)."""

    model: str
    benchmarks: str | Sequence[str]
    data_dir: str | os.PathLike[str] | None = None
    backend: str = "hf"
    device: str | None = None
    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int | None = None


@dataclass(frozen=True)
class Write:
    """A place a command will write: ``kind`` "dir" (made if missing) or "file".

    ``what`` names it in the message (``--runs-dir runs``); ``names``: ``(what, name)`` of
    folders to be made inside a "dir" (a sweep's folder, its cells' folders), each checked
    against the filesystem's NAME_MAX.
    """

    path: str | os.PathLike[str]
    what: str
    kind: str = "dir"
    names: Iterable[tuple[str, str]] = ()


def preflight(
    checks: RunCheck | EvalCheck | Iterable[RunCheck | EvalCheck],
    *,
    tracking_uri: str | StoreURI | None = None,
    create_store: bool = False,
    writes: Iterable[Write] = (),
    available: bool = True,
    tracking_from: str = "tracking.uri",
) -> None:
    """Raise the first problem of any of ``checks`` as one SpecError line; return if none.

    First the environment variables and every place in ``writes`` (exists or can be made,
    takes a probe file, names fit NAME_MAX; nothing is created). ``tracking_uri``: also
    check the MLflow store (``create_store``: the caller will write, so the SQLite file's
    folder must be creatable). The store is checked last, after every run, so that a bad
    cell is reported before anything is created for the store.

    ``tracking_from``: where the URI came from (``tracking.uri``, ``--tracking-uri``,
    ``MLFLOW_TRACKING_URI``), as the message names it.

    ``available=False`` (``sweep plan``): every check of the config itself, but not whether
    this machine can fetch what it names (a hub model or dataset in the HF cache or on the
    hub, a benchmark's file): a plan is made offline, e.g. before the models are downloaded.
    """
    from bicc_lab.envvars import check_environment

    check_environment()
    for write in writes:
        _check_write(write)
    if isinstance(checks, (RunCheck, EvalCheck)):
        items: Iterable[RunCheck | EvalCheck] = [checks]
    elif isinstance(checks, _Walk):
        items = checks  # walked twice, one check at a time (a large sweep's plan)
    else:
        items = list(checks)
    extra = False
    for item in items:
        if isinstance(item, EvalCheck):
            _check_eval(item)
        else:
            _check_run(item, available=available)
            extra = extra or bool(item.config.train.extra)
    # The backend's train.extra check imports TRL (seconds): after every cheap check.
    if extra:
        from bicc_lab.backends.trl.preflight import check_extra

        for run in items:
            if isinstance(run, RunCheck):
                with _located(run, None):
                    check_extra(run.config)
    if tracking_uri is not None:
        from bicc_lab.tracking.check import check_tracking_uri

        check_tracking_uri(tracking_uri, create=create_store, what=tracking_from)


def _check_run(run: RunCheck, *, available: bool = True) -> None:
    from bicc_lab.backends.trl.preflight import check_variant, check_vllm
    from bicc_lab.eval.data import check_benchmark, get_benchmark
    from bicc_lab.models.loading import check_model_available, check_model_reference
    from bicc_lab.tasks.registry import check_task_records

    config = run.config
    with _located(run, ("model", "name")):
        (check_model_available if available else check_model_reference)(config.model.name)
    with _located(run, ("data", "train")):
        kind = check_task_records(
            config.data.train,
            data_dir=config.data.data_dir,
            problem_field=config.data.problem_field,
            answer_field=config.data.answer_field,
        )
        if available:
            _check_hub_dataset(config.data.train, kind, config.data.data_dir)
    if run.evaluate and config.eval.enabled:
        for index, name in enumerate(config.eval.benchmarks):
            with _located(run, ("eval", "benchmarks", index)):
                if available:
                    check_benchmark(name, config.eval.data_dir)
                else:
                    get_benchmark(name)
    with _located(run, None):
        check_variant(config)
        check_vllm(config)
        from bicc_lab.backends.trl.preflight import check_data_size

        check_data_size(config)  # records against one generation batch


def _check_hub_dataset(name: str, kind: str, data_dir: str | None) -> None:
    """Training data read from the hub while the hub is off must be in the HF cache."""
    from bicc_lab.models.loading import hub_dataset_cached, hub_offline
    from bicc_lab.tasks.data_dir import resolve_data_dir
    from bicc_lab.tasks.math import HUB_IDS

    if kind == "hub":
        repo = name
    elif kind == "registry" and name in HUB_IDS and resolve_data_dir(data_dir) is None:
        repo = HUB_IDS[name][0]
    else:
        return
    if hub_offline() and not hub_dataset_cached(repo):
        raise UserError(
            f"hub dataset {repo} is not in the HF cache and the hub is off (HF_HUB_OFFLINE); "
            "set data.data_dir (or BICC_LAB_DATA_DIR) or give a local .jsonl"
        )


def _check_write(write: Write) -> None:
    from bicc_lab.fileio import check_name_lengths, check_writable_dir, check_writable_file

    if write.kind == "file":
        check_writable_file(write.path, write.what)
        return
    check_writable_dir(write.path, write.what)
    for what, name in write.names:
        check_name_lengths(write.path, [name], what)


def sweep_writes(ctx: Any, runs_flag: str | None, name: str | None = None) -> list[Write]:
    """Where ``sweep run`` / ``tune run`` write: the runs directory, the sweep's (study's)
    folder in it and, for a sweep, each cell's folder (names within NAME_MAX)."""
    from bicc_lab.launch import layout

    sweep = ctx.sweep
    name = name or sweep.name
    first = (f"the name of {sweep.path}", layout.safe_name(name))

    def names() -> Iterator[tuple[str, str]]:
        yield first
        if name == sweep.name:
            for cell in sweep.cells:
                folder = layout.cell_dir(ctx.runs_dir, sweep.name, cell.name, cell.cell_id).name
                yield (f"cell {cell.name}: its folder", folder)

    what = f"--runs-dir {runs_flag}" if runs_flag else f"runs directory {ctx.runs_dir}"
    # A lazily built sweep (a large plan) is walked again, not held as a tuple of names.
    folders = _Walk(names) if _lazy(sweep) else tuple(names())
    return [Write(ctx.runs_dir, what, names=folders)]


def _check_eval(item: EvalCheck) -> None:
    from bicc_lab.eval.data import check_benchmarks
    from bicc_lab.models.loading import check_model_available

    _check_generation(item)
    try:
        check_model_available(item.model)
    except (UserError, ValueError) as exc:
        raise SpecError(f"--model: {_one_line(exc)}", key="model.name") from None
    try:
        check_benchmarks(item.benchmarks, item.data_dir)
    except (UserError, ValueError) as exc:
        raise SpecError(f"--tasks: {_one_line(exc)}", key="eval.benchmarks") from None
    _check_machine(item)


def _check_generation(item: EvalCheck) -> None:
    """The sampling flags, with the bounds of ``eval.*`` in the config (one source: EvalConfig)."""
    import math

    from bicc_lab.spec.sections import EvalConfig

    fields = EvalConfig.model_fields
    for flag, name, value in (
        ("--temperature", "temperature", item.temperature),
        ("--top_p", "top_p", item.top_p),
        ("--max_new_tokens", "max_new_tokens", item.max_new_tokens),
    ):
        if value is None:
            continue
        bounds = _bounds(fields[name])
        ok = math.isfinite(value) and all(test(value) for _, test in bounds)
        if not ok:
            expected = " and ".join(text for text, _ in bounds)
            raise SpecError(f"{flag} {value:g}: expected a number {expected}", key=f"eval.{name}")


def _bounds(field_info: Any) -> list[tuple[str, Any]]:
    """``[(">= 0", test)]`` of a pydantic field's ge/gt/le/lt constraints."""
    import annotated_types as at

    out: list[tuple[str, Any]] = []
    for meta in field_info.metadata:
        if isinstance(meta, at.Ge):
            out.append((f">= {meta.ge}", lambda v, b=meta.ge: v >= b))
        elif isinstance(meta, at.Gt):
            out.append((f"> {meta.gt}", lambda v, b=meta.gt: v > b))
        elif isinstance(meta, at.Le):
            out.append((f"<= {meta.le}", lambda v, b=meta.le: v <= b))
        elif isinstance(meta, at.Lt):
            out.append((f"< {meta.lt}", lambda v, b=meta.lt: v < b))
    return out


def _check_machine(item: EvalCheck) -> None:
    """The backend is installed and the device exists (torch is imported only for a GPU device)."""
    import importlib.util

    if item.backend == "vllm" and importlib.util.find_spec("vllm") is None:
        raise SpecError(
            "--model vllm / --backend vllm: vLLM is not installed in this environment; "
            "pip install vllm (a CUDA machine), or evaluate with --backend hf",
            key="eval.backend",
        )
    device = (item.device or "").strip().lower()
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            build = "a CPU-only build of torch" if torch.version.cuda is None else "no CUDA device visible"
            raise SpecError(
                f"--device {item.device}: CUDA is not available ({build}); use --device cpu",
                key="eval.device",
            )
        index = device.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise SpecError(
                f"--device {item.device}: no such CUDA device ({torch.cuda.device_count()} visible)",
                key="eval.device",
            )
    elif device == "mps":
        import torch

        if not torch.backends.mps.is_available():
            raise SpecError(f"--device {item.device}: MPS is not available here; use --device cpu", key="eval.device")


@contextlib.contextmanager
def _located(run: RunCheck, path: tuple[Any, ...] | None) -> Iterator[None]:
    """Re-raise a check's error as one line with the key, its file:line and the cell.

    ``path``: the key being checked; None when the error itself names its key (a
    SpecError with ``key``, as the backend's checks raise).
    """
    try:
        yield
    except (UserError, ValueError) as exc:
        key_path = path
        if isinstance(exc, SpecError) and exc.key:
            message, hint = exc.message, exc.hint
            key_path = tuple(exc.key.split("."))
        else:
            message, hint = _one_line(exc), None
        dotted = _dotted(key_path) if key_path else None
        if dotted and not message.startswith(dotted):
            message = f"{dotted}: {message}"
        raise SpecError(
            message,
            _where(run.locs, key_path),
            key=dotted,
            hint=hint,
            suffix=f"(in cell {run.cell})" if run.cell else None,
        ) from None


def _where(locs: LocMap, path: tuple[Any, ...] | None) -> Loc | None:
    """Where ``path`` is written: its value, or its key for a ``train.extra`` entry (the
    key is what is wrong there); the nearest written parent when it is not written."""
    if not path:
        return None
    for end in range(len(path), 0, -1):
        entry: KeyLoc | None = locs.get(path[:end])
        if entry is not None:
            if path[:2] == ("train", "extra") and end == len(path) and entry.key is not None:
                return entry.key
            return entry.value
    return None


def _dotted(path: tuple[Any, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


# --------------------------------------------------------------------------- what to check


class _Walk:
    """A re-iterable of what ``make()`` yields, built anew on each walk: the checks of a
    lazily built sweep (a large ``sweep plan``) are never all held at once."""

    def __init__(self, make: Callable[[], Iterator[Any]]) -> None:
        self._make = make

    def __iter__(self) -> Iterator[Any]:
        return self._make()


def _lazy(sweep: Any) -> bool:
    from bicc_lab.spec.grid import LazyCells

    return isinstance(sweep.cells, LazyCells)


def sweep_checks(sweep: Any) -> Iterable[RunCheck]:
    """One :class:`RunCheck` per cell of a loaded sweep, located in its files (for a lazily
    built sweep, made one cell at a time on each walk)."""

    def checks() -> Iterator[RunCheck]:
        for cell in sweep.cells:
            yield RunCheck(cell.config, cell.locs, cell.name)

    return _Walk(checks) if _lazy(sweep) else list(checks())


def study_checks(sweep: Any) -> list[RunCheck]:
    """What a study (a sweep with ``search:``) can run: its one base cell, the base with
    each categorical choice (a choice can name a model, a data file, a benchmark), and
    each enqueued parameter set. Numeric parameters change no checked value."""
    from bicc_lab.spec.load import with_overrides

    base = sweep.cells[0]
    checks = [RunCheck(base.config, base.locs, base.name)]
    search = sweep.spec.search
    where = str(sweep.path)
    for key, param in search.params.items():
        if param.type != "categorical":
            continue
        for choice in param.choices or []:
            locs = dict(base.locs)
            locs[tuple(key.split("."))] = KeyLoc(None, Loc(label=f"{where}: search.params.{key}"))
            checks.append(
                RunCheck(with_overrides(base.config, {key: choice}), locs, f"{base.name} with {key}={choice!r}")
            )
    for index, entry in enumerate(search.enqueue):
        locs = dict(base.locs)
        for key in entry:
            locs[tuple(key.split("."))] = KeyLoc(None, Loc(label=f"{where}: search.enqueue[{index}]"))
        shown = ", ".join(f"{k}={v!r}" for k, v in entry.items())
        checks.append(RunCheck(with_overrides(base.config, entry), locs, f"{base.name} with {shown}"))
    return checks
