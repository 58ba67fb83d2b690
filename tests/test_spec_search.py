"""The `search:` block of a sweep file: typed distributions, sampler, pruner, one-line errors
located at file:line:col, checks against the base config, and `--set-file` overrides files."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from bicc_lab.spec import SpecError, load_sweep
from bicc_lab.spec.errors import display_path
from bicc_lab.spec.search import in_distribution, read_set_file, set_items


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return write(
        tmp_path / "base.yaml",
        """
        name: t
        train: {max_steps: 8, max_completion_length: 6}
        eval: {enabled: false}
        """,
    )


def study(tmp_path: Path, body: str, name: str = "s.yaml") -> Path:
    """A sweep file whose `search:` block is ``body`` (indented under it)."""
    lines = textwrap.dedent(body).strip("\n").splitlines()
    text = "base: base.yaml\nsearch:\n" + "".join(f"  {line}\n" for line in lines)
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(path: Path) -> str:
    with pytest.raises(SpecError) as info:
        load_sweep(path)
    text = str(info.value)
    assert "\n" not in text, text
    return text


def test_a_full_search_block_is_typed(tmp_path, base):
    path = study(
        tmp_path,
        """
        params:
          rcc.coef: {type: log-float, low: 0.1, high: 10}
          rcc.max_shift: {type: float, low: 0.05, high: 1.0, step: 0.05}
          train.num_iterations: {type: int, low: 1, high: 3}
          rcc.delta: [sum, mean]
          bicc.max_traces: [1, 2, null]
        objective: eval/arith/avg@4
        direction: minimize
        n_trials: 7
        n_jobs: 2
        sampler: {type: tpe, seed: 3, n_startup_trials: 2}
        pruner: {type: hyperband, metric: loss, min_resource: 2}
        storage: journal:studies/x.log
        enqueue:
          - {rcc.coef: 1.0, rcc.delta: sum}
        """,
    )
    path.write_text(path.read_text().replace("base: base.yaml\n", "base: base.yaml\nset: {eval.enabled: true}\n"))
    s = load_sweep(path).spec.search
    coef, shift, iters, delta, traces = s.params.values()
    assert (coef.type, coef.low, coef.high, coef.is_log) == ("log-float", 0.1, 10.0, True)
    assert (shift.step, shift.is_log) == (0.05, False)
    assert (iters.type, iters.low, iters.high) == ("int", 1, 3)
    assert (delta.type, delta.choices) == ("categorical", ["sum", "mean"])
    assert traces.choices == [1, 2, None]
    assert (s.objective, s.direction, s.n_trials, s.n_jobs) == ("eval/arith/avg@4", "minimize", 7, 2)
    assert (s.sampler.type, s.sampler.seed, s.sampler.n_startup_trials) == ("tpe", 3, 2)
    assert (s.pruner.type, s.pruner.metric, s.pruner.min_resource, s.pruner.max_resource) == (
        "hyperband", "loss", 2, None,
    )
    assert s.storage == "journal:studies/x.log" and s.enqueue == [{"rcc.coef": 1.0, "rcc.delta": "sum"}]


def test_defaults_and_bare_names(tmp_path, base):
    path = study(
        tmp_path,
        """
        params: {rcc.coef: {type: float, low: 0, high: 2}}
        objective: reward
        pruner: median
        """,
    )
    s = load_sweep(path).spec.search
    assert (s.direction, s.n_trials, s.n_jobs, s.storage, s.study_name) == ("maximize", 20, 1, None, None)
    assert (s.sampler.type, s.sampler.seed) == ("tpe", 0)  # TPE, seeded by default
    p = s.pruner
    assert (p.type, p.metric, p.n_startup_trials, p.n_warmup_steps, p.interval_steps) == (
        "median", "reward", 5, 0, 1,
    )
    path = study(tmp_path, "params: {rcc.delta: [sum, mean]}\nobjective: reward\nsampler: random\n", "r.yaml")
    assert load_sweep(path).spec.search.sampler.type == "random"
    assert load_sweep(path).spec.search.pruner is None


# (search block, message, the token the location must point at, what follows the location)
MISTAKES = [
    (
        "params: {rcc.coef: {type: log-float, low: 0, high: 10}}\nobjective: reward",
        "search.params.rcc.coef: a log scale needs low > 0, got 0", "0, high", "",
    ),
    (
        "params: {rcc.coef: {type: float, low: 5, high: 1}}\nobjective: reward",
        "search.params.rcc.coef: low (5) is above high (1)", "5, high", "",
    ),
    (
        "params: {rcc.coef: {type: logfloat, low: 1, high: 2}}\nobjective: reward",
        "invalid value 'logfloat' for 'search.params.rcc.coef.type'", "logfloat",
        "; did you mean 'log-float'? expected one of: float, log-float, int, categorical",
    ),
    (
        "params: {rcc.coef: {type: float, low: 1}}\nobjective: reward",
        "search.params.rcc.coef: type float needs 'high'", "{type", "",
    ),
    (
        "params: {rcc.coef: {type: int, low: 1.5, high: 4}}\nobjective: reward",
        "search.params.rcc.coef: type int needs an integer low, got 1.5", "1.5", "",
    ),
    (
        "params: {rcc.coef: {type: float, low: 1, high: 4, lwo: 3}}\nobjective: reward",
        "unknown key 'search.params.rcc.coef.lwo'", "lwo", "",
    ),
    (
        "params: {rcc.delta: [sum, sum]}\nobjective: reward",
        "search.params.rcc.delta: choice 'sum' is repeated", "sum]", "",
    ),
    (
        "params: {rcc.delta: {type: categorical, choices: [sum], low: 1}}\nobjective: reward",
        "search.params.rcc.delta: a categorical has choices, not low", "1}}", "",
    ),
    ("params: {}\nobjective: reward", "search.params is empty; expected at least one parameter", "{}", ""),
    ("params: {rcc.delta: [sum]}", "missing required key 'search.objective'", "search:", ""),
    (
        "params: {rcc.cof: [1, 2]}\nobjective: reward",
        "unknown search parameter 'rcc.cof'", "rcc.cof", "; did you mean 'rcc.coef'?",
    ),
    # against the base config
    (
        "params: {train.max_steps: {type: float, low: 1, high: 4}}\nobjective: reward",
        "search.params.train.max_steps: low 1.0 is not a valid value of 'train.max_steps'", "1, high",
        "; expected an integer, got 1.0 (use type: int)",
    ),
    (
        "params: {rcc.delta: [sum, median]}\nobjective: reward",
        "search.params.rcc.delta: choice 'median' is not a valid value of 'rcc.delta'", "median",
        "; did you mean 'mean'? expected one of: sum, mean",
    ),
    (
        "params: {rcc.delta: [sum, mean]}\nobjective: eval/arith/avg@4",
        "search.objective 'eval/arith/avg@4' is an evaluation metric but eval.enabled is false",
        "eval/arith", "; enable evaluation, or optimise a training metric such as reward",
    ),
    # sampler / pruner / enqueue
    (
        "params: {rcc.delta: [sum, mean]}\nobjective: reward\npruner: {type: median, reduction_factor: 2}",
        "search.pruner.reduction_factor applies to type hyperband, not median", "2}", "",
    ),
    (
        "params: {rcc.delta: [sum, mean]}\nobjective: reward\npruner: medain",
        "invalid value 'medain' for 'search.pruner'", "medain",
        "; did you mean 'median'? expected one of: median, hyperband, none",
    ),
    (
        "params: {rcc.delta: [sum, mean]}\nobjective: reward\nsampler: {type: random, n_startup_trials: 3}",
        "search.sampler.n_startup_trials applies to type tpe only", "3}", "",
    ),
    (
        "params: {rcc.delta: [sum, mean]}\nobjective: reward\nenqueue: [{rcc.delta: max}]",
        "search.enqueue[0]: 'max' is outside the distribution of 'rcc.delta'", "max",
        "; choices: 'sum', 'mean'",
    ),
    (
        "params: {rcc.delta: [sum, mean]}\nobjective: reward\nenqueue: [{rcc.coef: 1}]",
        "search.enqueue[0]: 'rcc.coef' is not a search parameter", "1}]", "; parameters: rcc.delta",
    ),
]


@pytest.mark.parametrize(("body", "message", "token", "rest"), MISTAKES, ids=[m[1][:50] for m in MISTAKES])
def test_mistakes_are_one_line_with_file_line_col(tmp_path, base, body, message, token, rest):
    path = study(tmp_path, body)
    text = error_of(path)
    # the location is the line and column where `token` is written
    lines = path.read_text().splitlines()
    line = next(i for i, text_line in enumerate(lines, 1) if token in text_line)
    col = lines[line - 1].index(token) + 1
    assert text == f"{message} at {display_path(path)}:{line}:{col}{rest}"


def test_set_overrides_reach_the_search_block(tmp_path, base):
    path = study(tmp_path, "params: {rcc.delta: [sum, mean]}\nobjective: reward")
    s = load_sweep(path, ["search.n_trials=3", "search.pruner=median"]).spec.search
    assert s.n_trials == 3 and s.pruner.type == "median"
    with pytest.raises(SpecError) as info:
        load_sweep(path, ["search.n_trials=0"])
    assert str(info.value).startswith("invalid value for 'search.n_trials' at --set search.n_trials;")


def test_in_distribution():
    from bicc_lab.spec.sweep_sections import SearchParam

    log = SearchParam(type="log-float", low=0.1, high=10)
    assert in_distribution(log, 0.1) and in_distribution(log, 10) and not in_distribution(log, 11)
    assert not in_distribution(log, True) and not in_distribution(log, "1")
    ints = SearchParam(type="int", low=1, high=3)
    assert in_distribution(ints, 2) and not in_distribution(ints, 2.5)
    cat = SearchParam(type="categorical", choices=[1, None, "a"])
    assert in_distribution(cat, None) and in_distribution(cat, 1) and not in_distribution(cat, True)


def test_set_file_round_trip(tmp_path, base):
    overrides = write(
        tmp_path / "best.yaml",
        """
        # bicc-lab tune best: ...
        rcc.coef: 0.5321
        rcc.delta: mean
        rcc: {max_shift: null}
        train.learning_rate: 1.0e-05
        """,
    )
    values = read_set_file(overrides)
    assert values == {"rcc.coef": 0.5321, "rcc.delta": "mean", "rcc.max_shift": None, "train.learning_rate": 1e-05}
    items = set_items(values)
    assert items == ['rcc.coef=0.5321', 'rcc.delta="mean"', "rcc.max_shift=null", "train.learning_rate=1e-05"]
    sweep = write(tmp_path / "plain.yaml", "base: base.yaml\n")
    config = load_sweep(sweep, items).cells[0].config
    assert (config.rcc.coef, config.rcc.delta, config.rcc.max_shift) == (0.5321, "mean", None)
    assert config.train.learning_rate == 1e-05
    bad = write(tmp_path / "bad.yaml", "- rcc.coef\n")
    with pytest.raises(SpecError) as info:
        read_set_file(bad)
    assert str(info.value).startswith(
        f"an overrides file must be a mapping of dotted keys to values, got a list ['rcc.coef'] at {display_path(bad)}:1:1"
    )
