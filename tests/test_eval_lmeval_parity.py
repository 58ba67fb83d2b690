"""`bicc-lab eval` and plain `lm-eval run` given the same flags give the same per-sample outputs.

A user who already runs lm-eval types its command line at `bicc-lab eval`: the flags must
mean the same (tasks, model/model_args, gen_kwargs, limit, seeds, batch size, log_samples),
on our benchmarks (graded by bicc-lab) and on any other lm-eval task (handed to lm-eval).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import subprocess_env

from bicc_lab.cli.lmeval_flags import normalize_args, parse_chat_template

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TASKS = ROOT / "bicc_lab" / "eval" / "tasks"

KNOWN = {"--tasks", "-t", "--model_args", "-a", "--gen_kwargs", "--apply_chat_template", "--output_path", "--data_dir"}


def test_argument_shapes_of_lm_eval_are_read_as_lm_eval_reads_them():
    # nargs="+" flags join their words; the dash spelling is the underscore one
    assert normalize_args(["--tasks", "math500", "aime24", "--model-args", "a=1", "b=2", "-t", "x", "y"], KNOWN) == [
        "--tasks", "math500,aime24", "--model_args", "a=1,b=2", "-t", "x,y",
    ]
    assert normalize_args(["--output-path=o.json", "--data-dir", "d"], KNOWN) == ["--output_path=o.json", "--data_dir", "d"]
    # --apply_chat_template alone is "the default template"; with a word, that template
    assert normalize_args(["--apply_chat_template", "--tasks", "a"], KNOWN) == ["--apply_chat_template", "true", "--tasks", "a"]
    assert normalize_args(["--apply_chat_template"], KNOWN) == ["--apply_chat_template", "true"]
    assert normalize_args(["--apply_chat_template", "tool_use"], KNOWN) == ["--apply_chat_template", "tool_use"]
    assert [parse_chat_template(t) for t in (None, "true", "False", "tool_use")] == [False, True, False, "tool_use"]
    # unknown flags are left for Click to refuse
    assert normalize_args(["--no-such-flag"], KNOWN) == ["--no-such-flag"]


def _run(args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    return proc


def _samples(folder: Path, task: str) -> list[dict]:
    [path] = folder.glob(f"*/samples_{task}_*.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{key: row[key] for key in ("doc_id", "arguments", "resps", "filtered_resps", "target")} for row in rows]


def test_our_benchmark_through_bicc_lab_eval_and_plain_lm_eval_gives_the_same_samples(
    tmp_path, untrained_tiny_dir, data_dir
):
    env = subprocess_env(tmp_path / "cache")
    # Sampled (the task's temperature 0.6), so that equal outputs also mean equal seeds.
    flags = ["--model", "hf", "--model_args", f"pretrained={untrained_tiny_dir}", "dtype=float32",
             "--tasks", "bicc_math500", "--limit", "2", "--gen_kwargs", "max_gen_toks=6",
             "--batch_size", "2", "--log_samples"]
    _run([str(BIN / "bicc-lab"), "eval", *flags, "--output_path", "ours", "--data_dir", str(data_dir)], tmp_path, env)
    _run([sys.executable, "-m", "lm_eval", "run", *flags, "--output_path", "theirs", "--include_path", str(TASKS),
          "--metadata", json.dumps({"bicc_data_dir": str(data_dir)})], tmp_path, env)
    ours, theirs = _samples(tmp_path / "ours", "bicc_math500"), _samples(tmp_path / "theirs", "bicc_math500")
    assert [s["doc_id"] for s in ours] == [0, 1]
    assert all(len(s["resps"][0][0]) > 0 for s in ours)  # something was generated
    assert ours == theirs


def test_any_lm_eval_task_goes_through_lm_eval_with_the_same_flags(tmp_path, untrained_tiny_dir):
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"q": f"{a}+{a}", "a": str(2 * a)}) + "\n" for a in range(5)))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "tiny_qa.yaml").write_text(
        "task: tiny_qa\ndataset_path: json\n"
        f"dataset_kwargs: {{data_files: {{test: {data}}}}}\n"
        "test_split: test\noutput_type: generate_until\n"
        'doc_to_text: "{{q}}="\ndoc_to_target: "{{a}}"\n'
        "generation_kwargs: {until: [\"\\n\"], do_sample: false, max_gen_toks: 4}\n"
        "metric_list: [{metric: exact_match, aggregation: mean, higher_is_better: true}]\n"
        "metadata: {version: 0}\n"
    )
    env = subprocess_env(tmp_path / "cache")
    flags = ["--model_args", f"pretrained={untrained_tiny_dir},dtype=float32", "--tasks", "tiny_qa",
             "--include_path", str(tasks), "--samples", '{"tiny_qa": [1, 3]}', "--log_samples"]
    proc = _run([str(BIN / "bicc-lab"), "eval", "--model", "hf", *flags, "--output_path", "ours"], tmp_path, env)
    assert "exact_match" in proc.stdout  # lm-eval's own results table
    _run([sys.executable, "-m", "lm_eval", "run", "--model", "hf", *flags, "--output_path", "theirs"], tmp_path, env)
    ours = _samples(tmp_path / "ours", "tiny_qa")
    assert [s["doc_id"] for s in ours] == [1, 3]  # --samples picked documents 1 and 3
    assert ours == _samples(tmp_path / "theirs", "tiny_qa")


def test_an_unknown_task_is_one_line_before_any_model_loads(tmp_path):
    env = subprocess_env(tmp_path / "cache")
    proc = subprocess.run(
        [str(BIN / "bicc-lab"), "eval", "--model", "tiny", "--tasks", "no_such_task_xyz"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "unknown task 'no_such_task_xyz'" in lines[0] and "math500" in lines[0]
    assert not (tmp_path / "cache" / "tiny").exists()  # the tiny model was never built


@pytest.mark.parametrize("spelling", ["--max-new-tokens", "--max_new_tokens"])
def test_both_spellings_reach_the_same_option(spelling):
    from typer.main import get_command

    from bicc_lab.cli.main import app

    command = get_command(app).commands["eval"]
    ctx = command.make_context("eval", [spelling, "7", "--model", "tiny"])
    assert ctx.params["max_new_tokens"] == 7


def test_a_first_eval_of_a_tiny_model_is_one_sample_per_problem_and_short(tmp_path, data_dir):
    """The issue's `eval --model tiny --tasks math500 --limit 3` took 6.5 minutes (32 samples of
    up to 768 tokens each): one sample per problem and the tiny models' 32-token budget."""
    env = subprocess_env(tmp_path / "cache")
    _run([str(BIN / "bicc-lab"), "eval", "--model", "tiny:untrained", "--tasks", "math500", "--limit", "3",
          "--data_dir", str(data_dir), "--output_path", "r.json"], tmp_path, env)
    result = json.loads((tmp_path / "r.json").read_text())
    assert (result["benchmarks"]["math500"]["n"], result["benchmarks"]["math500"]["k"]) == (3, 1)
    assert result["config"]["max_new_tokens"] == {"math500": 32}
    assert result["config"]["chat_template"] == {"math500": False}  # lm-eval's default: off


