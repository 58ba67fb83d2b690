"""`bicc-lab eval` with lm-eval's flags and meanings, its MLflow logging, `bicc-lab train`'s
own MLflow run (resumed after a kill), and our task YAMLs under plain `lm-eval run`.

The fast tests check the flag parsers and the one-line errors (no model loads); the slow
ones run the installed scripts on the untrained tiny model, offline.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import subprocess_env
from typer.testing import CliRunner

from bicc_lab.cli.evaluate import _model_and_backend
from bicc_lab.cli.lmeval_flags import parse_key_values
from bicc_lab.cli.main import app
from bicc_lab.eval.runner import output_files, parse_limit, parse_seed

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
runner = CliRunner()


# --------------------------------------------------------------------------- parsers


@pytest.mark.parametrize(
    ("text", "expected"),
    [("5", 5), ("5.0", 5), ("1.0", 1), ("1", 1), ("0.1", 0.1), ("0.05", 0.05), (None, None)],
)
def test_limit_is_a_count_or_below_one_a_fraction(text, expected):
    value = parse_limit(text)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("text", ["0", "-1", "2.5", "abc", "nan", "inf"])
def test_bad_limits_are_refused(text):
    with pytest.raises(ValueError):
        parse_limit(text)


def test_a_fraction_takes_lm_evals_ceiling():
    """What lm-eval's get_sample_size does with a fraction: ceil(limit * n)."""
    from lm_eval.evaluator_utils import get_sample_size

    class Task:
        def __init__(self, n):
            self.eval_docs = list(range(n))

    # aime24 has 30 problems: 0.05 -> ceil(1.5) = 2; amc23 has 40: 0.05 -> 2; math500: 0.1 -> 50
    for n, limit, expected in [(30, 0.05, 2), (40, 0.05, 2), (500, 0.1, 50), (15, 0.3, 5)]:
        assert get_sample_size(Task(n), parse_limit(str(limit))) == expected == math.ceil(n * limit)
    assert get_sample_size(Task(30), parse_limit("7")) == 7


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, (0, 0, 0, 0)),
        ("42", (42, 42, 42, 42)),
        ("0,None,8,52", (0, None, 8, 52)),
        ("1,2,3", (1, 2, 3, 1234)),  # lm-eval fills a missing fourth with its default
        (7, (7, 7, 7, 7)),
    ],
)
def test_seed_as_lm_eval_reads_it(text, expected):
    assert parse_seed(text) == expected


def test_seed_matches_lm_evals_own_parser():
    from functools import partial

    from lm_eval._cli.utils import _int_or_none_list_arg_type

    theirs = partial(_int_or_none_list_arg_type, 3, 4, "0,1234,1234,1234")
    for text in ("42", "0,None,8,52", "1,2,3"):
        assert list(parse_seed(text)) == theirs(text)


@pytest.mark.parametrize("text", ["1,2", "1,2,3,4,5", "x"])
def test_bad_seeds_are_refused(text):
    with pytest.raises(ValueError):
        parse_seed(text)


def test_model_args_parsed_as_lm_eval_parses_them():
    def _parse_model_args(text):
        return parse_key_values("--model_args", text)

    assert _parse_model_args("dtype=bfloat16,trust_remote_code=True,max_length=64,revision=main") == {
        "dtype": "bfloat16", "trust_remote_code": True, "max_length": 64, "revision": "main",
    }
    assert _parse_model_args('{"dtype": "float16", "max_length": 128}') == {"dtype": "float16", "max_length": 128}
    # a comma inside brackets stays inside the value
    assert _parse_model_args("stop=[1,2],dtype=auto") == {"stop": [1, 2], "dtype": "auto"}
    assert _parse_model_args(None) == {}


def test_lm_evals_model_hf_with_pretrained_names_the_model():
    args = {"pretrained": "some/model", "dtype": "float32"}
    assert _model_and_backend("hf", None, args) == ("some/model", "hf") and args == {"dtype": "float32"}
    assert _model_and_backend("vllm", None, {"pretrained": "m"}) == ("m", "vllm")
    assert _model_and_backend(None, None, {"pretrained": "m"}) == ("m", "hf")
    assert _model_and_backend("tiny", None, {}) == ("tiny", "hf")
    assert _model_and_backend("tiny", "vllm", {}) == ("tiny", "vllm")  # the old --backend flag


def test_output_path_as_lm_eval_reads_it(tmp_path):
    results, samples = output_files(tmp_path / "out.json", "runs/x/final", "D")
    assert results == tmp_path / "out.json" and samples == tmp_path
    results, samples = output_files(tmp_path / "results", "runs/x/final", "D")
    assert samples == tmp_path / "results" / "runs__x__final"  # lm-eval's sanitize_model_name
    assert results == samples / "results_D.json"


