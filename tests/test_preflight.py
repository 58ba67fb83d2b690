"""The preflight and safe inputs: every mistake is one line naming the key, where it is
written and the cell, before a cell starts, a model loads or a file is written.

In-process for the checks themselves (no model is ever built here); subprocesses only to
show that `sweep run`, `tune run` and `train` stop with exit 2 and create nothing.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import subprocess_env

from bicc_lab.errors import UserError
from bicc_lab.preflight import EvalCheck, RunCheck, preflight, study_checks, sweep_checks
from bicc_lab.spec import load_sweep
from bicc_lab.spec.load import load_experiment_located


def _write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def _error(fn, *args, **kwargs) -> str:
    with pytest.raises(UserError) as info:
        fn(*args, **kwargs)
    text = str(info.value)
    assert "\n" not in text
    return text


@pytest.fixture
def experiment(tmp_path, monkeypatch):
    """A minimal experiment file in a clean cwd, no data dir, the hub off, an empty HF cache."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BICC_LAB_DATA_DIR", raising=False)
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_DATASETS_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return _write(tmp_path / "exp.yaml", "name: e\nmodel: {name: tiny}\n")


def _check(path: Path, *overrides: str) -> str:
    config, locs = load_experiment_located(path, list(overrides))
    return _error(preflight, RunCheck(config, locs))


# --------------------------------------------------------------------------- YAML tags


@pytest.mark.parametrize(
    ("text", "tag", "where"),
    [
        ("name: e\nvariant: !!python/object/apply:os.system [grpo]\n", "!!python/object/apply:os.system", "2:10"),
        ("name: e\nmodel: !foo {name: tiny}\n", "!foo", "2:8"),
        ("name: e\ntrain:\n  extra: !!python/name:os.system {}\n", "!!python/name:os.system", "3:10"),
        ("name: !!binary ZQ==\n", "!!binary", "1:7"),
        ("name: e\neval:\n  benchmarks: !!set {arith_test}\n", "!!set", "3:15"),
        ("name: e\nvariant_overrides: !!omap [{epsilon_high: 0.3}]\n", "!!omap", "2:20"),
        ("name: e\n!!python/str x: 1\n", "!!python/str", "2:1"),
    ],
)
def test_every_yaml_tag_but_the_plain_types_is_refused_at_its_line(tmp_path, text, tag, where):
    path = _write(tmp_path / "exp.yaml", text)
    assert _error(load_experiment_located, path) == (
        f"YAML tag '{tag}' is not allowed at {path}:{where}; "
        "configs hold plain values, lists and mappings only"
    )


def test_plain_tags_still_load(tmp_path):
    path = _write(tmp_path / "exp.yaml", 'name: !!str e\nseed: !!int "3"\ntrain: !!map {max_steps: !!int 5}\n')
    config, _ = load_experiment_located(path)
    assert (config.name, config.seed, config.train.max_steps) == ("e", 3, 5)


def test_a_tag_in_a_set_value_is_refused(tmp_path):
    path = _write(tmp_path / "exp.yaml", "name: e\n")
    text = _error(load_experiment_located, path, ["variant_overrides=!!python/object/apply:os.system [ls]"])
    assert text == (
        "invalid YAML value '!!python/object/apply:os.system [ls]': YAML tag "
        "'!!python/object/apply:os.system' is not allowed at --set variant_overrides"
    )


# --------------------------------------------------------------------------- names that become paths


@pytest.mark.parametrize("name", ["..", ".", "../../x", "a/b", "a\\b", "/abs"])
def test_names_that_become_directories_refuse_separators_and_dot_dot(tmp_path, name):
    quoted = name.replace("\\", "\\\\")
    exp = _write(tmp_path / "exp.yaml", f'name: "{quoted}"\n')
    problem = "contains a path separator" if ("/" in name or "\\" in name) else "is a relative directory, not a name"
    hint = "; names become directory names under runs/ and reports/"
    assert _error(load_experiment_located, exp) == f"name {name!r} {problem} at {exp}:1:7{hint}"
    _write(tmp_path / "base.yaml", "name: e\n")
    sweep = _write(tmp_path / "s.yaml", f'name: "{quoted}"\nbase: base.yaml\n')
    assert _error(load_sweep, sweep) == f"name {name!r} {problem} at {sweep}:1:7{hint}"
    study = _write(
        tmp_path / "t.yaml",
        f'base: base.yaml\nsearch:\n  study_name: "{quoted}"\n  params: {{rcc.coef: [1, 2]}}\n  objective: reward\n',
    )
    assert _error(load_sweep, study) == f"name {name!r} {problem} at {study}:3:15{hint}"


