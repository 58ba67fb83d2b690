"""Time `bicc-lab report`'s data loading and tables on 1,000 runs × 4 benchmarks (SQLite store).

Run: .venv/bin/python benchmarks/report_scale.py [--runs 1000] [--repeats 3] [--keep DIR]

Fills a temporary SQLite MLflow store the way `sweep run` lays it out (5 models × 5
variants × 4 arms × 10 seeds = 1,000 finished child runs, each with the 72 params of
experiments/tiny.yaml, ~25 training metrics, 20 eval metrics over MATH500 / AMC23 /
AIME24 / AIME25, a 20-step reward history and an eval.json artifact of 600 problems ×
4 samples), then times, with the median of --repeats:

1. load + tables (the target, <= 5 s): `load_runs` (search_runs, pages of 50,000) and
   the ablation table (mean ± CI, Δ, best cells, average) and cost table;
2. paired tests: reading the 1,000 eval.json artifacts and the paired bootstrap;
3. curves: the reward histories of all runs (one bulk query per metric);
4. the whole report once: all of the above, plots, and every file written.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

from bicc_lab.report.build import build_report, write_report  # noqa: E402
from bicc_lab.report.data import load_curves, load_problem_scores, load_runs  # noqa: E402
from bicc_lab.report.synthetic import SyntheticCell, fill_store  # noqa: E402
from bicc_lab.report.tables import build_ablation, build_cost  # noqa: E402

MODELS = ["Qwen/Qwen3-4B-Instruct-2507", "microsoft/Phi-4-mini-instruct", "m3", "m4", "m5"]
VARIANTS = ["grpo", "dr_grpo", "dapo", "gspo", "gmpo"]
ARMS = ["base", "rcc", "bicc", "bicc+rcc"]
BENCHES = {"math500": 500, "amc23": 40, "aime24": 30, "aime25": 30}
K = 4
TRAIN_KEYS = [
    "loss", "grad_norm", "learning_rate", "num_tokens", "completions/mean_length",
    "completions/min_length", "completions/max_length", "completions/clipped_ratio",
    "rewards/accuracy_reward/mean", "rewards/accuracy_reward/std", "reward_std",
    "frac_reward_zero_std", "entropy", "clip_ratio/low_mean", "clip_ratio/high_mean",
    "clip_ratio/region_mean", "step_time", "contrast/margin", "perf/tokens_per_s",
    "rcc/cov_r_delta", "rcc/baseline_shift", "bicc/logp_shift", "epoch",
]


def make_cells(n_runs: int, artifacts: bool) -> list[SyntheticCell]:
    rng = np.random.default_rng(0)
    difficulty = {b: rng.uniform(0.05, 0.95, size=n) for b, n in BENCHES.items()}
    cells = []
    for model in MODELS:
        for variant in VARIANTS:
            for a, arm in enumerate(ARMS):
                for seed in range(10):
                    if len(cells) >= n_runs:
                        return cells
                    correct = {}
                    evals = {}
                    for bench, p in difficulty.items():
                        hits = rng.random((p.size, K)) < np.clip(p + 0.01 * a, 0, 1)[:, None]
                        if artifacts:
                            correct[bench] = hits.tolist()
                        c = hits.sum(axis=1)
                        evals[bench] = {
                            "avg_at_4": float(hits.mean()), "pass_at_1": float(hits.mean()),
                            "pass_at_4": float((c > 0).mean()), "maj_at_4": float((c > 2).mean()),
                            "n": float(p.size),
                        }
                    history = {"reward": [(s, float(v)) for s, v in enumerate(rng.random(20), 1)]}
                    summary = {key: float(rng.random()) for key in TRAIN_KEYS}
                    summary.update({"train/wall_time_s": 3600 + 100 * a + seed,
                                    "train/mean_step_time_s": 10.0 * (1.3 if "bicc" in arm else 1.0),
                                    "num_tokens": 5.0e7})
                    cells.append(SyntheticCell(model, variant, arm, seed, correct=correct,
                                               eval_metrics=evals, history=history, summary=summary,
                                               artifact=artifacts))
    return cells


def timed(fn, repeats: int) -> tuple[float, float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", type=Path, default=None, help="fill (or reuse) the store in this folder")
    parser.add_argument("--no-artifacts", action="store_true", help="skip eval.json (no paired tests)")
    args = parser.parse_args()

    from bicc_lab.spec import load_experiment

    params = load_experiment(ROOT / "experiments" / "tiny.yaml").model_dump(mode="json")
    folder = args.keep or Path(tempfile.mkdtemp(prefix="report-scale-"))
    folder.mkdir(parents=True, exist_ok=True)
    db = folder / "mlflow.db"
    uri = f"sqlite:///{db}"
    if not db.exists():
        start = time.perf_counter()
        cells = make_cells(args.runs, not args.no_artifacts)
        fill_store(uri, "scale", cells, params=params)
        print(f"filled {len(cells)} runs × {len(BENCHES)} benchmarks in {time.perf_counter() - start:.1f} s ({uri})")

    def load_and_tables():
        rs = load_runs("scale", uri)
        table = build_ablation(rs)
        cost = build_cost(rs)
        return rs, table, cost

    med, best, (rs, table, cost) = timed(load_and_tables, args.repeats)
    load_med, _, _ = timed(lambda: load_runs("scale", uri), args.repeats)
    print(f"runs read: {len(rs.runs)} finished, tidy frame {len(rs.frame)} rows (run × benchmark), "
          f"table {len(table.rows)} rows × {len(table.columns)} columns × {len(table.arms)} arms")
    print(f"load + tables      median {med:.2f} s, min {best:.2f} s over {args.repeats} "
          f"(of which load_runs {load_med:.2f} s)  target <= 5 s: {'OK' if med <= 5 else 'MISSED'}")

    if not args.no_artifacts:
        def tests():
            problems = load_problem_scores(rs)
            return problems, build_ablation(rs, problems=problems)

        med, best, (problems, tested) = timed(tests, 1)
        n_tests = len(tested.significance_frame())
        print(f"paired tests       {med:.2f} s: {len(problems):,} problem scores from {len(rs.runs)} eval.json, "
              f"{n_tests} bootstraps × 10,000 resamples")
    med, best, curves = timed(lambda: load_curves(rs, ["reward"]), args.repeats)
    print(f"reward curves      median {med:.2f} s: {len(curves):,} points")

    def everything():
        report = build_report(load_runs("scale", uri))
        with tempfile.TemporaryDirectory() as out:
            write_report(report, out)
        return report

    med, best, report = timed(everything, 1)
    print(f"whole report       {med:.2f} s (load, tests, curves, {len(report.plots)} plots, md/tex/csv/html written)")
    if args.keep is None:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