# --------------------------------------------------------------------------- one-line errors


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--model", "tiny", "--limit", "0"], "--limit: limit must be > 0"),
        (["--model", "tiny", "--limit", "2.5"], "--limit: limit '2.5': a count must be whole"),
        (["--model", "tiny", "--seed", "1,2"], "--seed: seed '1,2'"),
        (["--model", "tiny", "--batch_size", "big"], "--batch_size 'big'"),
        (["--model", "tiny", "--model_args", "dtype"], "--model_args 'dtype'"),
        (["--model", "tiny", "--log_samples"], "--log_samples needs --output_path"),
        (["--model", "a", "--model_args", "pretrained=b"], "--model a and --model_args pretrained=b disagree"),
        (["--run", "not-a-dir-nor-id"], "not an MLflow run id"),
        (["--model", "tiny", "--output-path", "a.json", "--out", "b.json"], "disagree"),
        # lm-eval's meanings: --model hf is a backend, --samples picks documents
        (["--model", "hf"], "--model hf is lm-eval's backend: name the model with --model_args pretrained="),
        (["--model", "vllm", "--tasks", "math500"], "--model_args pretrained="),
        (["--model", "tiny", "--samples", "32"], "--samples is lm-eval's document selection"),
        (["--model", "tiny", "--samples", '{"math500": "all"}'], "list of document indices"),
        (["--model", "tiny", "--samples", '{"aime24": [0]}', "-t", "math500"], "--samples names aime24, not among --tasks"),
        (["--model", "tiny", "--samples", '{"math500": [0]}', "--limit", "2"], "--samples and --limit exclude each other"),
        (["--model", "tiny", "--tasks", "math500", "--benchmarks", "aime24"], "--tasks math500 and --benchmarks aime24 disagree"),
        (["--model", "tiny", "--repeats", "0"], "--repeats must be >= 1"),
        (["--model", "tiny", "--num_fewshot", "-1"], "--num_fewshot must be >= 0"),
        (["--model", "tiny", "--gen_kwargs", "temperature"], "--gen_kwargs 'temperature'"),
        (["--model", "tiny", "-t", "math500,hellaswag"], "mixes our benchmarks (math500) with lm-eval tasks (hellaswag)"),
        (["--model", "tiny", "-t", "hellaswag", "--include_path", "no/such/dir"], "--include_path no/such/dir: no such directory"),
        (["--model", "tiny", "-t", "math500", "--include_path", "tasks"], "--include_path tasks adds lm-eval tasks, but --tasks names only our benchmarks"),
        (["--model", "tiny", "-t", "hellaswag", "--repeats", "4"], "--repeats 4 is for our benchmarks"),
    ],
)
def test_flag_mistakes_are_one_line_exit_2(args, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = runner.invoke(app, ["eval", *args])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.output


def test_unknown_run_id_fails_before_any_model_loads(tmp_path, monkeypatch):
    from bicc_lab.tracking.store import Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    Tracker(uri)  # an empty store
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["eval", "--run", "0" * 32, "--model", "tiny", "--tracking-uri", uri])
    assert result.exit_code == 2 and "no such run in the MLflow store" in result.output, result.output


# --------------------------------------------------------------------------- end to end