def test_a_sweep_named_by_a_dot_dot_file_stem_is_refused(tmp_path):
    _write(tmp_path / "base.yaml", "name: e\n")
    sweep = _write(tmp_path / "...yaml", "base: base.yaml\n")
    assert _error(load_sweep, sweep).startswith("sweep name '..' is a relative directory, not a name (the file's stem)")


def test_cell_directories_stay_inside_the_sweep_directory(tmp_path):
    """Cell names come from axis values (a model path, a data path): the cell directory is
    still one child of the sweep directory."""
    from bicc_lab.launch import layout

    _write(tmp_path / "base.yaml", "name: e\n")
    sweep = load_sweep(
        _write(
            tmp_path / "s.yaml",
            "base: base.yaml\ngrid:\n  model.name: [tiny, ../../x/..]\n  data.train: [../../../a.jsonl, synthetic_arithmetic]\n",
        )
    )
    runs = tmp_path / "runs"
    for cell in sweep.cells:
        directory = layout.cell_dir(runs, sweep.name, cell.name, cell.cell_id)
        assert directory.parent == runs / "s" and directory.name not in (".", "..")


# --------------------------------------------------------------------------- preflight of one run


def test_model_references(experiment):
    assert _check(experiment, "model.name=./no/such/model") == (
        "model.name: ./no/such/model: no such model directory at --set model.name"
    )
    assert _check(experiment, "model.name=tiny:nope").startswith(
        "model.name: unknown tiny model variant 'nope': expected one of"
    )
    assert _check(experiment, "model.name=Org/Model").startswith(
        "model.name: Org/Model: a hub id, but the hub is off (HF_HUB_OFFLINE) and the model is not in the HF cache"
    )
    (experiment.parent / "file-not-dir").write_text("x")
    assert _check(experiment, "model.name=./file-not-dir") == (
        "model.name: ./file-not-dir: is a file; expected a model directory with config.json at --set model.name"
    )


def test_training_data_first_records_parse_with_the_fields_training_reads(experiment, tmp_path):
    good = _write(tmp_path / "good.jsonl", '{"problem": "1+1", "answer": 2}\n' * 8)  # one generation batch: 64 / 8
    config, locs = load_experiment_located(experiment, [f"data.train={good}"])
    preflight(RunCheck(config, locs))
    _write(tmp_path / "broken.jsonl", '{"problem": "1+1", "answer": 2}\n{"problem": \n')
    assert _check(experiment, "data.train=broken.jsonl") == (
        "data.train: broken.jsonl:2: not valid JSON (Expecting value) at --set data.train"
    )
    _write(tmp_path / "q.jsonl", '{"question": "1+1", "answer": 2}\n' * 8)
    assert _check(experiment, "data.train=q.jsonl") == (
        "data.train: q.jsonl:1: missing field 'problem' (fields: ['answer', 'question']) at --set data.train"
    )
    config, locs = load_experiment_located(experiment, ["data.train=q.jsonl", "data.problem_field=question"])
    preflight(RunCheck(config, locs))
    _write(tmp_path / "empty.jsonl", "\n")
    assert _check(experiment, "data.train=empty.jsonl") == (
        "data.train: empty.jsonl: no records (expected one JSON object per line) at --set data.train"
    )
    assert _check(experiment, "data.train=/nonexistent/t.jsonl") == (
        "data.train: /nonexistent/t.jsonl: file not found (expected a JSONL file of problems) at --set data.train"
    )
    # read from the hub while the hub is off: only from the HF cache
    assert _check(experiment, "data.train=math_train") == (
        "data.train: hub dataset DigitalLearningGmbH/MATH-lighteval is not in the HF cache and the hub is off "
        "(HF_HUB_OFFLINE); set data.data_dir (or BICC_LAB_DATA_DIR) or give a local .jsonl at --set data.train"
    )
    assert _check(experiment, "data.train=org/problems").startswith("data.train: hub dataset org/problems is not")
    (tmp_path / "hf-home" / "hub" / "datasets--org--problems").mkdir(parents=True)
    config, locs = load_experiment_located(experiment, ["data.train=org/problems"])
    preflight(RunCheck(config, locs))
    # a named set in a data dir: GSM8K's own fields and answer format
    data = tmp_path / "data"
    data.mkdir()
    _write(data / "gsm8k_train.jsonl", '{"question": "q", "answer": "no marker"}\n')
    assert _check(experiment, "data.train=gsm8k", f"data.data_dir={data}").startswith(
        "data.train: GSM8K answer has no '#### ' marker: 'no marker' at --set data.train"
    )


