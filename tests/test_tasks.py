"""Training tasks: synthetic arithmetic splits, math loaders on the real files, registry."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from bicc_lab.tasks import arithmetic as A  # noqa: E402
from bicc_lab.tasks import math as M  # noqa: E402
from bicc_lab.tasks import registry as TR  # noqa: E402
from bicc_lab.tasks.data_dir import resolve_data_dir  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(
    not (SHARED_DATA / "gsm8k_train.jsonl").is_file(), reason="shared data files not present"
)


# ------------------------------------------------------------------ arithmetic


def test_problem_format_and_solution():
    assert A.make_problem(47, "+", 38) == {"prompt": "47+38=", "solution": "85"}
    assert A.make_problem(47, "-", 38) == {"prompt": "47-38=", "solution": "9"}
    assert A.make_problem(12, "*", 11) == {"prompt": "12*11=", "solution": "132"}


def test_problem_space_size():
    assert A.problem_space_size(2, "+") == 90 * 90
    assert A.problem_space_size(1, "+") == 100
    assert A.problem_space_size(1, "-") == 10 * 11 // 2
    assert A.problem_space_size(2, "+-") == 8100 + 90 * 91 // 2


def test_splits_disjoint_and_deterministic():
    s1 = A.make_splits(2, "+", n_train=3000, n_test=500, seed=0)
    s2 = A.make_splits(2, "+", n_train=3000, n_test=500, seed=0)
    assert s1 == s2
    assert len(s1.train) == 3000 and len(s1.test) == 500
    train_prompts = {r["prompt"] for r in s1.train}
    test_prompts = {r["prompt"] for r in s1.test}
    assert len(train_prompts) == 3000 and len(test_prompts) == 500  # no duplicates
    assert not train_prompts & test_prompts
    for r in s1.train[:50] + s1.test[:50]:
        a, b = r["prompt"][:-1].split("+")
        assert len(a) == len(b) == 2 and int(a) + int(b) == int(r["solution"])


def test_test_split_independent_of_train_size_and_train_extends():
    small = A.make_splits(2, "+", n_train=100, n_test=200, seed=3)
    big = A.make_splits(2, "+", n_train=2000, n_test=200, seed=3)
    assert small.test == big.test
    assert big.train[:100] == small.train
    other_seed = A.make_splits(2, "+", n_train=100, n_test=200, seed=4)
    assert other_seed.test != small.test


def test_all_remaining_problems_cover_space_exactly():
    s = A.make_splits(2, "+", n_train=None, n_test=500, seed=0)
    assert len(s.train) == 8100 - 500
    assert len({r["prompt"] for r in s.train + s.test}) == 8100


def test_subtraction_nonnegative_and_mixed_ops():
    s = A.make_splits(2, "+-", n_train=2000, n_test=100, seed=1)
    ops = {("+" if "+" in r["prompt"] else "-") for r in s.train}
    assert ops == {"+", "-"}
    for r in s.train:
        if "-" in r["prompt"]:
            a, b = map(int, r["prompt"][:-1].split("-"))
            assert a >= b and int(r["solution"]) == a - b >= 0


def test_three_digit_split_is_cheap_and_sized():
    s = A.make_splits(3, "+", n_train=5000, n_test=500, seed=0)
    assert len(s.train) == 5000 and len({r["prompt"] for r in s.train}) == 5000
    assert all(len(r["prompt"]) == 8 for r in s.test)


def test_bad_arithmetic_arguments():
    with pytest.raises(ValueError, match="digits"):
        A.make_splits(0)
    with pytest.raises(ValueError, match="ops"):
        A.make_splits(2, "/")
    with pytest.raises(ValueError, match="n_test"):
        A.make_splits(1, "+", n_test=100)
    with pytest.raises(ValueError, match="split"):
        A.arithmetic_problems("val")


def test_arithmetic_dataset_plain_and_chat():
    ds = A.build_arithmetic_dataset("test", n_test=50, n_train=10)
    assert ds.column_names == ["prompt", "solution"] and len(ds) == 50
    assert isinstance(ds[0]["prompt"], str) and ds[0]["prompt"].endswith("=")
    chat = A.build_arithmetic_dataset("test", n_test=50, n_train=10, chat=True)
    assert chat[0]["prompt"] == [{"role": "user", "content": ds[0]["prompt"]}]
    assert chat[0]["solution"] == ds[0]["solution"]


def test_registry_arithmetic_matches_module():
    rows = TR.load_task("synthetic_arithmetic", split="test", n_test=30)
    assert rows == A.arithmetic_problems("test", n_test=30)
    assert TR.reward_kind("synthetic_arithmetic") == "arithmetic"


# ------------------------------------------------------------------ data dir


def test_resolve_data_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("BICC_LAB_DATA_DIR", raising=False)
    assert resolve_data_dir() is None
    monkeypatch.setenv("BICC_LAB_DATA_DIR", str(tmp_path))
    assert resolve_data_dir() == tmp_path
    assert resolve_data_dir(tmp_path / "x") == tmp_path / "x"
    assert resolve_data_dir("~/d") == Path.home() / "d"


# ------------------------------------------------------------------ answers


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("...\n#### 72", "72"),
        ("a #### b\n#### 1,080", "1080"),
        ("#### 1,234,567 ", "1234567"),
        ("#### -3", "-3"),
        ("#### 0.5", "0.5"),
    ],
)
def test_gsm8k_answer(text, expected):
    assert M.gsm8k_answer(text) == expected


def test_strip_thousands_keeps_other_commas():
    assert M.strip_thousands("(1, 2)") == "(1, 2)"
    assert M.strip_thousands("1,5") == "1,5"
    assert M.strip_thousands("12,345.5") == "12345.5"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so $\\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
        ("\\boxed{1} then \\boxed{2}", "2"),
        ("\\fbox{7}", "7"),
        ("\\boxed{\\text{(A)}}", "\\text{(A)}"),
        ("\\boxed 5$", "5"),
        ("no box", None),
        ("\\boxed{unbalanced", None),
    ],
)
def test_last_boxed(text, expected):
    assert M.last_boxed(text) == expected


def test_answer_to_str():
    assert M.answer_to_str(27.0) == "27"
    assert M.answer_to_str(2.5) == "2.5"
    assert M.answer_to_str(70) == "70"
    assert M.answer_to_str(["3\\sqrt{2}"]) == "3\\sqrt{2}"


def test_format_prompt_plain_and_chat():
    p = M.format_prompt("What is $1+1$?")
    assert p.startswith("What is $1+1$?") and p.endswith("Put your final answer within \\boxed{}.")
    c = M.format_prompt("Q {x}", chat=True, system_prompt="S")
    assert c[0] == {"role": "system", "content": "S"}
    assert c[1]["role"] == "user" and c[1]["content"].startswith("Q {x}")


# ------------------------------------------------------------------ real files


@needs_data
def test_gsm8k_real_file():
    rows = M.load_gsm8k(data_dir=SHARED_DATA)
    assert len(rows) == 7473
    assert rows[0]["solution"] == "72"
    assert rows[0]["problem"].startswith("Natalia sold clips")
    assert rows[0]["prompt"].startswith("Natalia sold clips") and "\\boxed{}" in rows[0]["prompt"]
    assert rows[1]["solution"] == "10"
    assert rows[345]["solution"] == "1080"  # "#### 1,080" in the file
    assert not any("," in r["solution"] for r in rows)


@needs_data
def test_math_train_real_file_chat():
    rows = M.load_math_train(data_dir=SHARED_DATA, chat=True, limit=5)
    assert len(rows) == 5
    assert rows[0]["solution"] == "0"
    assert rows[0]["prompt"][0]["role"] == "user"
    assert rows[0]["prompt"][0]["content"].startswith("Let \\[f(x) = \\left\\{")
    full = M.load_math_train(data_dir=SHARED_DATA)
    # rows 5530 and 5532 have an empty \boxed{} in the original MATH solution: skipped
    assert len(full) == 7498
    src = [json.loads(line) for line in (SHARED_DATA / "math_train.jsonl").open()]
    assert [r["solution"] for r in full] == [s["answer"].strip() for s in src if s["answer"]]


@needs_data
def test_registry_named_tasks_and_env_var(monkeypatch):
    monkeypatch.setenv("BICC_LAB_DATA_DIR", str(SHARED_DATA))
    assert TR.load_task("gsm8k", limit=1)[0]["solution"] == "72"
    ds = TR.build_dataset("math_train", limit=3, chat=True)
    assert len(ds) == 3 and set(ds.column_names) >= {"prompt", "solution"}
    # a relative .jsonl path is also looked up inside the data dir
    rows = TR.load_task("aime25.jsonl", limit=2)
    assert rows[0]["solution"] == "70"  # int answer -> "70"
    rows = TR.load_task(str(SHARED_DATA / "amc23.jsonl"), limit=1)
    assert rows[0]["solution"] == "27"  # JSON 27.0 -> "27"


@needs_data
def test_jsonl_with_custom_fields():
    rows = M.load_jsonl_task(
        SHARED_DATA / "gsm8k_test.jsonl", problem_field="question", answer_format="gsm8k", limit=3
    )
    assert len(rows) == 3 and all(r["solution"] for r in rows)
    rows = M.load_jsonl_task(
        SHARED_DATA / "olympiadbench.jsonl",
        problem_field="question",
        answer_field="final_answer",
        limit=2,
    )
    assert all(isinstance(r["solution"], str) and r["solution"] for r in rows)
    rows = M.load_jsonl_task(
        SHARED_DATA / "minerva_math.jsonl", answer_field="solution", answer_format="boxed", limit=5
    )
    assert all(r["solution"] for r in rows)


# ------------------------------------------------------------------ DAPO format


def _dapo_row(problem: str, answer: str, idx: str) -> dict:
    return {
        "data_source": "math_dapo",
        "prompt": [{"role": "user", "content": M.DAPO_PREFIX + problem + M.DAPO_SUFFIX}],
        "ability": "MATH",
        "reward_model": {"ground_truth": answer, "style": "rule-lighteval/MATH_v2"},
        "extra_info": {"index": idx},
    }


def test_dapo_format(tmp_path):
    path = tmp_path / "dapo_math.jsonl"
    rows = [
        _dapo_row("Find $x$ if $2x=10$.", "5", "a"),
        _dapo_row("Find $x$ if $2x=10$.", "5", "a"),
        _dapo_row("Compute $3^3$.", "27", "b"),
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = M.load_dapo_math(data_dir=tmp_path)
    assert [r["solution"] for r in out] == ["5", "27"]  # deduplicated
    assert out[0]["problem"] == "Find $x$ if $2x=10$."
    assert "Answer:" not in out[0]["prompt"] and out[0]["prompt"].endswith("\\boxed{}.")
    assert len(M.load_dapo_math(path=path, dedup=False)) == 3
    chat = TR.load_task("dapo_math", data_dir=tmp_path, chat=True)
    assert chat[1]["prompt"][-1]["content"].startswith("Compute $3^3$.")
    # the generic JSONL loader reaches nested fields with dots
    generic = M.load_jsonl_task(
        path, problem_field="prompt", answer_field="reward_model.ground_truth"
    )
    assert generic[2]["solution"] == "27"


# ------------------------------------------------------------------ errors


def test_missing_file_data_error(tmp_path):
    with pytest.raises(M.DataError) as info:
        M.load_gsm8k(data_dir=tmp_path)
    msg = str(info.value)
    assert str(tmp_path / "gsm8k_train.jsonl") in msg and "GSM8K" in msg and "\n" not in msg
    assert isinstance(info.value, ValueError)
    with pytest.raises(M.DataError, match="nope.jsonl: file not found"):
        TR.load_task(str(tmp_path / "nope.jsonl"))


def test_malformed_jsonl_and_missing_field(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "p", "answer": "1"}\n{not json\n')
    with pytest.raises(M.DataError, match=r"bad.jsonl:2: not valid JSON"):
        TR.load_task(str(bad))
    nofield = tmp_path / "nofield.jsonl"
    nofield.write_text('{"question": "p", "answer": "1"}\n')
    with pytest.raises(M.DataError, match=r"nofield.jsonl:1: missing field 'problem'"):
        TR.load_task(str(nofield))


def test_unknown_task_name_and_offline_hub(monkeypatch):
    with pytest.raises(M.DataError, match="unknown training data"):
        TR.task_kind("not a dataset!")
    assert TR.task_kind("openai/gsm8k") == "hub"
    assert TR.task_kind("x.jsonl") == "jsonl"
    monkeypatch.delenv("BICC_LAB_DATA_DIR", raising=False)
    with pytest.raises(M.DataError) as info:
        TR.load_task("no-such-org/no-such-dataset-bicc")
    assert "no-such-org/no-such-dataset-bicc" in str(info.value) and "\n" not in str(info.value)


def test_check_task_validates_without_loading(tmp_path, monkeypatch):
    monkeypatch.delenv("BICC_LAB_DATA_DIR", raising=False)
    assert TR.check_task("synthetic_arithmetic") == "registry"
    assert TR.check_task("gsm8k") == "registry"  # no data dir: hub, not contacted
    assert TR.check_task("openai/gsm8k") == "hub"
    with pytest.raises(M.DataError, match=r"gsm8k_train.jsonl: file not found \(expected GSM8K"):
        TR.check_task("gsm8k", data_dir=tmp_path)
    with pytest.raises(M.DataError, match="missing.jsonl: file not found"):
        TR.check_task("missing.jsonl", data_dir=tmp_path)
    (tmp_path / "mine.jsonl").write_text('{"problem": "p", "answer": "1"}\n')
    assert TR.check_task("mine.jsonl", data_dir=tmp_path) == "jsonl"
    assert TR.check_task(str(tmp_path / "mine.jsonl")) == "jsonl"
    with pytest.raises(M.DataError, match="unknown training data"):
        TR.check_task("gsm8k train")
    if (SHARED_DATA / "gsm8k_train.jsonl").is_file():
        assert TR.check_task("gsm8k", data_dir=SHARED_DATA) == "registry"