def test_an_lm_eval_task_gets_the_same_flags_and_our_sampling_flags_as_gen_kwargs(monkeypatch):
    from typer.testing import CliRunner

    from bicc_lab.cli import lmeval_delegate
    from bicc_lab.cli.main import app

    seen = {}
    monkeypatch.setattr(lmeval_delegate, "run_lm_eval", lambda **kwargs: seen.update(kwargs))
    result = CliRunner().invoke(app, [
        "eval", "--model", "hf", "--model-args", "pretrained=some/model", "dtype=bfloat16", "-t", "hellaswag", "arc_easy",
        "--temperature", "0", "--gen_kwargs", "max_gen_toks=16", "--num_fewshot", "5", "--apply_chat_template",
        "--samples", '{"hellaswag": [1, 2]}', "--seed", "7", "--batch-size", "auto", "--trust_remote_code",
    ])
    assert result.exit_code == 0, result.output
    argv = lmeval_delegate.lm_eval_argv(model_path="some/model", **{k: v for k, v in seen.items() if k != "model"})
    assert argv[:5] == ["run", "--model", "hf", "--model_args", json.dumps(
        {"pretrained": "some/model", "dtype": "bfloat16", "trust_remote_code": True})]
    pairs = dict(zip(argv[5::1], argv[6::1], strict=False))
    assert pairs["--tasks"] == "hellaswag,arc_easy" and pairs["--num_fewshot"] == "5" and pairs["--seed"] == "7"
    assert json.loads(pairs["--gen_kwargs"]) == {"temperature": 0.0, "max_gen_toks": 16}
    assert pairs["--samples"] == '{"hellaswag": [1, 2]}' and pairs["--batch_size"] == "auto"
    assert "--apply_chat_template" in argv and "--trust_remote_code" in argv and "--log_samples" not in argv