def test_eval_benchmarks_are_checked_at_their_list_item(experiment, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    _write(data / "math500.jsonl", '{"problem": "p", "answer": "1"}\n')
    path = _write(
        tmp_path / "exp2.yaml",
        f"name: e\neval:\n  data_dir: {data}\n  benchmarks:\n    - math500\n    - arith_test\n    - aime24\n",
    )
    config, locs = load_experiment_located(path)
    assert _error(preflight, RunCheck(config, locs)) == (
        f"eval.benchmarks[2]: benchmark aime24: {data}/aime24.jsonl: file not found in the data dir "
        f"(the hub's HuggingFaceH4/aime_2024 or Maxwell-Jia/AIME_2024 is tried only when no data dir is set) "
        "at exp2.yaml:7:7"
    )
    preflight(RunCheck(config, locs, evaluate=False))  # train --no-eval
    assert _check(experiment, "eval.benchmarks=[arith_test, mmlu]") == (
        "eval.benchmarks[1]: unknown benchmark 'mmlu': expected one of math500, aime24, aime25, amc23, "
        "gsm8k, minerva, olympiad, arith, word_arith at --set eval.benchmarks"
    )
    # the hub is off and there is no data dir: a hub-only benchmark fails now
    assert _check(experiment, "eval.benchmarks=[amc23]").startswith(
        "eval.benchmarks[0]: benchmark amc23: no data dir for amc23.jsonl (pass --data-dir or set "
        "BICC_LAB_DATA_DIR) and the hub is off (HF_HUB_OFFLINE), with math-ai/amc23 not in the HF cache"
    )


def test_train_extra_keys_are_grpo_config_fields_that_we_do_not_map(experiment):
    assert _check(experiment, "train.extra={lerning_rate: 0.1}") == (
        "train.extra.lerning_rate: 'lerning_rate' is not a field of TRL's GRPOConfig at --set train.extra; "
        "did you mean 'learning_rate'?"
    )
    refused = _check(experiment, "train.extra={loss_type: dr_grpo}")
    assert refused.startswith("train.extra.loss_type would replace the loss_type that bicc-lab sets from the variant")
    assert "at --set train.extra; set the variant" in refused
    assert _check(experiment, "train.extra={max_steps: 3}") == (
        "train.extra.max_steps would replace the max_steps that bicc-lab sets from train.max_steps "
        "at --set train.extra; set train.max_steps instead"
    )
    config, locs = load_experiment_located(
        experiment, ["train.extra={report_to: none, mask_truncated_completions: true}"]
    )
    preflight(RunCheck(config, locs))


def test_every_mapped_grpo_field_but_the_machine_defaults_is_refused_in_extra(experiment):
    """Derived from the mapping itself, so a field mapped later is refused too."""
    from bicc_lab.backends.trl.preflight import OVERRIDABLE
    from bicc_lab.backends.trl.run import grpo_config_kwargs

    config, _ = load_experiment_located(experiment)
    mapped = grpo_config_kwargs(config, Path("out"), use_cpu=True)
    assert OVERRIDABLE < set(mapped)
    for key, value in mapped.items():
        extra = config.model_copy(update={"train": config.train.model_copy(update={"extra": {key: value}})})
        if key in OVERRIDABLE:
            preflight(RunCheck(extra))
        else:
            assert f"train.extra.{key} would replace the {key} that bicc-lab sets from " in _error(
                preflight, RunCheck(extra)
            )


def test_vllm_settings_are_checked_without_a_gpu(experiment):
    assert _check(experiment, "train.use_vllm=true", "model.name=Qwen/Qwen3-0.6B", "train.vllm_mode=server").startswith(
        "model.name: Qwen/Qwen3-0.6B: a hub id, but the hub is off"
    )
    assert _check(experiment, "train.use_vllm=true", "train.vllm_mode=server") == (
        "train.vllm_mode 'server' needs train.extra.vllm_server_base_url (or vllm_server_host/port) "
        "at --set train.vllm_mode; start `trl vllm-serve --model ...` first"
    )
    assert _check(experiment, "train.use_vllm=true") == (
        "train.use_vllm needs a real model (model.name), not the tiny CPU model at --set train.use_vllm"
    )


def test_unknown_variant_override_field(experiment):
    assert _check(experiment, "variant_overrides={epsilon_hi: 0.3}").startswith(
        "variant_overrides: unknown variant field(s) epsilon_hi for 'grpo'"
    )


def test_eval_check_names_the_flag(experiment, tmp_path):
    assert _error(preflight, EvalCheck("./nope", "arith")) == "--model: ./nope: no such model directory"
    assert _error(preflight, EvalCheck("tiny", "math500", tmp_path)) == (
        f"--tasks: benchmark math500: {tmp_path}/math500.jsonl: file not found in the data dir "
        "(the hub's HuggingFaceH4/MATH-500 is tried only when no data dir is set)"
    )
    preflight(EvalCheck("tiny:untrained", "arith_test"))
    preflight(EvalCheck("tiny", "arith_test,arith"))


def test_a_missing_benchmark_file_fails_without_trying_the_hub(tmp_path, monkeypatch):
    """Before: ~28 s of hub retries and 12 lines of noise; now one line at once."""
    from bicc_lab.eval.data import EvalDataError, load_docs

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    start = time.perf_counter()
    with pytest.raises(EvalDataError, match="aime25.jsonl: file not found in the data dir"):
        load_docs("aime25", tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("BICC_LAB_DATA_DIR", raising=False)
    with pytest.raises(EvalDataError, match="the hub is off"):
        load_docs("aime25", None)
    assert time.perf_counter() - start < 2.0


# --------------------------------------------------------------------------- sweeps and studies


@pytest.fixture
def sweep_project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BICC_LAB_DATA_DIR", raising=False)
    _write(
        tmp_path / "base.yaml",
        """
        name: t
        model: {name: tiny}
        train: {max_steps: 2, num_generations: 4, per_device_train_batch_size: 8}
        eval: {benchmarks: [arith_test], samples: 2, limit: 2}
        """,
    )
    _write(
        tmp_path / "bad.yaml",
        """
        name: bad-sweep
        base: base.yaml
        grid:
          seed: [0, 1]
          data.train: [synthetic_arithmetic, /nonexistent/train.jsonl]
        """,
    )
    _write(
        tmp_path / "study.yaml",
        """
        name: bad-study
        base: base.yaml
        search:
          params:
            rcc.coef: {type: log-float, low: 0.1, high: 10}
            model.name: [tiny, ./no-model]
          objective: reward
          n_trials: 2
        """,
    )
    return tmp_path


def test_sweep_checks_every_cell_and_names_the_bad_one(sweep_project):
    sweep = load_sweep("bad.yaml")
    checks = sweep_checks(sweep)
    assert [c.cell for c in checks] == [cell.name for cell in sweep.cells] and len(checks) == 4
    assert _error(preflight, checks) == (
        "data.train: /nonexistent/train.jsonl: file not found (expected a JSONL file of problems) "
        "at bad.yaml:5:38 (in cell tiny/grpo/base/s0/train=_nonexistent_train.jsonl)"
    )


def test_study_checks_each_categorical_choice(sweep_project):
    sweep = load_sweep("study.yaml")
    checks = study_checks(sweep)
    assert [c.cell for c in checks] == [
        "tiny/grpo/base/s0",
        "tiny/grpo/base/s0 with model.name='tiny'",
        "tiny/grpo/base/s0 with model.name='./no-model'",
    ]
    assert _error(preflight, checks) == (
        "model.name: ./no-model: no such model directory at study.yaml: search.params.model.name "
        "(in cell tiny/grpo/base/s0 with model.name='./no-model')"
    )


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = subprocess_env(cwd / "cache")
    env.pop("BICC_LAB_DATA_DIR", None)
    return subprocess.run(
        [sys.executable, "-m", "bicc_lab.cli.main", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )


def test_sweep_run_and_tune_run_with_a_bad_cell_start_nothing(sweep_project):
    before = sorted(p.name for p in sweep_project.iterdir())
    proc = _cli(["sweep", "run", "bad.yaml"], sweep_project)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.splitlines() == [
        "error: data.train: /nonexistent/train.jsonl: file not found (expected a JSONL file of problems) "
        "at bad.yaml:5:38 (in cell tiny/grpo/base/s0/train=_nonexistent_train.jsonl)"
    ]
    proc = _cli(["tune", "run", "study.yaml"], sweep_project)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.splitlines() == [
        "error: model.name: ./no-model: no such model directory at study.yaml: search.params.model.name "
        "(in cell tiny/grpo/base/s0 with model.name='./no-model')"
    ]
    # no runs/, no mlflow.db, no study storage, no tiny-model cache
    assert sorted(p.name for p in sweep_project.iterdir()) == before


def test_train_checks_data_and_benchmarks_before_writing_anything(sweep_project):
    before = sorted(p.name for p in sweep_project.iterdir())
    proc = _cli(["train", "base.yaml", "--set", "eval.benchmarks=[arith_test, amc23]", "--set", "eval.data_dir=."], sweep_project)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.splitlines() == [
        "error: eval.benchmarks[1]: benchmark amc23: amc23.jsonl: file not found in the data dir "
        "(the hub's math-ai/amc23 is tried only when no data dir is set) at --set eval.benchmarks"
    ]
    _write(sweep_project / "late.jsonl", '{"problem": "1+1=", "answer": "2"}\n{"problem": "2+2=", "answer": 4, \n')
    proc = _cli(["train", "base.yaml", "--set", "data.train=late.jsonl"], sweep_project)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.splitlines() == [
        "error: data.train: late.jsonl:2: not valid JSON (Expecting property name enclosed in double quotes) "
        "at --set data.train"
    ]
    (sweep_project / "late.jsonl").unlink()
    assert sorted(p.name for p in sweep_project.iterdir()) == before  # no runs/train/<name>/config.yaml
