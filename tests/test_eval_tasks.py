"""The lm-eval side of bicc_lab.eval: packaged task configs, data binding, the
k-sample wiring through ``simple_evaluate``, the runner and its result file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from lm_eval.api.model import LM  # noqa: E402

from bicc_lab.eval import EvalDataError, EvalResult, data, evaluate, lmeval, runner  # noqa: E402

ALL_TASKS = {
    "bicc_math500", "bicc_aime24", "bicc_aime25", "bicc_amc23",
    "bicc_gsm8k", "bicc_minerva", "bicc_olympiad", "bicc_arith", "bicc_word_arith",
}

GOLDS = [70, 588, 16, 117, 279, 504]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A data dir holding a small aime25.jsonl (int answers, as in the real file)."""
    d = tmp_path / "data"
    d.mkdir()
    with (d / "aime25.jsonl").open("w") as fh:
        for i, g in enumerate(GOLDS):
            fh.write(json.dumps({"problem": f"Problem number {i}.", "answer": g, "id": str(i)}) + "\n")
    return d


class FakeLM(LM):
    """Answers from a script ``script(doc, j) -> str`` (j = repeat index); records
    the prompts and generation kwargs it was given."""

    def __init__(self, script, max_length: int = 32768):
        super().__init__()
        self.script = script
        self._max_length = max_length
        self.calls: list[tuple[str, dict]] = []

    @property
    def max_length(self) -> int:
        return self._max_length

    def loglikelihood(self, requests):
        raise NotImplementedError

    def loglikelihood_rolling(self, requests):
        raise NotImplementedError

    def generate_until(self, requests, disable_tqdm: bool = False):
        counts: dict[int, int] = {}
        out = []
        for req in requests:
            j = counts.get(id(req), 0)
            counts[id(req)] = j + 1
            self.calls.append((req.args[0], dict(req.args[1])))
            out.append(self.script(req.doc, j))
        return out


def boxed(x) -> str:
    return f"Some reasoning.\nThe answer is $\\boxed{{{x}}}$."


def scripted(doc, j):
    """k = 5 answers per problem with hand-computed metrics (g = gold):
    doc0: g g g g g              -> avg 1.0, pass@5 1, maj 1
    doc1: g+1 g g+1 g+2 g+3      -> avg 0.2, pass@5 1, maj 0 (g+1 has 2 votes)
    doc2: no answer x5           -> avg 0.0, pass@5 0, maj 0
    doc3: g+1 g+1 g g.0 2g/2     -> avg 0.6, pass@5 1, maj 1 (3 equivalent votes)
    """
    i, g = int(doc["problem_id"]), int(doc["gold"])
    table = {
        0: [boxed(g)] * 5,
        1: [boxed(g + 1), boxed(g), boxed(g + 1), boxed(g + 2), boxed(g + 3)],
        2: ["I am not sure."] * 5,
        3: [boxed(g + 1), boxed(g + 1), boxed(g), boxed(f"{g}.0"), boxed(f"\\frac{{{2 * g}}}{{2}}")],
    }
    return table[i][j]


# ------------------------------------------------------------- task configs


def test_task_manager_finds_all_bicc_tasks_offline():
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(lmeval.TASKS_DIR), include_defaults=False)
    assert set(tm.all_subtasks) == ALL_TASKS
    assert set(lmeval.task_names()) == ALL_TASKS
    for name in ALL_TASKS:
        assert Path(tm.task_index[name].yaml_path).parent == lmeval.TASKS_DIR
    # the package's helper (same folder, data dir passed as task metadata)
    assert set(lmeval.task_manager().all_subtasks) == ALL_TASKS
    # shipped as package data next to the code
    assert (lmeval.TASKS_DIR / "utils.py").is_file()
    assert (lmeval.TASKS_DIR / "_bicc_template.yaml").is_file()


def test_task_config_sets_repeats_and_take_first_k_together():
    cfg = lmeval.task_config("math500", k=7, generation_kwargs={"temperature": 1.0, "max_gen_toks": 99})
    assert cfg["repeats"] == 7
    (flt,) = cfg["filter_list"]
    steps = flt["filter"]
    assert steps[0] == {"function": "take_first_k", "k": 7}
    assert steps[1]["function"] is lmeval.PrescoreFilter
    assert cfg["generation_kwargs"]["temperature"] == 1.0
    assert cfg["generation_kwargs"]["max_gen_toks"] == 99
    assert "<|im_end|>" in cfg["generation_kwargs"]["until"]
    assert callable(cfg["process_results"]) and callable(cfg["custom_dataset"])
    with pytest.raises(ValueError):
        lmeval.task_config("math500", k=0)


