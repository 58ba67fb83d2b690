"""The sections of a sweep config besides its grid: the Optuna study (``search``) and
where cells run (``launch``).

:class:`~bicc_lab.spec.models.SweepConfig` puts them together; cross-field rules of a
search are checked in :class:`SearchConfig`, where each parameter's key is known.

Imports: pydantic and the standard library only (the CLI imports this at start-up).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, model_validator

from bicc_lab.spec.fields import FieldProblem, Float, PathName, _Section

__all__ = [
    "LaunchConfig",
    "PrunerConfig",
    "SamplerConfig",
    "SearchConfig",
    "SearchParam",
]


def _shorthand(kind: str) -> Any:
    """``"tpe"`` -> ``{"type": "tpe"}`` (samplers and pruners may be written as a bare name)."""

    def convert(value: Any) -> Any:
        if isinstance(value, str):
            return {"type": value}
        return value

    convert.__name__ = f"{kind}_shorthand"
    return convert


def _param_shorthand(value: Any) -> Any:
    """A bare list is a categorical parameter: ``[sum, mean]`` -> ``{type: categorical, choices: [...]}``."""
    if isinstance(value, list):
        return {"type": "categorical", "choices": value}
    return value


Choice = str | int | float | bool | None


class SearchParam(_Section):
    """One searched config key: a distribution Optuna samples it from.

    ``{type: float, low: 0.1, high: 10, log: true}`` (or ``type: log-float``),
    ``{type: int, low: 1, high: 8, step: 1}``, ``{type: categorical, choices: [sum, mean]}``;
    a bare list is a categorical. Cross-field rules are checked in :class:`SearchConfig`,
    where the key is known.
    """

    type: Literal["float", "log-float", "int", "categorical"] = Field(
        ..., description="Distribution: float, log-float, int or categorical."
    )
    low: Float | None = Field(None, description="Lower bound (float, log-float, int).")
    high: Float | None = Field(None, description="Upper bound, inclusive (float, log-float, int).")
    step: Float | None = Field(
        None, gt=0, description="Discretisation step (float, int); null: continuous / 1."
    )
    log: bool = Field(False, description="Sample on a log scale (float, int); log-float implies it.")
    choices: list[Choice] | None = Field(
        None, description="Values of a categorical parameter (strings, numbers, booleans, null)."
    )

    @property
    def is_log(self) -> bool:
        return self.log or self.type == "log-float"


class SamplerConfig(_Section):
    """The Optuna sampler of a study (``tpe`` by default, seeded)."""

    type: Literal["tpe", "random"] = Field("tpe", description="tpe (default) or random.")
    seed: int | None = Field(
        0,
        description="Seed of the sampler; on resume it is combined with the number of trials so far, "
        "so that a resumed study does not repeat its first proposals. null: unseeded.",
    )
    n_startup_trials: int | None = Field(
        None, ge=0, description="tpe: random trials before TPE starts; null: Optuna's default (10)."
    )
    multivariate: bool | None = Field(
        None, description="tpe: multivariate TPE; null: Optuna's default."
    )

    @model_validator(mode="after")
    def _tpe_only(self) -> SamplerConfig:
        if self.type != "tpe":
            for key in ("n_startup_trials", "multivariate"):
                if key in self.model_fields_set:
                    raise FieldProblem((key,), f"search.sampler.{key} applies to type tpe only")
        return self


PRUNER_KEYS: dict[str, tuple[str, ...]] = {
    "median": ("n_startup_trials", "n_warmup_steps", "interval_steps"),
    "hyperband": ("min_resource", "max_resource", "reduction_factor"),
    "none": (),
}


class PrunerConfig(_Section):
    """Early stopping of unpromising trials, fed with a training metric at each logging step."""

    type: Literal["median", "hyperband", "none"] = Field(
        "none", description="median, hyperband, or none."
    )
    metric: str = Field(
        "reward",
        min_length=1,
        description="Training metric (as TRL logs it) reported to the pruner at each logging step.",
    )
    n_startup_trials: int = Field(
        5, ge=0, description="median: no pruning until this many trials finished."
    )
    n_warmup_steps: int = Field(
        0, ge=0, description="median: no pruning of a trial before this step."
    )
    interval_steps: int = Field(1, ge=1, description="median: steps between pruning checks.")
    min_resource: int = Field(1, ge=1, description="hyperband: minimum steps of a trial.")
    max_resource: int | Literal["auto"] | None = Field(
        None, description="hyperband: maximum steps; null: train.max_steps of the base config."
    )
    reduction_factor: int = Field(3, ge=2, description="hyperband: reduction factor of the brackets.")

    @model_validator(mode="after")
    def _keys_of_type(self) -> PrunerConfig:
        allowed = set(PRUNER_KEYS[self.type]) | {"type", "metric"}
        for key in self.model_fields_set - allowed:
            owner = next((t for t, keys in PRUNER_KEYS.items() if key in keys), None)
            raise FieldProblem(
                (key,), f"search.pruner.{key} applies to type {owner}, not {self.type}"
            )
        if isinstance(self.max_resource, int) and self.max_resource < self.min_resource:
            raise FieldProblem(
                ("max_resource",),
                f"search.pruner.max_resource ({self.max_resource}) must be >= min_resource ({self.min_resource})",
            )
        return self


def _number(value: float) -> str:
    return f"{value:g}"


class SearchConfig(_Section):
    """An Optuna study over config keys (``bicc-lab tune``): what to sample, what to optimise.

    Each trial trains the sweep's base config (base + ``set`` + ``--set``) with the sampled
    values applied to the dotted keys of ``params``.
    """

    params: dict[str, Annotated[SearchParam, BeforeValidator(_param_shorthand)]] = Field(
        ...,
        description="Dotted config key -> distribution, e.g. rcc.coef: {type: log-float, low: 0.1, high: 10}.",
    )
    objective: str = Field(
        ...,
        min_length=1,
        description="Metric to optimise: eval/<benchmark>/<metric> (e.g. eval/arith/avg@4) or a training metric (its last logged value).",
    )
    direction: Literal["maximize", "minimize"] = Field(
        "maximize", description="Optimisation direction."
    )
    n_trials: int = Field(
        20,
        ge=1,
        description="Trials to finish (COMPLETE + PRUNED + FAIL; trials interrupted by a kill are retried, not counted).",
    )
    n_jobs: int = Field(1, ge=1, description="Trials running at once (default of --n-jobs).")
    sampler: Annotated[SamplerConfig, BeforeValidator(_shorthand("sampler"))] = Field(
        default_factory=SamplerConfig, description="Sampler: tpe (seeded) or random."
    )
    pruner: Annotated[PrunerConfig, BeforeValidator(_shorthand("pruner"))] | None = Field(
        None, description="Pruner: median, hyperband or none (null), fed with pruner.metric."
    )
    storage: str | None = Field(
        None,
        min_length=1,
        description="Optuna storage: an RDB URL, or journal:<path> (a journal file on a shared filesystem); null: runs/<study>/optuna.db.",
    )
    study_name: PathName | None = Field(
        None, min_length=1, description="Optuna study name; null: the sweep's name."
    )
    enqueue: list[dict[str, Choice]] = Field(
        default_factory=list,
        description="Parameter sets to try first (e.g. the paper's defaults), once per study.",
    )

    @model_validator(mode="after")
    def _distributions(self) -> SearchConfig:
        if not self.params:
            raise FieldProblem(("params",), "search.params is empty; expected at least one parameter")
        for key, p in self.params.items():
            at = ("params", key)
            where = f"search.params.{key}"
            if p.type == "categorical":
                for field in ("low", "high", "step"):
                    if getattr(p, field) is not None:
                        raise FieldProblem(at + (field,), f"{where}: a categorical has choices, not {field}")
                if "log" in p.model_fields_set:
                    raise FieldProblem(at + ("log",), f"{where}: a categorical has no log scale")
                if not p.choices:
                    raise FieldProblem(
                        at + ("choices",), f"{where}: a categorical needs a non-empty list of choices"
                    )
                seen: list[Any] = []
                for index, value in enumerate(p.choices):
                    if any(type(value) is type(other) and value == other for other in seen):
                        raise FieldProblem(
                            at + ("choices", index),
                            f"{where}: choice {value!r} is repeated",
                            also=(at + (index,),),  # the bare-list form
                        )
                    seen.append(value)
                continue
            if p.choices is not None:
                raise FieldProblem(at + ("choices",), f"{where}: choices belong to type categorical, not {p.type}")
            for field in ("low", "high"):
                if getattr(p, field) is None:
                    raise FieldProblem(at, f"{where}: type {p.type} needs '{field}'")
            assert p.low is not None and p.high is not None
            if p.low > p.high:
                raise FieldProblem(
                    at + ("low",), f"{where}: low ({_number(p.low)}) is above high ({_number(p.high)})"
                )
            if p.is_log and p.low <= 0:
                raise FieldProblem(
                    at + ("low",), f"{where}: a log scale needs low > 0, got {_number(p.low)}"
                )
            if p.is_log and p.step is not None:
                raise FieldProblem(at + ("step",), f"{where}: step and a log scale exclude each other")
            if p.type == "log-float" and "log" in p.model_fields_set and not p.log:
                raise FieldProblem(at + ("log",), f"{where}: type log-float with log: false")
            if p.type == "int":
                for field in ("low", "high", "step"):
                    value = getattr(p, field)
                    if value is not None and not float(value).is_integer():
                        raise FieldProblem(
                            at + (field,), f"{where}: type int needs an integer {field}, got {_number(value)}"
                        )
        for index, entry in enumerate(self.enqueue):
            for key in entry:
                if key not in self.params:
                    raise FieldProblem(
                        ("enqueue", index, key),
                        f"search.enqueue[{index}]: '{key}' is not a search parameter",
                        hint="parameters: " + ", ".join(self.params),
                    )
        return self


class LaunchConfig(_Section):
    """Where the cells of a sweep (or the trials of a study) run: local processes or SLURM jobs."""

    kind: Literal["local", "slurm"] = Field(
        "local", description="local: processes on this machine; slurm: one job per cell (submitit)."
    )
    partition: str | None = Field(None, description="SLURM partition; null: the cluster's default.")
    nodes: int = Field(
        1, ge=1,
        description="Nodes per cell; > 1: accelerate launch across them (with train.vllm_mode: server, the last node serves vLLM).",
    )
    gpus_per_node: int = Field(0, ge=0, description="GPUs per node of a cell (0: CPU only).")
    cpus_per_task: int = Field(1, ge=1, description="CPU cores per node of a cell.")
    mem_gb: Float | None = Field(None, gt=0, description="Memory per node in GB; null: the cluster's default.")
    time_min: int = Field(
        60, ge=1,
        description=(
            "Time limit of one job in minutes; a timed-out cell is requeued and resumes. SLURM may "
            "send its warning up to a minute early: give a job several minutes at least."
        ),
    )
    account: str | None = Field(None, description="SLURM account (--account).")
    qos: str | None = Field(None, description="SLURM quality of service (--qos).")
    constraint: str | None = Field(None, description="SLURM node features (--constraint).")
    array_parallelism: int | None = Field(
        None, ge=1,
        description="Submit the sweep's cells as one job array with at most this many tasks at once; null: one job per cell.",
    )
    setup: list[str] = Field(
        default_factory=list, description="Shell lines run in the job before the cell (module load, conda activate)."
    )
    extra: dict[str, Any] = Field(
        default_factory=dict, description="Any other sbatch option, without the leading -- (e.g. {exclusive: true})."
    )

    @model_validator(mode="after")
    def _slurm_only(self) -> LaunchConfig:
        if self.kind == "local":
            for key in ("partition", "account", "qos", "constraint", "array_parallelism"):
                if getattr(self, key) is not None:
                    raise FieldProblem((key,), f"launch.{key} applies to kind slurm, not local")
            if self.nodes > 1:
                raise FieldProblem(("nodes",), "launch.nodes > 1 needs kind: slurm")
        return self
