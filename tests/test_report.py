"""`bicc-lab report` on an MLflow store filled with known values.

The store (SQLite in a temp dir) holds one sweep laid out like `sweep run` writes it:
two variants × four arms × three seeds, with hand-chosen per-problem correctness on two
benchmarks, a FAILED and a RUNNING run that must not count (the FAILED one is listed as
failed), a missing arm, a missing seed and a row with a single seed. Every number asserted
below is computed by hand from those inputs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from bicc_lab.cli.main import app
from bicc_lab.report import (
    build_ablation,
    build_cost,
    build_report,
    load_problem_scores,
    load_runs,
    write_report,
)
from bicc_lab.report.synthetic import SyntheticCell, fill_store

runner = CliRunner()
EXP = "abl"
T2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)  # t_{0.975, 2}, closed form for df = 2
B = 10_000  # bootstrap resamples
P_MIN = 1 / (B + 1)


def problems(counts: list[int], k: int) -> list[list[bool]]:
    """Per problem: the first c of k samples correct."""
    return [[j < c for j in range(k)] for c in counts]


# math500: 10 problems, k = 4; aime24: 6 problems, k = 2.
GRPO_BASE_MATH = {0: [2] * 10, 1: [3] * 4 + [2] * 6, 2: [3] * 8 + [2] * 2}  # 20/40, 24/40, 28/40
AIME_HALF = [1] * 6  # 0.5
AIME_ALL = [2] * 6
AIME_NONE = [0] * 6


def _cells() -> list[SyntheticCell]:
    cells = []

    def add(variant, arm, seed, math500, aime24, *, step_time=1.0, status="FINISHED", wall=100.0):
        history = {"reward": [(s, 0.1 * s + 0.01 * seed) for s in range(1, 6)]}
        if "rcc" in arm:
            history["rcc/cov_r_delta"] = [(s, 0.01 * s) for s in range(1, 6)]
        cells.append(SyntheticCell(
            "org/tiny", variant, arm, seed,
            correct={"math500": problems(math500, 4), "aime24": problems(aime24, 2)},
            history=history,
            summary={"train/wall_time_s": wall + seed, "train/mean_step_time_s": step_time,
                     "num_tokens": 1000.0 * (seed + 1)},
            status=status,
        ))

    for s in (0, 1, 2):
        add("grpo", "base", s, GRPO_BASE_MATH[s], AIME_HALF)
        add("grpo", "rcc", s, GRPO_BASE_MATH[s], AIME_HALF)  # identical to the baseline
        add("grpo", "bicc", s, [4] * 10, AIME_ALL, step_time=1.5, wall=150.0)
    for s in (0, 1):  # seed 2 of bicc+rcc is missing
        add("grpo", "bicc+rcc", s, [3] * 10, AIME_ALL, step_time=1.6)
    # runs that must not count
    add("grpo", "bicc+rcc", 2, [4] * 10, AIME_ALL, status="FAILED")
    add("grpo", "base", 3, [4] * 10, AIME_ALL, status="RUNNING")
    # dapo: one seed, no +RCC arm
    add("dapo", "base", 0, [1] * 10, AIME_NONE)
    add("dapo", "bicc", 0, [2] * 10, AIME_HALF, step_time=1.5)
    add("dapo", "bicc+rcc", 0, [2] * 10, AIME_ALL, step_time=1.5)
    return cells


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("report-store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    info = fill_store(uri, EXP, _cells(), sweep=EXP)
    return {"uri": uri, "root": root, **info}


@pytest.fixture(scope="module")
def run_set(store):
    return load_runs(EXP, store["uri"])


@pytest.fixture(scope="module")
def table(run_set):
    return build_ablation(run_set, problems=load_problem_scores(run_set), n_resamples=B)


GRPO = ("tiny", "grpo")
DAPO = ("tiny", "dapo")


def test_only_finished_runs_are_read(run_set):
    assert len(run_set.runs) == 3 * 3 + 2 + 3
    assert run_set.skipped == {"FAILED": 1, "RUNNING": 1}
    assert run_set.benchmarks == ["math500", "aime24"]
    assert run_set.parent_run_id
    frame = run_set.frame
    assert set(frame.columns) >= {"run_id", "model", "variant", "arm", "seed", "benchmark", "metric", "score",
                                  "wall_time_s", "mean_step_time_s", "tokens"}
    assert len(frame) == len(run_set.runs) * 2
    assert set(frame.loc[frame.benchmark == "math500", "metric"]) == {"avg_at_4"}
    assert set(frame.loc[frame.benchmark == "aime24", "metric"]) == {"avg_at_2"}


def test_means_and_t_intervals(table):
    c = table.cell(GRPO, "math500", "base")
    half = T2 * 0.1 / math.sqrt(3)  # seeds 0.5, 0.6, 0.7: s = 0.1
    assert c.stat.mean == pytest.approx(0.6)
    assert (c.stat.low, c.stat.high) == pytest.approx((0.6 - half, 0.6 + half))
    assert c.seeds == (0, 1, 2)
    bicc = table.cell(GRPO, "math500", "bicc")
    assert (bicc.stat.mean, bicc.stat.low, bicc.stat.high) == pytest.approx((1.0, 1.0, 1.0))
    # average over benchmarks per seed: (0.5+0.5)/2, (0.6+0.5)/2, (0.7+0.5)/2 -> s = 0.05
    avg = table.cell(GRPO, "average", "base")
    half = T2 * 0.05 / math.sqrt(3)
    assert (avg.stat.mean, avg.stat.low, avg.stat.high) == pytest.approx((0.55, 0.55 - half, 0.55 + half))


def test_deltas_and_best_cells(table):
    assert table.cell(GRPO, "math500", "base").delta is None
    assert table.cell(GRPO, "math500", "rcc").delta == pytest.approx(0.0)
    assert table.cell(GRPO, "math500", "bicc").delta == pytest.approx(0.4)
    assert table.cell(GRPO, "math500", "bicc+rcc").delta == pytest.approx(0.75 - 0.6)
    assert table.cell(GRPO, "average", "bicc").delta == pytest.approx(1.0 - 0.55)
    assert [a for a in table.arms if table.cell(GRPO, "math500", a).best] == ["bicc"]
    # aime24: bicc and bicc+rcc tie at 1.0: both marked
    assert {a for a in table.arms if table.cell(GRPO, "aime24", a).best} == {"bicc", "bicc+rcc"}
    assert table.cell(DAPO, "aime24", "bicc").delta == pytest.approx(0.5)


def test_paired_bootstrap_values(table):
    same = table.cell(GRPO, "math500", "rcc").test
    assert same.p_value == 1.0 and same.diff == 0.0 and same.low <= 0.0 <= same.high
    assert same.n_problems == 10
    # bicc solves every sample; baseline per problem (seeds averaged): 8/12 (x4), 7/12 (x4), 6/12 (x2)
    win = table.cell(GRPO, "math500", "bicc").test
    assert win.diff == pytest.approx((4 * 4 / 12 + 4 * 5 / 12 + 2 * 6 / 12) / 10)  # = 0.4
    assert win.p_value == pytest.approx(P_MIN)  # every resample is in [1/3, 1/2]: never as extreme as 0
    assert 1 / 3 - 1e-12 <= win.low <= win.high <= 0.5 + 1e-12
    # dapo aime24: bicc+rcc right on every sample the baseline gets wrong
    total = table.cell(DAPO, "aime24", "bicc+rcc").test
    assert (total.diff, total.low, total.high, total.p_value) == pytest.approx((1.0, 1.0, 1.0, P_MIN))
    # the pairing uses the seeds both arms have
    assert table.cell(GRPO, "math500", "bicc+rcc").test_seeds == (0, 1)
    sig = table.significance_frame()
    row = sig[(sig.variant == "grpo") & (sig.benchmark == "math500") & (sig.arm == "bicc")].iloc[0]
    assert row.p_value == pytest.approx(P_MIN) and row.n_problems == 10 and row.metric == "avg_at_4"


def test_missing_arm_missing_seed_and_single_seed(table):
    assert table.cell(DAPO, "math500", "rcc") is None
    assert any("tiny / dapo" in n and "+RCC" in n for n in table.notes)
    partial = table.cell(GRPO, "math500", "bicc+rcc")
    assert partial.stat.n == 2 and partial.seeds == (0, 1)
    assert any("+BICC+RCC math500: 2 of 3 seeds (missing seed 2)" in n for n in table.notes)
    # fewer than 3 seeds: a bootstrap over problems (and seeds); every problem of these
    # cells has the same score, so every resample gives the mean
    assert partial.stat.method == "bootstrap" and (partial.stat.low, partial.stat.high) == pytest.approx((0.75, 0.75))
    single = table.cell(DAPO, "math500", "base")
    assert single.stat.n == 1 and single.stat.method == "bootstrap" and single.stat.mean == pytest.approx(0.25)
    assert (single.stat.low, single.stat.high) == pytest.approx((0.25, 0.25))
    assert table.cell(GRPO, "math500", "base").stat.method == "t"  # three seeds
    assert any("a single seed (0): intervals from a bootstrap over problems only" in n for n in table.notes)
    frame = table.to_frame()
    missing = frame[(frame.variant == "dapo") & (frame.arm == "rcc")]
    assert len(missing) == 3 and (missing.n_seeds == 0).all() and missing["mean"].isna().all()


def test_cost_table(run_set):
    cost = build_cost(run_set).set_index(["variant", "arm"])
    assert cost.loc[("grpo", "bicc"), "step_time_ratio"] == pytest.approx(1.5)
    assert cost.loc[("grpo", "bicc+rcc"), "step_time_ratio"] == pytest.approx(1.6)
    assert cost.loc[("grpo", "base"), "wall_time_s"] == pytest.approx(101.0)  # 100, 101, 102
    assert cost.loc[("grpo", "bicc"), "tokens"] == pytest.approx(2000.0)
    assert cost.loc[("grpo", "base"), "runs"] == 3
    assert list(cost.loc["grpo"].index) == ["base", "rcc", "bicc", "bicc+rcc"]


def test_write_report_files_and_content(run_set, tmp_path):
    report = build_report(run_set, n_resamples=B)
    out = tmp_path / "reports" / "abl"
    (out / "plots").mkdir(parents=True)
    (out / "plots" / "stale.png").write_bytes(b"old")
    (out / "README.md").write_text("kept")
    write_report(report, out)
    names = {p.name for p in out.iterdir()}
    assert names == {"ablation.md", "ablation.tex", "ablation.csv", "significance.csv", "cost.md", "cost.csv",
                     "detection.csv", "report.html", "plots", "README.md"}
    assert [p.name for p in tmp_path.joinpath("reports").iterdir()] == ["abl"]  # no temp dir left
    plots = {p.name for p in (out / "plots").iterdir()}
    assert "stale.png" not in plots
    assert {"accuracy.png", "accuracy.svg", "curve_reward.png", "curve_reward.svg",
            "curve_rcc_cov_r_delta.png"} <= plots
    md = (out / "ablation.md").read_text()
    assert "**100.0 ± 0.0** (+40.0†)" in md  # grpo math500 +BICC, best, significant
    assert f"60.0 ± {100 * T2 * 0.1 / math.sqrt(3):.1f}" in md  # grpo math500 baseline
    assert "| tiny | dapo | 25.0 ± 0.0 |" in md  # single seed: bootstrap over problems
    # without a seeds: policy the detection section is there, and no row is marked open
    assert "## What the seeds can detect" in md and "(open)" not in md
    assert "percentile bootstrap over problems and seeds" in md  # the legend says how
    assert "—" in md and "missing seed 2" in md
    tex = (out / "ablation.tex").read_text()
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex
    assert "\\multicolumn{4}{c}{MATH500}" in tex and "\\textbf{100.0$\\pm$0.0}" in tex
    csv = pd.read_csv(out / "ablation.csv")
    row = csv[(csv.variant == "grpo") & (csv.benchmark == "math500") & (csv.arm == "base")].iloc[0]
    # the CSV speaks in points, as every table: 0.6 of the problems is 60 (%)
    assert row["mean"] == pytest.approx(60.0) and row["ci_high"] == pytest.approx(100 * (0.6 + T2 * 0.1 / math.sqrt(3)))
    assert set(csv.unit) == {"percent"}
    sig = pd.read_csv(out / "significance.csv")
    assert set(sig.arm) == {"rcc", "bicc", "bicc+rcc"} and set(sig.unit) == {"percent"}
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(report.plots) >= 3
    assert "<td class='best'" in html
    cost = (out / "cost.md").read_text()
    assert "1.50×" in cost


def test_failed_write_leaves_the_old_report(run_set, tmp_path, monkeypatch):
    report = build_report(run_set, n_resamples=200, plots=False)
    out = tmp_path / "r"
    write_report(report, out, ["md"])
    before = (out / "ablation.md").read_text()

    import bicc_lab.report.build as build

    real = build.os.replace
    calls = {"n": 0}

    def flaky(src, dst):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        return real(src, dst)

    monkeypatch.setattr(build.os, "replace", flaky)
    with pytest.raises(OSError):
        write_report(report, out, ["md", "csv"])
    assert (out / "ablation.md").read_text() == before  # each file whole, old or new
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]  # temp dir cleaned up


def test_cli_writes_logs_and_exits_cleanly(store, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["report", EXP, "--tracking-uri", store["uri"], "--out-dir", str(out),
                                 "--format", "md,html", "--resamples", "1000", "--no-start"])
    assert result.exit_code == 0, result.output
    assert "Ablation report: abl" in result.output and "+BICC+RCC" in result.output
    assert (out / "ablation.md").is_file() and (out / "report.html").is_file()
    assert not (out / "ablation.tex").exists()
    from mlflow import MlflowClient

    logged = {f.path for f in MlflowClient(store["uri"]).list_artifacts(store["parent"], "report")}
    assert {"report/ablation.md", "report/report.html", "report/plots"} <= logged


def test_cli_from_a_sweep_file(store, tmp_path):
    sweep = tmp_path / "abl.yaml"
    base = Path(__file__).resolve().parents[1] / "experiments" / "tiny.yaml"
    sweep.write_text(f"name: abl\nbase: {base}\ngrid:\n  seed: [0, 1]\n"
                     f"tracking: {{uri: '{store['uri']}', experiment: {EXP}}}\n")
    result = runner.invoke(app, ["report", str(sweep), "--out", str(tmp_path / "o"), "--format", "csv",
                                 "--no-plots", "--no-log", "--resamples", "200", "--no-start"])
    assert result.exit_code == 0, result.output
    assert len(pd.read_csv(tmp_path / "o" / "ablation.csv")) == 2 * 3 * 4  # rows × columns × arms


def test_cli_unknown_experiment_and_no_finished_runs_exit_2(store, tmp_path):
    result = runner.invoke(app, ["report", "nope", "--tracking-uri", store["uri"]])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and "no MLflow experiment 'nope'" in result.output

    fill_store(store["uri"], "empty", [SyntheticCell("tiny", "grpo", "base", 0, status="FAILED")])
    result = runner.invoke(app, ["report", "empty", "--tracking-uri", store["uri"]])
    assert result.exit_code == 2 and "no finished runs (1 FAILED)" in result.output

    missing = f"sqlite:///{tmp_path / 'none.db'}"
    result = runner.invoke(app, ["report", "abl", "--tracking-uri", missing])
    assert result.exit_code == 2 and not (tmp_path / "none.db").exists()

    result = runner.invoke(app, ["report", "abl", "--tracking-uri", store["uri"], "--format", "pdf"])
    assert result.exit_code == 2 and "pdf" in result.output


def test_extra_grid_axes_become_row_keys(store):
    uri = store["uri"]
    cells = [SyntheticCell("tiny", "grpo", arm, 0, correct={"arith": problems([1, 0], 1)},
                           axes={"bicc.context_fraction": frac})
             for arm in ("base", "bicc") for frac in (0.2, 0.4)]
    fill_store(uri, "ax", cells)
    rs = load_runs("ax", uri)
    assert rs.row_axes == ["bicc.context_fraction"]
    table = build_ablation(rs)
    assert table.rows == [("tiny", "grpo", "0.2"), ("tiny", "grpo", "0.4")]
    assert table.columns == ["arith"]  # a single benchmark: no average column
    assert table.cell(("tiny", "grpo", "0.4"), "arith", "bicc").stat.mean == pytest.approx(0.5)
    assert json.loads(json.dumps(table.to_frame().to_dict("records"), default=str))


def test_other_baseline_and_metric(store):
    rs = load_runs(EXP, store["uri"], metric="pass_at_k")
    assert set(rs.frame.loc[rs.frame.benchmark == "math500", "metric"]) == {"pass_at_4"}
    table = build_ablation(rs, baseline="rcc", problems=load_problem_scores(rs), n_resamples=B)
    assert table.arms[0] == "rcc"
    # every grpo math500 problem has >= 2 of 4 samples right in every arm: pass@4 = 1 everywhere
    cell = table.cell(GRPO, "math500", "bicc")
    assert cell.stat.mean == 1.0 and cell.delta == 0.0 and cell.test.p_value == 1.0
    # aime24 pass@2 of the baseline (1 of 2 right) is 1 as well; dapo has no +RCC run at all
    assert table.cell(DAPO, "aime24", "bicc").delta is None
    assert any("tiny / dapo: no +RCC run, so no Δ" in n for n in table.notes)


def test_paired_bootstrap_pairs_each_problem_with_itself(store):
    """Per-problem scores that differ from problem to problem, and arms that move every
    problem by the same amount: only the right pairing makes every difference that amount.
    Problem i (of 12) has i of 12 samples right in the baseline, i + 1 under +BICC and i under
    +RCC, on both seeds, so the per-problem differences are all 1/12 and all 0 and every
    resample has the same mean. A pairing in another order (reversed, shuffled) mixes
    problems, the differences spread, and so does the interval."""
    uri = store["uri"]
    counts = {"base": list(range(12)), "bicc": [i + 1 for i in range(12)], "rcc": list(range(12))}
    cells = [SyntheticCell("tiny", "grpo", arm, seed, correct={"arith": problems(c, 12)})
             for arm, c in counts.items() for seed in (0, 1)]
    fill_store(uri, "pairing", cells)
    rs = load_runs("pairing", uri)
    table = build_ablation(rs, problems=load_problem_scores(rs), n_resamples=2000)
    shift = table.cell(GRPO, "arith", "bicc").test
    assert shift.n_problems == 12
    assert (shift.diff, shift.low, shift.high) == pytest.approx((1 / 12, 1 / 12, 1 / 12), abs=1e-12)
    assert shift.p_value == pytest.approx(1 / 2001)
    same = table.cell(GRPO, "arith", "rcc").test
    assert (same.diff, same.low, same.high, same.p_value) == pytest.approx((0.0, 0.0, 0.0, 1.0), abs=1e-12)