def test_data_dir_bound_through_task_metadata(data_dir):
    tm = lmeval.task_manager(data_dir)
    task = tm.load([lmeval.task_config("aime25", k=3)])["tasks"]["bicc_aime25"]
    docs = list(task.test_docs())
    assert [d["gold"] for d in docs] == [str(g) for g in GOLDS]
    assert task.config.repeats == 3
    assert task.config.metadata["bicc_data_dir"] == str(data_dir)
    assert task.doc_to_text(docs[0]) == "Problem number 0.\n" + data.BOXED_INSTRUCTION


def test_data_dir_resolution_order(monkeypatch, tmp_path):
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path / "env"))
    assert data.resolve_data_dir(tmp_path / "explicit") == tmp_path / "explicit"
    assert data.resolve_data_dir(None) == tmp_path / "env"
    monkeypatch.delenv(data.DATA_DIR_ENV)
    assert data.resolve_data_dir(None) is None


def test_missing_data_is_one_line_naming_file_and_hub(tmp_path, monkeypatch):
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    with pytest.raises(EvalDataError) as ei:
        data.load_docs("aime24", tmp_path)
    msg = str(ei.value)
    assert "\n" not in msg
    assert "aime24.jsonl" in msg and "HuggingFaceH4/aime_2024" in msg and str(tmp_path) in msg
    assert isinstance(ei.value, ValueError)
    # the runner fails on data before it touches the (here nonexistent) model
    with pytest.raises(EvalDataError, match="amc23.jsonl.*math-ai/amc23"):
        evaluate(str(tmp_path / "no-model"), ["amc23"], data_dir=tmp_path)
    with pytest.raises(EvalDataError, match="unknown benchmark"):
        evaluate(str(tmp_path / "no-model"), ["mmlu"], data_dir=tmp_path)


def test_packaged_yaml_runs_in_plain_lm_eval(data_dir):
    """Without the runner: lm-eval + include path + metadata, default one sample."""
    import lm_eval

    lm = FakeLM(lambda doc, j: boxed(doc["gold"]) if int(doc["problem_id"]) % 2 == 0 else boxed(0))
    res = lm_eval.simple_evaluate(model=lm, tasks=["bicc_aime25"], task_manager=lmeval.task_manager(data_dir),
                                  bootstrap_iters=0)
    r = res["results"]["bicc_aime25"]
    assert r["avg_at_k,all"] == pytest.approx(0.5)
    assert r["correct,all"] == pytest.approx(0.5)
    assert len(lm.calls) == len(GOLDS)


# ------------------------------------------------------------------ runner


def test_evaluate_k_samples_hand_computed_metrics(data_dir):
    lm = FakeLM(scripted)
    res = evaluate(lm, ["aime25"], samples=5, limit=4, data_dir=data_dir, keep_responses=True, seed=3)
    b = res.benchmarks["aime25"]
    assert (b.n, b.k) == (4, 5)
    assert b.metrics == {
        "avg@5": pytest.approx((1.0 + 0.2 + 0.0 + 0.6) / 4),
        "pass@1": pytest.approx((1.0 + 0.2 + 0.0 + 0.6) / 4),
        "pass@5": pytest.approx(3 / 4),
        "maj@5": pytest.approx(2 / 4),
    }
    # lm-eval's own aggregation of process_results agrees
    assert b.lm_eval["avg_at_k,all"] == pytest.approx(0.45)
    assert b.lm_eval["maj_at_k,all"] == pytest.approx(0.5)
    rows = res.problems_for("aime25")
    assert [r["problem_id"] for r in rows] == ["0", "1", "2", "3"]
    assert [r["correct"] for r in rows] == [
        [True] * 5,
        [False, True, False, False, False],
        [False] * 5,
        [False, False, True, True, True],
    ]
    assert [r["n_correct"] for r in rows] == [5, 1, 0, 3]
    assert [r["maj_correct"] for r in rows] == [True, False, False, True]
    assert all(r["k"] == 5 and len(r["responses"]) == 5 for r in rows)
    assert rows[1]["gold"] == "588"
    # k cloned requests per problem, sampled, never with a per-request seed
    assert len(lm.calls) == 4 * 5
    prompt, kwargs = lm.calls[0]
    assert prompt.endswith(data.BOXED_INSTRUCTION)  # no chat template on this LM
    assert kwargs["do_sample"] is True and kwargs["temperature"] == 0.6 and kwargs["top_p"] == 0.95
    assert "seed" not in kwargs
    assert b.distinct_fraction == pytest.approx(0.5)  # docs 1 and 3 vary, 0 and 2 do not
    assert res.metrics()["aime25/pass@5"] == pytest.approx(0.75)
    assert res.metrics()["aime25/n"] == 4


