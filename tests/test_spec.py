"""bicc_lab.spec: defaults, one-line located errors, --set, grid expansion, run identity."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bicc_lab.algorithms.registry import VARIANTS
from bicc_lab.spec import (
    ARMS,
    IDENTITY_EXCLUDE,
    ExperimentConfig,
    SpecError,
    arm,
    canonical_json,
    config_hash,
    config_id,
    expand,
    iter_keys,
    load_experiment,
    load_sweep,
    parse_override,
    train_id,
    validate_experiment,
    with_overrides,
)

ROOT = Path(__file__).resolve().parents[1]


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def error_of(fn, *args, **kwargs) -> str:
    with pytest.raises(SpecError) as info:
        fn(*args, **kwargs)
    text = str(info.value)
    assert "\n" not in text, text
    return text


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return write(
        tmp_path / "base.yaml",
        """
        name: t
        train:
          max_steps: 5
          max_completion_length: 6
        """,
    )


# --------------------------------------------------------------------------- defaults


def test_defaults_match_the_contract():
    c = ExperimentConfig(name="x")
    assert (c.seed, c.variant, c.variant_overrides) == (0, "grpo", {})
    assert (
        c.model.name == "tiny" and c.model.dtype == "float32" and c.model.trust_remote_code is False
    )
    assert c.model.attn_implementation is None
    assert c.data.train == "synthetic_arithmetic" and c.data.digits == 2 and c.data.chat is False
    t = c.train
    assert (t.max_steps, t.learning_rate, t.num_generations, t.per_device_train_batch_size) == (
        200,
        2e-4,
        8,
        64,
    )
    assert (t.gradient_accumulation_steps, t.steps_per_generation, t.num_iterations) == (1, None, 1)
    assert (t.max_completion_length, t.max_prompt_length, t.temperature, t.top_p, t.beta) == (
        32,
        None,
        1.0,
        1.0,
        0.0,
    )
    assert (t.std, t.logging_steps, t.save_steps, t.max_grad_norm, t.bf16) == (
        "unbiased",
        1,
        50,
        1.0,
        False,
    )
    assert (t.use_vllm, t.vllm_mode, t.output_dir, t.extra) == (False, "colocate", None, {})
    b = c.bicc
    assert (b.enabled, b.context_fraction, b.max_traces, b.template, b.ratio) == (
        False,
        0.4,
        None,
        "default",
        "paper",
    )
    assert (b.separator, b.success_threshold, b.seed) == ("\n", 0.5, None)
    r = c.rcc
    assert (r.enabled, r.coef, r.max_shift, r.delta, r.reference) == (
        False,
        1.0,
        None,
        "sum",
        "ref",
    )
    e = c.eval
    assert (e.benchmarks, e.samples, e.temperature, e.top_p, e.max_new_tokens) == (
        ["arith_test"],
        4,
        0.6,
        0.95,
        32,
    )
    assert (e.limit, e.data_dir, e.backend, e.enabled) == (None, None, "hf", True)
    assert c.diagnostics.grad_variance is False
    assert (c.tracking.uri, c.tracking.experiment) == (None, None)


def test_every_key_has_a_description():
    keys = list(iter_keys())
    assert len(keys) > 60
    assert all(desc for _, _, _, desc in keys), [k for k, _, _, d in keys if not d]
    assert ("bicc.context_fraction", 0.4) in [(k, d) for k, _, d, _ in keys]


def test_tiny_experiment_file():
    c = load_experiment(ROOT / "experiments" / "tiny.yaml")
    assert c.model.name == "tiny" and c.data.train == "synthetic_arithmetic" and c.data.digits == 2
    assert c.train.learning_rate == 2e-4
    # 8 prompts x 8 generations per optimizer step, in two micro-batches (gradient variance)
    assert c.train.num_generations == 8 and c.train.generation_batch_size == 64
    assert c.train.generation_batch_size // c.train.num_generations == 8  # prompts per step
    assert c.train.gradient_accumulation_steps == 2 and c.diagnostics.grad_variance
    assert c.train.max_completion_length <= 8
    assert c.eval.benchmarks == ["arith_test"]


def test_cross_field_rules():
    with pytest.raises(
        SpecError, match=r"train.num_generations must be >= 2 \(a group of 1 has no baseline\)"
    ):
        validate_experiment(
            {"name": "x", "train": {"num_generations": 1, "per_device_train_batch_size": 4}}
        )
    with pytest.raises(SpecError, match="must be divisible by train.num_generations"):
        validate_experiment({"name": "x", "train": {"num_generations": 6}})
    # steps_per_generation multiplies the generation batch: 4 x 2 = 8 holds whole groups of 8.
    ok = validate_experiment(
        {
            "name": "x",
            "train": {
                "num_generations": 8,
                "per_device_train_batch_size": 4,
                "steps_per_generation": 2,
            },
        }
    )
    assert ok.train.generation_batch_size == 8
    # 'old' is the policy of the previous generation batch, so it is valid with one iteration.
    assert (
        validate_experiment({"name": "x", "rcc": {"enabled": True, "reference": "old"}}).rcc.reference
        == "old"
    )
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(SpecError, match="bicc.context_fraction"):
            validate_experiment({"name": "x", "bicc": {"context_fraction": bad}})
    with pytest.raises(SpecError, match="bicc.max_traces"):
        validate_experiment({"name": "x", "bicc": {"max_traces": 0}})
    with pytest.raises(SpecError, match="rcc.max_shift"):
        validate_experiment({"name": "x", "rcc": {"max_shift": 0}})


def test_arm_labels():
    labels = [
        arm(validate_experiment({"name": "x", "bicc": {"enabled": b}, "rcc": {"enabled": r}}))
        for b in (False, True)
        for r in (False, True)
    ]
    assert labels == ["base", "rcc", "bicc", "bicc+rcc"]
    assert set(labels) == set(ARMS)


# --------------------------------------------------------------------------- located errors


def test_broken_yaml_reports_parser_position(tmp_path):
    path = write(
        tmp_path / "broken.yaml",
        """
        name: x
        train:
          max_steps: 3
         bad_indent: 1
        """,
    )
    text = error_of(load_experiment, path)
    assert text.startswith("invalid YAML")
    assert "broken.yaml:4:2" in text


def test_unknown_key_with_suggestion(tmp_path):
    path = write(
        tmp_path / "x.yaml",
        """
        name: x
        bicc:
          enabled: true
          contxt_fraction: 0.2
        """,
    )
    text = error_of(load_experiment, path)
    assert text == (
        f"unknown key 'bicc.contxt_fraction' at {_shown(path)}:4:3; did you mean 'bicc.context_fraction'?"
    )


def test_key_in_the_wrong_section_is_suggested(tmp_path):
    path = write(tmp_path / "x.yaml", "name: x\ntrain: {context_fraction: 0.2}\n")
    text = error_of(load_experiment, path)
    assert ":2:9;" in text and "did you mean 'bicc.context_fraction'?" in text


def test_wrong_type_names_expected_and_got(tmp_path):
    path = write(
        tmp_path / "x.yaml",
        """
        name: x
        seed: 1
        train:
          learning_rate: 1.0e-4
          max_steps: abc
        """,
    )
    text = error_of(load_experiment, path)
    assert (
        text
        == f"invalid value for 'train.max_steps' at {_shown(path)}:5:14; expected an integer, got 'abc'"
    )


def test_booleans_are_not_numbers(tmp_path):
    path = write(tmp_path / "x.yaml", "name: x\nseed: true\n")
    assert error_of(load_experiment, path).endswith(":2:7; expected an integer, got true")
    path = write(tmp_path / "y.yaml", "name: x\nrcc: {coef: yes}\n")
    assert "expected a number, got true" in error_of(load_experiment, path)


def test_unknown_variant(tmp_path):
    path = write(
        tmp_path / "x.yaml",
        """
        name: x
        variant: drgrpo
        """,
    )
    text = error_of(load_experiment, path)
    assert text == (
        f"unknown variant 'drgrpo' at {_shown(path)}:2:10; did you mean 'dr_grpo'? "
        "valid: aspo, dapo, dr_grpo, gmpo, grpo, gspo"
    )


def test_cross_field_error_points_at_a_written_key(tmp_path):
    path = write(
        tmp_path / "x.yaml",
        """
        name: x
        train:
          max_steps: 3
          num_generations: 6
        """,
    )
    text = error_of(load_experiment, path)
    assert text.startswith("train.per_device_train_batch_size x steps_per_generation (64 x 1 = 64)")
    assert f"at {_shown(path)}:4:20;" in text


def test_missing_and_empty_files(tmp_path):
    assert "experiment file not found" in error_of(load_experiment, tmp_path / "nope.yaml")
    path = write(tmp_path / "empty.yaml", "")
    assert "is empty" in error_of(load_experiment, path)
    path = write(tmp_path / "list.yaml", "- a\n- b\n")
    assert "must be a mapping" in error_of(load_experiment, path)
    path = write(tmp_path / "dup.yaml", "name: x\nseed: 1\nseed: 2\n")
    text = error_of(load_experiment, path)
    assert text.startswith("duplicate key 'seed'") and "dup.yaml:3:1" in text


def test_missing_name(tmp_path):
    path = write(tmp_path / "x.yaml", "seed: 1\n")
    assert error_of(load_experiment, path).startswith("missing required key 'name'")


def test_unsafe_yaml_tag_is_refused(tmp_path):
    path = write(tmp_path / "x.yaml", "name: !!python/object/apply:os.system ['true']\n")
    text = error_of(load_experiment, path)
    assert "x.yaml:1:7" in text


# --------------------------------------------------------------------------- --set


def test_set_values_are_yaml(base):
    c = load_experiment(
        base,
        [
            "bicc.enabled=true",
            "train.max_steps=2",
            "train.learning_rate=1e-3",
            "eval.benchmarks=[a, b]",
            "model.attn_implementation=",
            "train.extra={report_to: none}",
            "variant_overrides.epsilon_high=0.28",
        ],
    )
    assert c.bicc.enabled is True and c.train.max_steps == 2 and c.train.learning_rate == 1e-3
    assert c.eval.benchmarks == ["a", "b"] and c.model.attn_implementation is None
    assert c.train.extra == {"report_to": "none"} and c.variant_overrides == {"epsilon_high": 0.28}
    assert c.train.max_completion_length == 6  # untouched keys of the file survive


def test_set_merges_sections(base):
    c = load_experiment(base, ["train={num_iterations: 2}"])
    assert c.train.num_iterations == 2 and c.train.max_steps == 5


def test_parse_override():
    o = parse_override("rcc.coef=0.5")
    assert (o.key, o.parts, o.value) == ("rcc.coef", ("rcc", "coef"), 0.5)
    assert parse_override("data.train=a=b").value == "a=b"
    assert parse_override("train.learning_rate=2e-4").value == 2e-4
    assert "--set expects KEY=VALUE" in error_of(parse_override, "rcc.coef")
    assert "invalid key" in error_of(parse_override, "rcc..coef=1")


def test_set_errors_name_the_flag(base):
    assert error_of(load_experiment, base, ["train.max_stepz=3"]) == (
        "unknown key 'train.max_stepz' at --set train.max_stepz; did you mean 'train.max_steps'?"
    )
    assert error_of(load_experiment, base, ["train.max_steps=x"]) == (
        "invalid value for 'train.max_steps' at --set train.max_steps; expected an integer, got 'x'"
    )
    assert error_of(load_experiment, base, ["seed.x=1"]).startswith(
        "'seed' is a value, not a section"
    )
    assert "at --set eval.benchmarks" in error_of(load_experiment, base, ["eval.benchmarks=[a"])


def test_with_overrides_revalidates(base):
    c = load_experiment(base)
    assert with_overrides(c, {"rcc.coef": 0.25}).rcc.coef == 0.25
    assert with_overrides(c, ["seed=3"]).seed == 3
    with pytest.raises(SpecError, match="num_generations must be >= 2"):
        with_overrides(c, {"train.num_generations": 1})


# --------------------------------------------------------------------------- sweeps


def test_grid_product_and_names(tmp_path, base):
    path = write(
        tmp_path / "s.yaml",
        """
        base: base.yaml
        grid:
          variant: [grpo, dr_grpo]
          bicc.enabled: [false, true]
          rcc.enabled: [false, true]
          seed: [0, 1]
        """,
    )
    sweep = load_sweep(path)
    cells = expand(sweep)
    assert len(cells) == 16 and sweep.name == "s"
    assert len({c.cell_id for c in cells}) == 16 and len({c.name for c in cells}) == 16
    assert cells[0].name == "tiny/grpo/base/s0"
    assert cells[0].axes == {
        "variant": "grpo",
        "bicc.enabled": False,
        "rcc.enabled": False,
        "seed": 0,
    }
    assert cells[-1].name == "tiny/dr_grpo/bicc+rcc/s1"
    assert [c.arm for c in cells[:8:2]] == ["base", "rcc", "bicc", "bicc+rcc"]
    assert all(c.config.train.max_steps == 5 for c in cells)  # base survives
    assert all(len(c.cell_id) == 12 and c.config_hash.startswith(c.cell_id) for c in cells)


def test_zip_exclude_and_extra_axes_in_names(tmp_path, base):
    path = write(
        tmp_path / "s.yaml",
        """
        base: base.yaml
        set:
          train.max_steps: 7
        grid:
          variant: [grpo, gspo]
          rcc.coef: [0.5, 1.0]
        zip:
          - train.learning_rate: [1.0e-3, 2e-4, 5e-5]
            train.max_completion_length: [4, 6, 8]
        exclude:
          - {variant: gspo, rcc.coef: 0.5}
          - {train.learning_rate: [1.0e-3, 5e-5], variant: gspo}
        """,
    )
    cells = load_sweep(path).cells
    # 2 x 2 x 3 = 12; minus gspo&coef=0.5 (3); minus gspo&lr in {1e-3, 5e-5} with coef=1.0 (2)
    assert len(cells) == 7
    pairs = {(c.config.train.learning_rate, c.config.train.max_completion_length) for c in cells}
    assert pairs == {(1e-3, 4), (2e-4, 6), (5e-5, 8)}
    gspo = [c for c in cells if c.config.variant == "gspo"]
    assert [(c.config.rcc.coef, c.config.train.learning_rate) for c in gspo] == [(1.0, 2e-4)]
    assert gspo[0].name == "tiny/gspo/base/s0/coef=1.0/learning_rate=0.0002/max_completion_length=6"
    assert all(c.config.train.max_steps == 7 for c in cells)
    assert len({c.name for c in cells}) == 7


def test_sweep_errors_are_located(tmp_path, base):
    def sweep_error(body: str, *overrides: str) -> str:
        path = write(tmp_path / "s.yaml", body)
        return error_of(load_sweep, path, list(overrides))

    shown = _shown(tmp_path / "s.yaml")
    text = sweep_error(
        """
        base: base.yaml
        grid:
          variant: [grpo]
          bicc.contxt_fraction: [0.2, 0.4]
        """
    )
    assert text == (
        f"unknown grid axis 'bicc.contxt_fraction' at {shown}:4:3; did you mean 'bicc.context_fraction'?"
    )
    text = sweep_error(
        """
        base: base.yaml
        grid:
          seed: [0, 1]
          variant: [grpo, drgrpo]
        """
    )
    assert text.startswith(
        f"unknown variant 'drgrpo' at {shown}:4:19 (in cell seed=0, variant=drgrpo)"
    )
    assert "did you mean 'dr_grpo'?" in text
    text = sweep_error(
        """
        base: base.yaml
        set:
          bicc:
            contxt_fraction: 0.2
        """
    )
    assert text.startswith(f"unknown key 'bicc.contxt_fraction' at {shown}:4:5")
    text = sweep_error("base: missing.yaml\n")
    assert text.startswith("base experiment file not found:") and "missing.yaml" in text
    assert f"at {shown}:1:7" in text
    text = sweep_error(
        """
        base: base.yaml
        zip:
          - seed: [0, 1]
            variant: [grpo]
        """
    )
    assert text.startswith("zip group axes have different lengths (seed has 2, variant has 1)")
    assert f"{shown}:3:5" in text
    text = sweep_error(
        """
        base: base.yaml
        grid:
          variant: [grpo, dapo]
        exclude:
          - {seed: 0}
        """
    )
    assert text.startswith(f"exclude key 'seed' is not an axis of this sweep at {shown}:5:6")
    text = sweep_error(
        """
        base: base.yaml
        grid:
          variant: [grpo, dapo]
        exclude:
          - {variant: gpso}
        """
    )
    assert text.startswith(
        f"exclude value 'gpso' for 'variant' matches none of its axis values at {shown}:5:15; axis values: grpo, dapo"
    )
    text = sweep_error("base: base.yaml\nseed: 1\n")
    assert text.startswith(
        f"unknown sweep key 'seed' at {shown}:2:1; experiment keys go under 'set:'"
    )
    text = sweep_error("base: base.yaml\ngrids: {}\n")
    assert text == f"unknown key 'grids' at {shown}:2:1; did you mean 'grid'?"
    text = sweep_error("base: base.yaml\ngrid:\n  seed: [0, 0]\n")
    assert "resolve to the same config" in text
    text = sweep_error("base: base.yaml\ngrid:\n  seed: [0, 1]\n", "seed=3")
    assert text.startswith("'seed' is an axis of this sweep at --set seed")
    text = sweep_error("base: base.yaml\ngrid:\n  train.num_generations: [8, 1]\n")
    assert text.startswith(
        f"train.num_generations must be >= 2 (a group of 1 has no baseline), got 1 at {shown}:3:30"
    )


def test_error_in_base_file_points_into_base(tmp_path):
    write(tmp_path / "b.yaml", "name: x\ntrain:\n  max_steps: -1\n")
    path = write(tmp_path / "s.yaml", "base: b.yaml\ngrid:\n  seed: [0]\n")
    text = error_of(load_sweep, path)
    assert text.startswith(
        f"invalid value for 'train.max_steps' at {_shown(tmp_path / 'b.yaml')}:3:14"
    )


def test_sweep_set_overrides(tmp_path, base):
    path = write(
        tmp_path / "s.yaml",
        """
        base: base.yaml
        grid:
          seed: [0, 1]
        tracking:
          uri: sqlite:///x.db
        """,
    )
    sweep = load_sweep(
        path, ["train.max_steps=1", "grid.seed=[4, 5, 6]", "max_parallel=3", "name=renamed"]
    )
    assert [c.config.seed for c in sweep.cells] == [4, 5, 6]
    assert all(c.config.train.max_steps == 1 for c in sweep.cells)
    assert all(c.config.tracking.uri == "sqlite:///x.db" for c in sweep.cells)
    assert sweep.spec.max_parallel == 3 and sweep.name == "renamed"
    assert sweep.base_config.train.max_steps == 1
    assert sweep.cell(sweep.cells[1].cell_id) is sweep.cells[1]
    assert sweep.cell("tiny/grpo/base/s6") is sweep.cells[2]


# --------------------------------------------------------------------------- identity


def test_canonical_json_is_the_hashed_text():
    c = validate_experiment({"name": "x"})
    text = canonical_json(c)
    assert config_hash(c) == hashlib.sha256(text.encode()).hexdigest()
    assert config_id(c) == config_hash(c)[:12]
    data = json.loads(text)
    assert "name" not in data and "tracking" not in data
    assert (
        "output_dir" not in data["train"]
        and "data_dir" not in data["data"]
        and "data_dir" not in data["eval"]
    )
    assert data["train"]["learning_rate"] == 2e-4  # defaults are included
    assert list(data) == sorted(data)
    assert set(IDENTITY_EXCLUDE) == {
        "name",
        "tracking",
        "train.output_dir",
        "data.data_dir",
        "eval.data_dir",
    }


def test_ids_ignore_order_spelling_and_explicit_defaults(tmp_path):
    a = write(tmp_path / "a.yaml", "name: a\ntrain: {max_steps: 5, learning_rate: 2e-4}\nseed: 0\n")
    b = write(
        tmp_path / "b.yaml",
        """
        seed: 0
        train:
          learning_rate: 0.0002
          max_steps: 5
          num_generations: 8
          output_dir: /somewhere/else
        name: b
        bicc: {enabled: false, context_fraction: 0.4}
        tracking: {uri: "sqlite:///other.db", experiment: other}
        data: {data_dir: /data}
        eval: {data_dir: /data}
        """,
    )
    assert config_id(load_experiment(a)) == config_id(load_experiment(b))
    # Stable across processes and runs (a literal value guards against accidental changes).
    code = (
        "from bicc_lab.spec import load_experiment, config_id;"
        f"print(config_id(load_experiment({str(a)!r})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == config_id(load_experiment(a))


@pytest.mark.parametrize(
    "override",
    [
        "seed=1",
        "variant=dapo",
        "variant_overrides.epsilon_high=0.28",
        "model.name=other",
        "model.dtype=bfloat16",
        "data.digits=3",
        "train.learning_rate=1e-4",
        "train.max_steps=6",
        "train.num_generations=4",
        "train.beta=0.01",
        "train.temperature=0.9",
        "train.extra={foo: 1}",
        "bicc.enabled=true",
        "bicc.context_fraction=0.2",
        "rcc.enabled=true",
        "rcc.coef=0.5",
        "eval.samples=8",
        "diagnostics.grad_variance=true",
    ],
)
def test_ids_change_with_any_training_key(base, override):
    assert config_id(load_experiment(base, [override])) != config_id(load_experiment(base))


@pytest.mark.parametrize(
    "override",
    [
        "tracking.uri=sqlite:///x.db",
        "tracking.experiment=e",
        "name=other",
        "train.output_dir=/tmp/o",
        "data.data_dir=/d",
        "eval.data_dir=/d",
    ],
)
def test_ids_ignore_where_it_is_tracked_or_written(base, override):
    assert config_id(load_experiment(base, [override])) == config_id(load_experiment(base))


def test_train_id_ignores_eval_only(base):
    c = load_experiment(base)
    assert train_id(with_overrides(c, {"eval.samples": 32})) == train_id(c)
    assert train_id(with_overrides(c, {"rcc.coef": 0.3})) != train_id(c)


# --------------------------------------------------------------------------- shipped sweeps


def test_quickstart_sweep_loads_and_expands():
    sweep = load_sweep(ROOT / "sweeps" / "quickstart.yaml")
    cells = expand(sweep)
    assert len(cells) == 16
    assert {c.config.variant for c in cells} == {"grpo", "dr_grpo"}
    assert {c.arm for c in cells} == set(ARMS)
    assert {c.config.seed for c in cells} == {0, 1}
    assert all(c.config.model.name == "tiny" for c in cells)
    assert len({c.name for c in cells}) == 16 and len({c.cell_id for c in cells}) == 16


def test_paper_sweep_loads_and_expands():
    sweep = load_sweep(ROOT / "sweeps" / "paper.yaml")
    cells = expand(sweep)
    assert len(cells) == 2 * 6 * 2 * 2
    assert {c.config.model.name for c in cells} == {
        "Qwen/Qwen3-4B-Instruct-2507",
        "microsoft/Phi-4-mini-instruct",
    }
    assert {c.config.variant for c in cells} == set(VARIANTS)
    c = cells[0].config
    assert c.train.num_generations == 8 and c.train.learning_rate == 1e-6 and c.train.bf16
    assert c.train.per_device_train_batch_size * c.train.gradient_accumulation_steps == 32 * 8
    assert c.data.train == "dapo_math" and c.data.chat is True
    assert c.eval.benchmarks == ["math500", "aime24", "aime25", "amc23"] and c.eval.samples == 32
    assert cells[0].name == "Qwen3-4B-Instruct-2507/grpo/base/s0"
    assert len({x.name for x in cells}) == len(cells)


# --------------------------------------------------------------------------- import weight


def test_import_is_light():
    code = (
        "import sys, bicc_lab.spec;"
        "heavy = ['torch', 'transformers', 'trl', 'mlflow', 'lm_eval', 'optuna', 'pandas', 'numpy'];"
        "print(','.join(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == ""


def _shown(path: Path) -> str:
    from bicc_lab.spec.errors import display_path

    return display_path(path)


def test_search_block_is_validated(tmp_path, base):
    # (the strict rules of the search block are tested in test_spec_search.py)
    path = write(
        tmp_path / "s.yaml",
        """
        base: base.yaml
        set: {rcc.enabled: true}
        search:
          params:
            rcc.coef: {type: float, low: 0.0, high: 2.0}
            rcc.max_shift: [0.1, 0.5, null]
          objective: eval/arith_test/avg@4
          direction: maximize
          n_trials: 8
          sampler: tpe
          pruner: {type: median}
        """,
    )
    sweep = load_sweep(path)
    assert len(sweep.cells) == 1 and sweep.cells[0].config.rcc.enabled
    assert sweep.spec.search.n_trials == 8 and sweep.spec.search.pruner.type == "median"
    assert list(sweep.spec.search.params) == ["rcc.coef", "rcc.max_shift"]
    path = write(
        tmp_path / "t.yaml",
        """
        base: base.yaml
        search:
          params:
            rcc.cof: {type: float, low: 0.0, high: 2.0}
          objective: reward
        """,
    )
    assert error_of(load_sweep, path) == (
        f"unknown search parameter 'rcc.cof' at {_shown(path)}:4:5; did you mean 'rcc.coef'?"
    )
    path = write(
        tmp_path / "u.yaml",
        "base: base.yaml\nsearch: {direction: up, objective: reward, params: {rcc.coef: [1, 2]}}\n",
    )
    assert error_of(load_sweep, path).startswith(
        f"invalid value 'up' for 'search.direction' at {_shown(path)}:2:21; expected one of: maximize, minimize"
    )


def test_set_mapping_errors_point_at_the_flag(base):
    assert error_of(load_experiment, base, ["train={max_steps: x}"]).startswith(
        "invalid value for 'train.max_steps' at --set train;"
    )


def test_lazy_cells_equal_the_built_ones_and_fail_the_same(base, tmp_path):
    """``load_sweep(lazy=True)`` (what ``sweep plan`` walks): the same cells, names (two
    names told apart by their ids), configs and locations, with the same errors."""
    names = write(
        tmp_path / "names.yaml",
        """
        base: base.yaml
        grid:
          data.train: ["x/a.jsonl", "x_a.jsonl", "y.jsonl"]
          bicc: [{enabled: true}, {enabled: false, context_fraction: 0.5}]
          seed: [0, 1]
        set: {train.extra: {optim_args: [1, 2]}}
        tracking: {experiment: e}
        """,
    )
    built = load_sweep(names).cells
    lazy = load_sweep(names, lazy=True).cells
    assert len(lazy) == len(built) == 12
    for a, b in zip(built, lazy, strict=True):
        assert (a.name, a.cell_id, a.index, a.axes, a.config, a.locs) == (b.name, b.cell_id, b.index, b.axes, b.config, b.locs)
    assert built[0].name.endswith("~" + built[0].cell_id[:6])
    assert lazy[5].name == built[5].name and lazy[-1].name == built[-1].name
    assert list(lazy) == list(lazy)  # each walk builds the same cells
    dup = write(tmp_path / "dup.yaml", "base: base.yaml\ngrid: {seed: [0, 1, 0]}\n")
    bad = write(tmp_path / "bad.yaml", "base: base.yaml\ngrid: {bicc: [{enabled: true}, {enabld: true}]}\n")
    for path, fragment in ((dup, "resolve to the same config"), (bad, "unknown key 'bicc.enabld'")):
        assert error_of(load_sweep, path, lazy=True) == error_of(load_sweep, path)
        assert fragment in error_of(load_sweep, path, lazy=True)