def _run(args: list[str], cwd: Path, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_eval_with_lm_eval_flags_writes_what_lm_eval_writes_and_logs_to_mlflow(
    tmp_path, untrained_tiny_dir, data_dir
):
    env = subprocess_env(tmp_path / "cache")
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    proc = _run(
        [str(BIN / "bicc-lab"), "eval", "--model", "hf",
         "--model_args", f"pretrained={untrained_tiny_dir},dtype=float32,max_length=64",
         "--benchmarks", "aime24,amc23", "--data-dir", str(data_dir), "--limit", "0.05",
         "--repeats", "2", "--max-new-tokens", "4", "--batch_size", "4", "--seed", "3",
         "--no_apply_chat_template", "--system_instruction", "Answer briefly.",
         "--log_samples", "--output_path", "results", "--tracking-uri", uri],
        tmp_path, env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    folder = tmp_path / "results" / re.sub(r"[\"<>:/|\\?*\[\]]+", "__", str(untrained_tiny_dir))
    [results_file] = folder.glob("results_*.json")
    date_id = results_file.stem[len("results_"):]
    result = json.loads(results_file.read_text())
    # --limit 0.05: ceil(0.05 * 30) = 2 AIME problems, ceil(0.05 * 40) = 2 AMC problems
    assert {name: b["n"] for name, b in result["benchmarks"].items()} == {"aime24": 2, "amc23": 2}
    config = result["config"]
    assert config["limit"] == 0.05 and config["batch_size"] == 4 and config["seed"] == 3
    # --model_args reached the model: HF's max_length is the context the runner measured
    assert config["context_length"] == 64
    assert config["model_args"] == {"dtype": "float32", "max_length": "64"}
    # --no_apply_chat_template: plain prompts (the tiny tokenizer has a template, used by default)
    assert config["chat_template"] == {"aime24": False, "amc23": False}
    # --log_samples: lm-eval's samples files, one line per problem, beside the results
    for task, bench in (("bicc_aime24", "aime24"), ("bicc_amc23", "amc23")):
        lines = (folder / f"samples_{task}_{date_id}.jsonl").read_text().splitlines()
        assert len(lines) == 2
        sample = json.loads(lines[0])
        assert sample["doc"]["benchmark"] == bench and sample["doc_id"] == 0
        prompt = sample["arguments"]["gen_args_0"]["arg_0"]
        assert prompt.startswith("Answer briefly.") and "<|im_start|>" not in prompt  # --system_instruction
        assert len(sample["filtered_resps"][0]) == 2  # k = 2 responses
        assert sample["target"] == sample["doc"]["gold"]
    # the per-problem rows keep prompts and responses too
    assert all(len(p["responses"]) == 2 and p["prompt"] for p in result["problems"])

    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("eval")
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["role"] == "eval"
    assert run.data.metrics["eval/aime24/n"] == 2 and run.data.metrics["eval/amc23/n"] == 2
    assert run.data.metrics["eval/aime24/avg_at_2"] == result["benchmarks"]["aime24"]["metrics"]["avg@2"]
    # one unit: the table, the results file and the MLflow metrics all in percent points
    assert result["score_unit"] == "percent" and run.data.tags["score_unit"] == "percent"
    assert "avg@2 (%)" in proc.stdout
    for bench in ("aime24", "amc23"):
        problems = [p for p in result["problems"] if p["benchmark"] == bench]
        points = 100 * sum(p["n_correct"] / p["k"] for p in problems) / len(problems)
        assert result["benchmarks"][bench]["metrics"]["avg@2"] == pytest.approx(points)
    assert run.data.params["eval.limit"] == "0.05"
    table = json.loads(Path(client.download_artifacts(run.info.run_id, "eval_samples.json", str(tmp_path / "dl"))).read_text())
    assert table["columns"][:3] == ["benchmark", "problem_id", "gold"] and "responses" in table["columns"]
    assert [row[0] for row in table["data"]] == ["aime24", "aime24", "amc23", "amc23"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {results_file.name, f"samples_bicc_aime24_{date_id}.jsonl", "eval_samples.json"} <= artifacts


def _history(client, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


@pytest.mark.slow
def test_train_logs_its_own_run_a_killed_train_continues_it_and_eval_run_joins_it(tmp_path, untrained_tiny_dir):
    """SIGTERM mid-training marks the run KILLED; the same command resumes it from its
    checkpoint into the same run (every step once); `eval --run DIR` adds to it."""
    shutil.copy(ROOT / "experiments" / "tiny.yaml", tmp_path / "tiny.yaml")
    env = subprocess_env(tmp_path / "cache")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sets = []
    for item in (f"model.name={untrained_tiny_dir}", "train.max_steps=12", "train.save_steps=2",
                 "train.logging_steps=1", "eval.enabled=false"):
        sets += ["--set", item]
    command = [str(BIN / "bicc-lab"), "train", "tiny.yaml", *sets, "--output-dir", "run", "--tracking-uri", uri]
    out = tmp_path / "run"
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        steps = [json.loads(x).get("step", 0) for x in (out / "metrics.jsonl").read_text().splitlines()] if (
            out / "metrics.jsonl").is_file() else []
        if steps and max(steps) >= 3:
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.05)
    first, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, first[-3000:]
    assert "Traceback" not in first
    run_id = json.loads((out / "tracking.json").read_text())["run_id"]

    from mlflow import MlflowClient

    client = MlflowClient(uri)
    killed = client.get_run(run_id)
    assert killed.info.status == "KILLED" and killed.data.tags["status"] == "KILLED"
    assert killed.data.tags["role"] == "train" and killed.data.tags["attempts"] == "1"

    again = _run(command, tmp_path, env)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"resuming MLflow run {run_id} (attempt 2)" in again.stdout
    assert re.search(r"resumed from \S*checkpoint-\d+", again.stdout), again.stdout
    finished = client.get_run(run_id)
    assert finished.info.status == "FINISHED" and finished.data.tags["attempts"] == "2"
    assert finished.data.tags["phase"] == "finished" and finished.data.tags["progress"] == "12/12"
    # the same tags as a sweep cell
    for tag in ("config_hash", "train_id", "arm", "variant", "model", "seed", "bicc_lab_version", "host", "heartbeat"):
        assert finished.data.tags.get(tag), tag
    assert _history(client, run_id, "loss") == list(range(1, 13))  # each step once across the kill
    assert _history(client, run_id, "train/wall_time_s") == [12]
    assert {"config.yaml", "train_result.json"} <= {a.path for a in client.list_artifacts(run_id)}
    [experiment] = [e for e in client.search_experiments() if e.name == "tiny-arith"]
    assert [r.info.run_id for r in client.search_runs([experiment.experiment_id])] == [run_id]

    # `eval --run DIR` evaluates DIR/final and logs into the train's run, at its last step
    evaluated = _run([str(BIN / "bicc-lab"), "eval", "--run", "run", "--benchmarks", "arith_test",
                      "--repeats", "2", "--limit", "3", "--max-new-tokens", "4"], tmp_path, env)
    assert evaluated.returncode == 0, evaluated.stdout[-3000:] + evaluated.stderr[-3000:]
    assert f"MLflow run {run_id}" in evaluated.stdout
    assert json.loads((out / "eval.json").read_text())["benchmarks"]["arith"]["n"] == 3
    assert _history(client, run_id, "eval/arith/n") == [12]
    assert client.get_run(run_id).data.metrics["eval/arith/n"] == 3
    assert {"eval.json", "eval_samples.json"} <= {a.path for a in client.list_artifacts(run_id)}


@pytest.mark.slow
def test_our_tasks_run_under_plain_lm_eval(tmp_path, untrained_tiny_dir, data_dir):
    """README: `lm-eval run --include_path <tasks> --tasks bicc_math500 ...`, offline."""
    env = subprocess_env(tmp_path / "cache")
    tasks = ROOT / "bicc_lab" / "eval" / "tasks"
    proc = _run(
        [str(BIN / "lm-eval"), "run", "--model", "hf",
         "--model_args", f"pretrained={untrained_tiny_dir},dtype=float32",
         "--include_path", str(tasks), "--tasks", "bicc_math500", "--limit", "2",
         "--metadata", json.dumps({"bicc_data_dir": str(data_dir)}),
         "--gen_kwargs", "max_gen_toks=4", "--output_path", "out", "--log_samples"],
        tmp_path, env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [results_file] = (tmp_path / "out").glob("*/results_*.json")
    results = json.loads(results_file.read_text())
    assert results["n-samples"]["bicc_math500"] == {"original": 500, "effective": 2}
    for key in ("avg_at_k,all", "pass_at_1,all", "pass_at_k,all", "maj_at_k,all"):
        assert 0.0 <= results["results"]["bicc_math500"][key] <= 1.0
    [samples_file] = results_file.parent.glob("samples_bicc_math500_*.jsonl")
    first = json.loads(samples_file.read_text().splitlines()[0])
    gold = json.loads((data_dir / "math500.jsonl").read_text().splitlines()[0])
    assert first["doc"]["problem"] == gold["problem"]  # the local file, not the hub



def test_run_directories_name_their_mlflow_run(tmp_path):
    from bicc_lab.cli.evaluate import _recorded_run
    from bicc_lab.tracking.single import write_record

    train_dir, cell_dir, plain = tmp_path / "train", tmp_path / "cell", tmp_path / "plain"
    for d in (train_dir, cell_dir, plain):
        d.mkdir()
    write_record(train_dir, "sqlite:////a/mlflow.db", "3", "a" * 32)
    (cell_dir / "cell.json").write_text(json.dumps({"tracking_uri": "sqlite:////b/mlflow.db"}))
    (cell_dir / "mlflow_run_id").write_text("b" * 32 + "\n")
    assert _recorded_run(train_dir) == {"uri": "sqlite:////a/mlflow.db", "run_id": "a" * 32}
    assert _recorded_run(cell_dir) == {"uri": "sqlite:////b/mlflow.db", "run_id": "b" * 32}
    assert _recorded_run(plain) is None


def test_a_run_id_finds_its_model_through_the_output_dir_tag(tmp_path, monkeypatch):
    from bicc_lab.cli.evaluate import _resolve_run
    from bicc_lab.tracking.single import TRAIN_ROLE, create_run
    from bicc_lab.tracking.store import Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    trained, untrained = tmp_path / "trained", tmp_path / "untrained"
    (trained / "final").mkdir(parents=True)
    untrained.mkdir()
    tracker = Tracker(uri)
    _, with_model = create_run(tracker, "x", "a", TRAIN_ROLE, {"output_dir": str(trained)})
    _, without = create_run(tracker, "x", "b", TRAIN_ROLE, {"output_dir": str(untrained)})
    assert _resolve_run(with_model, None, uri) == (trained, {"uri": uri, "run_id": with_model, "run_dir": trained})
    # with --model, the run is only where the results go
    assert _resolve_run(without, "tiny", uri) == (None, {"uri": uri, "run_id": without})
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["eval", "--run", without, "--tracking-uri", uri])
    assert result.exit_code == 2 and "names no output_dir with a final/ model; give --model" in result.output