def test_lm_eval_grades_in_a_process_pool_for_large_runs(data_dir, monkeypatch):
    """PrescoreFilter grades a task's responses in one batch, across processes
    above the threshold; process_results then reads the cache. Same numbers."""
    from bicc_lab.eval import scoring

    used = []
    real = scoring._mp_context
    monkeypatch.setattr(scoring, "_mp_context", lambda: used.append(1) or real())
    monkeypatch.setattr(scoring, "PARALLEL_THRESHOLD", 8)
    monkeypatch.setattr(scoring, "default_workers", lambda: 2)  # also on one-core machines
    res = evaluate(FakeLM(scripted), ["aime25"], samples=5, limit=4, data_dir=data_dir)
    assert used, "the process pool was not used"
    assert res.benchmarks["aime25"].metrics["avg@5"] == pytest.approx(0.45)
    assert res.benchmarks["aime25"].metrics["maj@5"] == pytest.approx(0.5)


def test_identical_samples_are_flagged(data_dir):
    lm = FakeLM(lambda doc, j: boxed(doc["gold"]))
    with pytest.warns(UserWarning, match="identical for every problem"):
        res = evaluate(lm, ["aime25"], samples=3, limit=3, data_dir=data_dir)
    assert res.benchmarks["aime25"].distinct_fraction == 0.0
    assert any("identical" in w for w in res.warnings)
    assert res.benchmarks["aime25"].metrics["avg@3"] == 1.0


def test_max_new_tokens_clamped_to_context(data_dir):
    value, msg = runner.clamp_max_new_tokens(32768, 4096)
    assert value == 3072 and "32768" in msg and "4096" in msg
    assert runner.clamp_max_new_tokens(100, 4096) == (100, None)
    assert runner.clamp_max_new_tokens(10, None) == (10, None)
    assert runner.clamp_max_new_tokens(10_000, 64)[0] == 48
    lm = FakeLM(lambda doc, j: boxed(doc["gold"]), max_length=64)
    with pytest.warns(UserWarning, match="does not fit the model context of 64"):
        res = evaluate(lm, ["aime25"], samples=1, limit=1, data_dir=data_dir, max_new_tokens=10_000)
    assert res.config["max_new_tokens"] == {"aime25": 48}
    assert lm.calls[0][1]["max_gen_toks"] == 48
    assert res.config["context_length"] == 64


def test_arith_task_reads_the_jsonl_the_runner_writes():
    def solve(doc, j):
        a, b = doc["prompt"].rstrip("=").split("+")
        return f"{int(a) + int(b)}" if j == 0 else "0"

    lm = FakeLM(solve)
    res = evaluate(lm, ["arith_test"], samples=2, limit=6, arith={"n_test": 20, "digits": 2, "ops": "+"},
                   keep_responses=True)
    b = res.benchmarks["arith"]
    assert b.n == 6 and b.metrics["avg@2"] == 0.5 and b.metrics["pass@2"] == 1.0
    assert b.source.startswith("generated")
    rows = res.problems_for("arith")
    assert all(r["prompt"].endswith("=") and "+" in r["prompt"] for r in rows)  # plain prompt
    assert lm.calls[0][1]["max_gen_toks"] == 8  # the task's own default
    from bicc_lab.tasks.arithmetic import arithmetic_problems

    expected = arithmetic_problems("test", n_test=20)[:6]
    assert [r["gold"] for r in rows] == [e["solution"] for e in expected]


def test_to_json_is_atomic_and_round_trips(tmp_path, data_dir, monkeypatch):
    res = evaluate(FakeLM(scripted), ["aime25"], samples=5, limit=4, data_dir=data_dir)
    out = tmp_path / "out" / "eval.json"
    res.to_json(out)
    back = EvalResult.from_json(out)
    assert back.benchmarks["aime25"].metrics == res.benchmarks["aime25"].metrics
    assert back.problems == res.problems
    before = out.read_text()

    def boom(*a, **k):
        raise RuntimeError("disk full")

    import bicc_lab.fileio

    # Fail after the temp file was written, before it replaces the result.
    monkeypatch.setattr(bicc_lab.fileio.os, "fsync", boom)
    with pytest.raises(RuntimeError):
        res.to_json(out)
    assert out.read_text() == before  # never a half-written result
    assert sorted(p.name for p in out.parent.iterdir()) == ["eval.json"]  # no temp file left


