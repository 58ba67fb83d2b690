"""Grading and sampling metrics of bicc_lab.eval: values, not just "it runs"."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from math import comb
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from bicc_lab.eval import data, lmeval, metrics, scoring  # noqa: E402
from bicc_lab.tasks import grading, rewards  # noqa: E402

BENCH_FILES = ["math500", "aime24", "aime25", "amc23", "gsm8k", "minerva", "olympiad"]


def _data_dir() -> Path | None:
    env = os.environ.get("BICC_LAB_DATA_DIR")
    cands = [Path(env)] if env else []
    cands.append(Path(__file__).resolve().parents[2] / "shared" / "data")
    for c in cands:
        if (c / "math500.jsonl").is_file():
            return c
    return None


DATA_DIR = _data_dir()
needs_data = pytest.mark.skipif(DATA_DIR is None, reason="benchmark JSONL files not found (set BICC_LAB_DATA_DIR)")


def _rows(name: str) -> list[dict]:
    assert DATA_DIR is not None
    return data.read_jsonl(DATA_DIR / data.get_benchmark(name).filename)


# ------------------------------------------------------------ gold answers


def test_normalize_gold_quirks():
    assert grading.normalize_gold("025") == "25"
    assert grading.normalize_gold(70) == "70"
    assert grading.normalize_gold(27.0) == "27"
    assert grading.normalize_gold(-1.0) == "-1"
    assert grading.normalize_gold(0.5) == "0.5"
    assert grading.normalize_gold("27.0") == "27"
    assert grading.normalize_gold("1,234") == "1234"
    assert grading.normalize_gold("$\\frac{1}{2}$") == "\\frac{1}{2}"
    assert grading.normalize_gold(["$\\frac{1}{2}$"]) == "\\frac{1}{2}"
    assert grading.normalize_gold(["2", "3"]) == "2, 3"
    assert grading.normalize_gold("0") == "0"
    with pytest.raises(ValueError):
        grading.normalize_gold(None)


def test_dataset_specific_gold_fields():
    b = data.get_benchmark
    assert data.gold_answer(b("aime24"), {"problem": "p", "answer": "025"}) == "25"
    assert data.gold_answer(b("aime25"), {"problem": "p", "answer": 70}) == "70"
    assert data.gold_answer(b("amc23"), {"problem": "p", "answer": 27.0}) == "27"
    gsm = {"question": "q", "answer": "He pays 2*500=<<2*500=1000>>1000\n#### 1,000"}
    assert data.gold_answer(b("gsm8k"), gsm) == "1000"
    minerva = {"problem": "p", "solution": "First \\boxed{1} then the final \\boxed{\\frac{3}{4}}."}
    assert data.gold_answer(b("minerva"), minerva) == "\\frac{3}{4}"
    olymp = {"question": "q", "final_answer": ["$69$,$84$"], "is_multiple_answer": True}
    assert data.gold_answer(b("olympiad"), olymp) == "69, 84"
    olymp1 = {"question": "q", "final_answer": ["$\\frac{1}{2}$"], "is_multiple_answer": False}
    assert data.gold_answer(b("olympiad"), olymp1) == "\\frac{1}{2}"
    assert data.gold_answer(b("math500"), {"problem": "p", "answer": "\\text{(C)}"}) == "\\text{(C)}"
    assert data.gold_answer(b("arith"), {"prompt": "47+38=", "solution": "85"}) == "85"


@needs_data
def test_real_files_answer_quirks():
    aime24 = {d["problem_id"]: d for d in data.load_docs("aime24", DATA_DIR)[0]}
    raw = _rows("aime24")
    padded = [r for r in raw if str(r["answer"]).startswith("0")]
    assert padded, "aime24 has zero-padded answers"
    r = padded[0]
    assert aime24[str(r["id"])]["gold"] == str(int(r["answer"]))
    amc = data.load_docs("amc23", DATA_DIR)[0]
    assert all("." not in d["gold"] for d in amc if float(d["gold"]).is_integer())
    gsm = data.load_docs("gsm8k", DATA_DIR)[0]
    assert not any("," in d["gold"] for d in gsm)
    olymp_raw = _rows("olympiad")
    olymp = data.load_docs("olympiad", DATA_DIR)[0]
    multi = [(r, d) for r, d in zip(olymp_raw, olymp, strict=True) if r["is_multiple_answer"]]
    assert len(multi) == 94
    by_raw = {r["final_answer"][0]: d["gold"] for r, d in zip(olymp_raw, olymp, strict=True)}
    assert by_raw["$69$,$84$"] == "69, 84"
    assert by_raw["$(-\\infty, 0) \\cup\\{1\\}$."] == "(-\\infty, 0) \\cup\\{1\\}"
    assert by_raw["$221,$8$"] == "221,8"
    # "$" is left only inside prose answers ("$f(x)=a x+b$, where $b$ is ...")
    assert all(" where " in d["gold"] for d in olymp if "$" in d["gold"])


@needs_data
@pytest.mark.parametrize("name", BENCH_FILES)
def test_row_counts_and_doc_shape(name):
    docs, source = data.load_docs(name, DATA_DIR)
    assert len(docs) == len(_rows(name))
    assert source.endswith(data.get_benchmark(name).filename)
    d = docs[0]
    assert set(d) == {"benchmark", "problem_id", "problem", "prompt", "gold", "grader"}
    assert d["prompt"].endswith(data.BOXED_INSTRUCTION)
    assert len({x["problem_id"] for x in docs}) == len(docs)


@needs_data
def test_gold_fed_back_scores_100_percent_on_every_file():
    """Every gold answer of every benchmark file, fed back as ``\\boxed{answer}``
    (in the raw form the file stores it where that is what a model would write),
    grades correct. Graded in a process pool."""
    pairs, where = [], []
    for name in BENCH_FILES:
        b = data.get_benchmark(name)
        for i, row in enumerate(_rows(name)):
            gold = data.gold_answer(b, row)
            raw = data.raw_gold(b, row)
            if name == "olympiad":
                shown = raw[0].replace("$", "")  # "$69$,$84$" -> "69,84"
            elif name == "gsm8k":
                shown = row["answer"].rsplit("####", 1)[1].strip()  # keeps "1,000"
            else:
                shown = str(raw)  # "025", 27.0, ...
            pairs.append((gold, f"Reasoning...\nThe final answer is $\\boxed{{{shown}}}$."))
            where.append((name, i, gold, shown))
    assert len(pairs) == 500 + 30 + 30 + 40 + 1319 + 272 + 675
    graded = scoring.score_many(pairs, workers=2, parallel_threshold=256)
    bad = [w for w, g in zip(where, graded, strict=True) if not g.correct]
    assert bad == []


@needs_data
def test_gold_scores_with_math_verify_alone_on_aime_amc():
    # the string fallback is not what makes these pass: math-verify alone does
    for name in ("aime24", "aime25", "amc23"):
        b = data.get_benchmark(name)
        for row in _rows(name):
            gold = data.gold_answer(b, row)
            resp = f"\\boxed{{{row['answer']}}}"
            assert grading.verify(grading.parse_gold(gold), grading.parse_response(resp)), (name, row["answer"])


# --------------------------------------------------------- human grading

EQUIVALENT = [
    ("\\frac{3}{4}", "The answer is \\boxed{0.75}."),
    ("0.75", "so $\\boxed{\\dfrac{3}{4}}$"),
    ("0.75", "\\boxed{\\tfrac34}"),
    ("90", "\\boxed{90^\\circ}"),
    ("90^\\circ", "\\boxed{90}"),
    ("(-\\infty, 2]", "\\boxed{(-\\infty,2]}"),
    ("[1, 3) \\cup (5, \\infty)", "\\boxed{[1,3)\\cup(5,\\infty)}"),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "\\boxed{(3,\\pi/2)}"),
    ("025", "\\boxed{25}"),
    (25, "\\boxed{025}"),
    (27.0, "\\boxed{27}"),
    ("27.0", "\\boxed{27}"),
    (["$69$,$84$"], "\\boxed{69, 84}"),
    (["$(1,8,19), (2,7,13), (4,5,7)$"], "\\boxed{(1,8,19), (2,7,13), (4,5,7)}"),
    ("1000", "\\boxed{1,000}"),
    ("\\sqrt{117}", "\\boxed{3\\sqrt{13}}"),
    ("\\text{Evelyn}", "\\boxed{Evelyn}"),
    ("\\text{(C)}", "\\boxed{C}"),
    ("x^2+1", "\\boxed{1+x^2}"),
    ("6", "First \\boxed{5}, no wait: \\boxed{6}"),
]

WRONG = [
    ("5", "\\boxed{6}"),
    ("\\frac{3}{4}", "\\boxed{0.7}"),
    ("90", "\\boxed{180}"),
    ("(-\\infty, 2]", "\\boxed{(-\\infty,2)}"),
    ("(3, \\frac{\\pi}{2})", "\\boxed{(\\frac{\\pi}{2}, 3)}"),
    (27.0, "\\boxed{28}"),
    (["$69$,$84$"], "\\boxed{69}"),
    ("\\text{(C)}", "\\boxed{D}"),
    ("5", "I don't know."),
    ("5", "First \\boxed{5}, no wait: \\boxed{6}"),
]

MALFORMED = ["\\frac{", "\\boxed{", "}}}{{\\boxed{5", "\\boxed{\\frac{1}{2}", "$$$", "", None,
             "{" * 500 + "\\boxed{5", "\\boxed{5}}}}}" + "\\left(" * 50, "\\sqrt[", "\\boxed{\\text{"]


@pytest.mark.parametrize(("gold", "response"), EQUIVALENT)
def test_equivalent_forms_score_1(gold, response):
    assert grading.grade(gold, response) is True


@pytest.mark.parametrize(("gold", "response"), WRONG)
def test_wrong_answers_score_0(gold, response):
    assert grading.grade(gold, response) is False


@pytest.mark.parametrize("response", MALFORMED)
def test_malformed_latex_never_crashes(response):
    # never raises; a wrong answer stays wrong; what a lenient parser recovers
    # from the rest (e.g. "\\boxed{\\frac{1}{2}" -> 1/2) is allowed either way
    assert grading.grade("7", response) is False
    assert isinstance(grading.grade("\\frac{1}{2}", response), bool)
    assert isinstance(grading.grade("5", response, grader="int"), bool)
    grading.extract_answer(response or "")


def test_last_boxed():
    assert grading.last_boxed("a \\boxed{1} b \\boxed{\\frac{1}{2}} c") == "\\frac{1}{2}"
    assert grading.last_boxed("\\fbox{7}") == "7"
    assert grading.last_boxed("\\boxed 5$") == "5"
    assert grading.last_boxed("\\boxed{2} and \\boxed{") == "2"  # unbalanced last box: earlier one
    assert grading.last_boxed("no box") is None


def test_int_grader_for_arithmetic():
    assert grading.grade("85", "85<|im_end|>", grader="int")
    assert grading.grade("85", " 85", grader="int")
    assert not grading.grade("85", "8 5", grader="int")
    assert not grading.grade("85", "85.5", grader="int")
    assert not grading.grade("85", "x85", grader="int")
    with pytest.raises(ValueError):
        grading.grade("85", "85", grader="nope")


def test_grading_off_the_main_thread():
    """math-verify's signal-based timeouts raise off the main thread; ours are
    switched off there, so grading from worker threads works and agrees."""
    cases = EQUIVALENT[:8] + WRONG[:4]
    expected = [True] * 8 + [False] * 4
    seen_threads = set()

    def run(case):
        seen_threads.add(threading.current_thread() is threading.main_thread())
        return grading.grade(*case)

    with ThreadPoolExecutor(max_workers=4) as ex:
        got = list(ex.map(run, cases))
    assert got == expected
    assert seen_threads == {False}
    t_res = []
    t = threading.Thread(target=lambda: t_res.append(grading.grade("\\frac{3}{4}", "\\boxed{0.75}")))
    t.start()
    t.join()
    assert t_res == [True]


def test_score_many_parallel_equals_sequential():
    pairs = [(g, r) for g, r in EQUIVALENT + WRONG] * 3
    seq = scoring.score_many(pairs, workers=1)
    par = scoring.score_many(pairs, workers=2, parallel_threshold=1)
    assert [g.correct for g in seq] == [g.correct for g in par]
    assert [g.correct for g in seq] == ([True] * len(EQUIVALENT) + [False] * len(WRONG)) * 3


def test_score_many_cache_feeds_cached_grade():
    scoring.clear_cache()
    scoring.score_many([("7", "\\boxed{7}")], cache=True)
    assert ("math", "7", "\\boxed{7}") in scoring._CACHE
    assert scoring.cached_grade("7", "\\boxed{7}").correct
    scoring.clear_cache()
    assert not scoring._CACHE


# ------------------------------------- training reward == evaluation grade

AGREEMENT = (
    EQUIVALENT
    + WRONG
    + [(gold, resp) for gold in ("7", "\\frac{1}{2}", "5") for resp in MALFORMED]
    + [("85", "85"), ("85", "85<|im_end|>"), ("Evelyn", "the final answer is $\\text{Evelyn}$"),
       ("72", ""), ("", "\\boxed{72}"), (None, "\\boxed{72}"), ("\\frac{", "\\boxed{3}")]
)


def test_training_reward_agrees_with_eval_grade():
    """The reward a trainer sees and the grade evaluation reports are the same
    function of (gold, response): sequential and process-parallel eval scoring,
    rewards computed on the main thread and from reward worker threads."""
    golds = [g for g, _ in AGREEMENT]
    resps = [r for _, r in AGREEMENT]
    eval_seq = [float(g.correct) for g in scoring.score_many(AGREEMENT, workers=1)]
    eval_par = [float(g.correct) for g in scoring.score_many(AGREEMENT, workers=2, parallel_threshold=1)]
    assert eval_par == eval_seq
    assert sum(eval_seq) >= len(EQUIVALENT)  # not an all-zero agreement
    assert rewards.accuracy_reward(None, resps, golds, strict_format=False) == eval_seq
    chats = [[{"role": "assistant", "content": r}] if isinstance(r, str) else r for r in resps]
    with ThreadPoolExecutor(max_workers=2) as ex:
        threaded = ex.submit(rewards.accuracy_reward, None, chats, golds, strict_format=False).result()
    assert threaded == eval_seq
    # the default (strict format) reward only adds a format requirement: on
    # boxed answers it is the evaluation grade
    boxed = [i for i, r in enumerate(resps) if isinstance(r, str) and grading.last_boxed(r) is not None]
    strict = rewards.accuracy_reward(None, [resps[i] for i in boxed], [golds[i] for i in boxed])
    assert strict == [eval_seq[i] for i in boxed]
    # the arithmetic reward is the eval's "int" grader
    int_pairs = [("85", "85<|im_end|>"), ("85", "8 5"), ("85", "85.5"), ("-9", "-9"), ("1080", "1,080"),
                 ("85", None), (None, "85"), ("25", "025 apples")]
    int_eval = [float(g.correct) for g in scoring.score_many(int_pairs, grader="int", workers=1)]
    assert rewards.arithmetic_reward(None, [r for _, r in int_pairs], [g for g, _ in int_pairs]) == int_eval
    assert int_eval == [1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0]


# ----------------------------------------------------------------- metrics


def test_pass_at_k_hand_values():
    assert metrics.pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert metrics.pass_at_k(4, 1, 2) == pytest.approx(0.5)
    assert metrics.pass_at_k(4, 1, 4) == pytest.approx(1.0)
    assert metrics.pass_at_k(4, 0, 4) == 0.0
    assert metrics.pass_at_k(4, 2, 2) == pytest.approx(1 - 1 / 6)  # 1 - C(2,2)/C(4,2)
    assert metrics.pass_at_k(10, 3, 5) == pytest.approx(1 - comb(7, 5) / comb(10, 5))
    assert metrics.pass_at_k(32, 8, 1) == pytest.approx(8 / 32)  # pass@1 == c/n
    with pytest.raises(ValueError):
        metrics.pass_at_k(4, 1, 5)
    with pytest.raises(ValueError):
        metrics.pass_at_k(4, 5, 1)


def test_avg_and_maj_hand_values():
    assert metrics.avg_at_k([True, False, False, False]) == 0.25
    # plain string voting: "3" wins 2:1
    assert metrics.maj_at_k(["3", "1/2", "3"], [False, True, False]) == 0.0
    # no answers: no vote
    assert metrics.maj_at_k([None, None], [False, False]) == 0.0
    # tie: the answer seen first wins
    assert metrics.majority_index(["a", "b", "b", "a"]) == 0
    assert metrics.majority_index([None, "b", "a"]) == 1


def test_problem_metrics_and_aggregate():
    pm = metrics.problem_metrics([True, False, False, False], ["1", "2", "2", "3"])
    assert pm == {"avg@4": 0.25, "pass@1": 0.25, "pass@4": 1.0, "maj@4": 0.0}
    rows = [
        {"correct": [True, False, False, False], "maj_correct": False},
        {"correct": [True, True, True, True], "maj_correct": True},
    ]
    agg = metrics.aggregate(rows)
    assert agg == {"n": 2, "avg@4": pytest.approx(0.625), "pass@1": pytest.approx(0.625),
                   "pass@4": 1.0, "maj@4": 0.5}
    with pytest.raises(ValueError):
        metrics.aggregate([{"correct": [True]}, {"correct": [True, False]}])


def test_majority_vote_uses_answer_equivalence():
    """0.5, 1/2 and \\frac{1}{2} are one answer (3 votes) against "3" (2 votes)."""
    doc = {"gold": "\\frac{1}{2}", "grader": "math"}
    resps = ["\\boxed{3}", "\\boxed{0.5}", "\\boxed{1/2}", "\\boxed{3}", "\\boxed{\\frac{1}{2}}"]
    scoring.clear_cache()
    out = lmeval.process_results(doc, [resps])
    assert out["correct"] == [0, 1, 1, 0, 1]
    assert out["avg_at_k"] == pytest.approx(0.6)
    assert out["pass_at_1"] == pytest.approx(0.6)
    assert out["pass_at_k"] == 1.0
    assert out["maj_at_k"] == 1.0
    # by plain strings "\\boxed{3}" would win
    answers = [grading.extract_answer(r) for r in resps]
    assert metrics.maj_at_k(answers, out["correct"]) == 0.0


def test_process_results_without_take_first_k_sees_one_sample():
    # a bare string (lm-eval's default take_first filter) is one sample
    out = lmeval.process_results({"gold": "2", "grader": "math"}, ["\\boxed{2}"])
    assert out["correct"] == [1]
    assert lmeval.mean_of_lists([[1, 0], [1, 1]]) == 0.75


# ------------------------------------------- agreement with lm-eval's minerva


@needs_data
def test_agrees_with_lm_eval_minerva_math_verify():
    """lm-eval's ``minerva_math`` ``math_verify`` metric (the one ``minerva_math500``
    reports, gold = the full MATH solution) and our grade agree on the same
    generations over MATH500 docs read from the local file."""
    mu = pytest.importorskip("lm_eval.tasks.minerva_math.utils")
    b = data.get_benchmark("math500")
    rows = _rows("math500")[::20]  # 25 problems keep it fast
    n = 0
    agree_pos = 0
    for i, r in enumerate(rows):
        other = rows[(i + 3) % len(rows)]["answer"]
        gens = [
            f"We compute carefully.\nThe answer is $\\boxed{{{r['answer']}}}$.",
            f"So the result is \\boxed{{{other}}}.",
            f"Final Answer: The final answer is ${r['answer']}$. I hope it is correct.",
        ]
        for g in gens:
            theirs = bool(mu.process_results(r, [g])["math_verify"])
            ours = grading.grade(data.gold_answer(b, r), g)
            assert theirs == ours, (r["unique_id"], r["answer"], g)
            n += 1
            agree_pos += ours
    assert n == 75
    assert agree_pos >= 50  # the two correct forms of each problem (not all-False agreement)
    # hand-written forms, with a MATH-style gold solution
    for gold, resp in EQUIVALENT[:8] + WRONG[:5]:
        g = grading.normalize_gold(gold)
        doc = {"solution": f"Thus the answer is $\\boxed{{{g}}}$.", "answer": g}
        assert bool(mu.process_results(doc, [resp])["math_verify"]) == grading.grade(gold, resp), (gold, resp)
