"""Evaluation: lm-eval task configs, data resolution, math-verify scoring, avg@k / pass@k / maj@k.

Importing this package is cheap: lm_eval, torch and math_verify are imported
only when evaluation or grading actually runs.
"""

from bicc_lab.eval.data import (
    BENCHMARKS,
    Benchmark,
    EvalDataError,
    benchmark_names,
    get_benchmark,
    gold_answer,
    load_docs,
)
from bicc_lab.eval.metrics import aggregate, avg_at_k, maj_at_k, pass_at_k, problem_metrics
from bicc_lab.eval.runner import BenchmarkResult, EvalResult, clamp_max_new_tokens, evaluate
from bicc_lab.eval.scoring import score_many
from bicc_lab.tasks.data_dir import resolve_data_dir
from bicc_lab.tasks.grading import grade, grade_full, normalize_gold

__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "BenchmarkResult",
    "EvalDataError",
    "EvalResult",
    "aggregate",
    "avg_at_k",
    "benchmark_names",
    "clamp_max_new_tokens",
    "evaluate",
    "get_benchmark",
    "gold_answer",
    "grade",
    "grade_full",
    "load_docs",
    "maj_at_k",
    "normalize_gold",
    "pass_at_k",
    "problem_metrics",
    "resolve_data_dir",
    "score_many",
]