def test_vllm_config_path():
    args = runner.model_args_for("vllm", "/models/qwen", seed=3, max_model_len=4096,
                                 extra={"tensor_parallel_size": 2})
    assert args == {"pretrained": "/models/qwen", "dtype": "auto", "seed": 3, "gpu_memory_utilization": 0.9,
                    "max_model_len": 4096, "tensor_parallel_size": 2}
    hf = runner.model_args_for("hf", "/models/qwen", device="cpu")
    assert hf == {"pretrained": "/models/qwen", "dtype": "float32"}
    gen = runner.generation_kwargs(0.6, 0.95, None)
    assert gen == {"do_sample": True, "temperature": 0.6, "top_p": 0.95}  # no seed: repeats must differ
    assert runner.generation_kwargs(0.0, 0.95, 16) == {"do_sample": False, "temperature": 0.0, "max_gen_toks": 16}
    with pytest.raises(ValueError, match="backend"):
        runner.model_args_for("tgi", "/m")
    with pytest.raises(ValueError, match="backend"):
        evaluate("/m", ["math500"], backend="tgi")


# ------------------------------------------------------ tiny model, end to end


def _tiny_model(path: Path, max_positions: int = 512) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        GenerationConfig,
        PreTrainedTokenizerFast,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["The answer is \\boxed{42}.", "Please reason step by step."] * 10, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    cfg = Qwen2Config(vocab_size=len(fast), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=max_positions,
                      eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg)
    model.generation_config = GenerationConfig(eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id)
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path


@pytest.mark.slow
def test_tiny_qwen2_end_to_end(tmp_path):
    src = Path(__file__).resolve().parents[2] / "shared" / "data"
    ddir = Path(os.environ.get("BICC_LAB_DATA_DIR") or src)
    if not (ddir / "math500.jsonl").is_file():
        pytest.skip("math500.jsonl not found (set BICC_LAB_DATA_DIR)")
    model_dir = _tiny_model(tmp_path / "tiny")
    res = evaluate(str(model_dir), benchmarks=["math500"], samples=2, limit=2, max_new_tokens=8,
                   data_dir=ddir, batch_size=4, keep_responses=True)
    b = res.benchmarks["math500"]
    assert (b.n, b.k) == (2, 2)
    assert set(b.metrics) == {"avg@2", "pass@1", "pass@2", "maj@2"}
    assert all(0.0 <= v <= 1.0 for v in b.metrics.values())
    rows = res.problems_for("math500")
    assert [r["problem_id"] for r in rows] == ["test/precalculus/807.json", "test/intermediate_algebra/1994.json"]
    for r in rows:
        assert r["k"] == 2 and len(r["correct"]) == 2 and len(r["responses"]) == 2
        assert all(isinstance(x, bool) for x in r["correct"])
        assert r["prompt"].startswith("<|im_start|>user\n")  # the tokenizer's chat template
        assert r["prompt"].endswith("<|im_start|>assistant\n")
        assert data.BOXED_INSTRUCTION in r["prompt"]
    assert res.config["chat_template"] == {"math500": True}
    assert res.config["max_new_tokens"] == {"math500": 8}
    assert res.config["context_length"] == 512
    res.to_json(tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text())["benchmarks"]["math500"]["k"] == 2


def test_word_arith_is_the_held_out_split_of_the_real_model_task_graded_on_the_final_answer():
    from bicc_lab.eval.data import load_docs
    from bicc_lab.tasks.word_arithmetic import INSTRUCTION, word_arithmetic_problems

    docs, source = load_docs("word_arith")
    assert source == "generated" and len(docs) == 100
    assert {d["grader"] for d in docs} == {"final"}
    assert all(d["prompt"].endswith(INSTRUCTION) and d["prompt"] == d["problem"] for d in docs)
    train = {r["prompt"] for r in word_arithmetic_problems("train")}
    assert not train & {d["prompt"] for d in docs} and len(train) == 278
    first = docs[0]
    assert (first["prompt"], first["gold"]) == ("What is 9 + 4? Give the final answer as a number.", "13")
