"""Rewards: math-verify grading (gold first), threads, chat completions, arithmetic, format."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bicc_lab.tasks import grading  # noqa: E402
from bicc_lab.tasks import rewards as R  # noqa: E402


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


# ------------------------------------------------------------------ grade


@pytest.mark.parametrize(
    ("gold", "response"),
    [
        ("72", "She sold 48+24 = 72 clips. The answer is \\boxed{72}."),
        ("\\frac34", "So $p = \\boxed{0.75}$"),  # bare-LaTeX gold is parsed inside \boxed{}
        ("3\\sqrt{13}", "\\boxed{\\sqrt{117}}"),
        ("(3,\\frac{\\pi}{2})", "\\boxed{(3, \\pi/2)}"),
        ("90", "\\boxed{90^\\circ}"),
        ("1080", "\\boxed{1,080}"),
        ("\\text{(C)}", "\\boxed{C}"),
        ("72", "first I thought \\boxed{71}, but no: \\boxed{72}"),  # last box wins
        ("85", "85"),  # bare number, lenient mode (eval of the arithmetic task)
    ],
)
def test_grade_correct(gold, response):
    assert grading.grade(gold, response) is True


@pytest.mark.parametrize(
    ("gold", "response"),
    [
        ("72", "\\boxed{71}"),
        ("\\frac{1}{2}", "\\boxed{\\frac{1}{3}}"),
        ("72", ""),
        ("", "\\boxed{72}"),
        (None, "\\boxed{72}"),
        ("\\frac{1}{2}", "\\boxed{\\frac{1}{2"),  # unbalanced
        ("72", "}}}{{\\boxed{"),  # garbage
        ("5", "$\\frac{$ \\sqrt[}{ \\left( \\boxed{\\frac{}"),  # malformed LaTeX
        ("\\frac{", "\\boxed{3}"),  # malformed gold
    ],
)
def test_grade_incorrect_or_malformed_never_raises(gold, response):
    assert grading.grade(gold, response) is False


def test_grade_is_gold_first():
    # math-verify is asymmetric: a gold interval matches an inequality answer, not always
    # the other way round. We just pin that grade passes gold first by checking a case
    # that depends on it: gold "x" (symbol) must not be satisfied by "\boxed{2}".
    assert grading.grade("2", "\\boxed{2}") is True
    assert grading.grade("x", "\\boxed{2}") is False


def test_strict_format_requires_latex_answer():
    assert grading.grade("85", "85", strict_format=True) is False
    assert grading.grade("85", "\\boxed{85}", strict_format=True) is True
    assert grading.grade("85", "the final answer is $85$", strict_format=True) is True


def test_grade_accepts_chat_messages():
    assert grading.grade("7", chat("so \\boxed{7}")) is True
    assert grading.grade("7", chat("so \\boxed{8}")) is False


# ------------------------------------------------------------------ threads


def test_grade_in_thread_does_not_raise_and_is_correct():
    results: list = []
    errors: list = []

    def work():
        try:
            results.append(
                [
                    grading.grade("\\frac34", "\\boxed{0.75}"),
                    grading.grade("72", "\\boxed{71}"),
                    grading.grade("5", "\\boxed{\\frac{"),
                ]
            )
        except BaseException as exc:  # pragma: no cover - the assertion reports it
            errors.append(exc)

    t = threading.Thread(target=work)
    t.start()
    t.join(60)
    assert not errors
    assert results == [[True, False, False]]


def test_accuracy_reward_from_thread_pool():
    completions = [chat("\\boxed{72}"), chat("\\boxed{70}"), chat("no answer")] * 4
    solution = ["72", "72", "72"] * 4
    with ThreadPoolExecutor(max_workers=4) as pool:
        futs = [pool.submit(R.accuracy_reward, None, completions, solution) for _ in range(4)]
        outs = [f.result(timeout=120) for f in futs]
    assert all(o == [1.0, 0.0, 0.0] * 4 for o in outs)


def test_bounded_run_times_out_off_main_thread():
    import time

    out: list = []

    def slow():
        time.sleep(2)
        return True

    t = threading.Thread(target=lambda: out.append(grading._run_bounded(slow, 0.1)))
    t.start()
    t.join(10)
    assert out == [False]


# ------------------------------------------------------------------ TRL signature


def test_accuracy_reward_plain_and_chat():
    prompts = ["Q1", "Q2", "Q3"]
    sols = ["\\frac{1}{2}", "4", "4"]
    plain = ["\\boxed{0.5}", "It is \\boxed{5}", "4"]
    assert R.accuracy_reward(prompts, plain, sols) == [1.0, 0.0, 0.0]  # bare "4": strict format
    assert R.accuracy_reward(prompts, [chat(c) for c in plain], sols) == [1.0, 0.0, 0.0]
    assert R.accuracy_reward(prompts, plain, sols, strict_format=False) == [1.0, 0.0, 1.0]
    # extra dataset columns arrive as kwargs (TRL passes them)
    assert R.accuracy_reward(
        prompts=prompts, completions=plain, solution=sols, problem=["a"] * 3, trainer_state=None
    ) == [1.0, 0.0, 0.0]


def test_accuracy_reward_length_mismatch():
    with pytest.raises(ValueError, match="2 completions but 1 solutions"):
        R.accuracy_reward(None, ["a", "b"], ["1"])


@pytest.mark.parametrize(
    ("completion", "gold", "expected"),
    [
        ("85", "85", 1.0),
        ("85<|im_end|>", "85", 1.0),
        (" 85\n", "85", 1.0),
        ("85 because 47+38", "85", 1.0),
        ("86", "85", 0.0),
        ("850", "85", 0.0),
        ("8", "85", 0.0),
        ("85.5", "85", 0.0),
        ("", "85", 0.0),
        ("eighty-five", "85", 0.0),
        ("-9", "-9", 1.0),
        ("1,080", "1080", 1.0),
        ("12", "not a number", 0.0),
    ],
)
def test_arithmetic_reward(completion, gold, expected):
    assert R.arithmetic_reward(["p"], [completion], [gold]) == [expected]
    assert R.arithmetic_reward(["p"], [chat(completion)], [gold]) == [expected]


def test_format_reward():
    comps = ["\\boxed{3}", "\\boxed{}", "3", "\\boxed{3", chat("ok \\boxed{x}")]
    assert R.format_reward(None, comps) == [1.0, 0.0, 0.0, 0.0, 1.0]


def test_completion_text_shapes():
    assert grading.completion_text("x") == "x"
    assert grading.completion_text(chat("y")) == "y"
    assert grading.completion_text({"role": "assistant", "content": "z"}) == "z"
    parts = [
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
        }
    ]
    assert grading.completion_text(parts) == "ab"
    assert grading.completion_text(None) == ""


def test_get_reward_function():
    assert R.get_reward_function("arithmetic") is R.arithmetic_reward
    assert R.get_reward_function("accuracy") is R.accuracy_reward
    with pytest.raises(ValueError, match="unknown reward"):
        R.get_reward_function("nope")
