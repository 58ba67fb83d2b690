"""The adaptive seed policy (bicc_lab.sweep.seeds): decisions by hand, and by simulation its
error rate under repeated looking and the seeds it spends against a fixed design."""

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from bicc_lab.spec.seeds import SeedPolicy, SeedPolicyConfig
from bicc_lab.stats.sequential import confidence_sequence, critical_t, running_confidence_sequence
from bicc_lab.sweep.seeds import AT_MAX, BLOCKED, RESOLVED, WAITING, decide_row, judge

ARMS = ("rcc", "bicc", "bicc+rcc")


def make_policy(n_min=2, max_=20, batch=2, half_width=0.005, alpha=0.05, arms=ARMS):
    config = SeedPolicyConfig(max=max_, batch=batch, half_width=half_width, alpha=alpha)
    return SeedPolicy(config, tuple(range(n_min)), "base", tuple(arms), "arith", "avg@4")


# Per-seed sample standard deviations of the quickstart (reports/quickstart/ablation.csv,
# 2 seeds per arm) and its means: (mean, sd) per arm, rows grpo and dr_grpo.
QUICKSTART = {
    "grpo": {"base": (0.6950, 0.0177), "rcc": (0.6738, 0.0265), "bicc": (0.6487, 0.0301), "bicc+rcc": (0.4825, 0.0778)},
    "dr_grpo": {"base": (0.6956, 0.0062), "rcc": (0.6656, 0.0027), "bicc": (0.6613, 0.0265), "bicc+rcc": (0.4906, 0.0910)},
}


def test_looks_and_seeds_of_a_policy():
    p = make_policy(n_min=2, max_=9, batch=3)
    assert p.looks() == [2, 5, 8, 9]
    assert SeedPolicy(p.config, (3, 7), "base", ARMS, "arith", "avg@4").seeds(5) == [3, 7, 8, 9, 10]


def test_judge():
    ci = confidence_sequence([0.01, 0.03, 0.02, 0.02, 0.01, 0.03, 0.02, 0.02, 0.01, 0.03], 0.05)
    assert ci.excludes_zero and judge(ci, 1e-9) == "excludes 0"
    ci = confidence_sequence([0.01, -0.01] * 5, 0.05)  # half-width t*·0.01054/sqrt(10)
    assert not ci.excludes_zero
    assert judge(ci, ci.half_width) == "narrow" and judge(ci, ci.half_width * 0.99) == "open"


def test_a_row_moves_look_by_look_and_says_why():
    p = make_policy(n_min=2, max_=6, batch=2, half_width=0.001, arms=("bicc",))
    base = [0.70, 0.71, 0.69, 0.70, 0.72, 0.70]
    # two seeds: no finite interval at any α; the row asks for seeds 3 and 4
    d = decide_row("tiny/grpo", {"base": base[:2] + [None] * 4, "bicc": [0.6, 0.61] + [None] * 4}, p, 0.05)
    assert (d.n_seeds, d.status) == (4, WAITING)
    assert d.comparisons[0].state == "open" and math.isinf(d.comparisons[0].ci.high)
    assert d.reason == "open at 2 seeds, so +2; 4 cell(s) of the first 4 seeds not finished"
    # a failed cell blocks the row at its look
    d = decide_row("tiny/grpo", {"base": base[:2] + [math.nan, 0.7, None, None], "bicc": [0.6, 0.61, 0.6, 0.6, None, None]}, p, 0.05)
    assert (d.n_seeds, d.status) == (4, BLOCKED)
    # a clear effect resolves the row at the first look with a finite interval
    bicc = [b - 0.10 + e for b, e in zip(base, [0.0, 0.004, -0.003, 0.002, -0.001, 0.001], strict=True)]
    d = decide_row("tiny/grpo", {"base": base, "bicc": bicc}, p, 0.05)
    first_finite = next(n for n in p.looks() if math.isfinite(critical_t(n, 0.05)))
    assert (d.n_seeds, d.status) == (first_finite, RESOLVED)
    assert d.comparisons[0].state == "excludes 0" and d.comparisons[0].ci.high < 0
    # no effect and a tiny target: the row runs to max and stops there
    noise = [0.0, 0.01, -0.01, 0.005, -0.005, 0.0]
    d = decide_row("tiny/grpo", {"base": base, "bicc": [b + e for b, e in zip(base, noise, strict=True)]}, p, 0.05)
    assert (d.n_seeds, d.status) == (6, AT_MAX)
    # the interval reported is the running intersection over the looks
    diffs = list(d.comparisons[0].diffs)
    run = running_confidence_sequence(diffs, 0.05, looks=p.looks())
    assert (d.comparisons[0].ci.low, d.comparisons[0].ci.high) == pytest.approx((run.low, run.high))


def simulate_row(rng, arms_stats, policy, alpha_each, max_seeds):
    values = {arm: list(rng.normal(mu, sd, max_seeds)) for arm, (mu, sd) in arms_stats.items()}
    return decide_row("sim", values, policy, alpha_each)


N_SWEEPS = 1000


def test_false_positive_rate_under_no_effect_stays_below_alpha():
    """1,000 simulated quickstart sweeps (2 rows x 3 arms) with every arm equal to its row's
    baseline in mean, each arm with its own quickstart spread; a sweep errs when any of its
    6 comparisons is declared (its interval excludes 0)."""
    alpha, max_seeds = 0.05, 20
    policy = make_policy(n_min=2, max_=max_seeds, batch=2, half_width=0.005, alpha=alpha)
    alpha_each = alpha / 6
    rng = np.random.default_rng(20261202)
    errs, seeds = 0, []
    for _ in range(N_SWEEPS):
        declared = False
        for row in QUICKSTART.values():
            null = {arm: (row["base"][0], sd) for arm, (_, sd) in row.items()}
            decision = simulate_row(rng, null, policy, alpha_each, max_seeds)
            declared |= any(c.ci.excludes_zero for c in decision.comparisons)
            seeds.append(decision.n_seeds)
        errs += declared
    rate = errs / N_SWEEPS
    # One-sided binomial tolerance: were the true rate exactly α, the observed rate would
    # exceed α + 2.33·sqrt(α(1 − α)/1000) = 0.066 in 1% of runs of this test.
    assert rate <= alpha + 2.33 * math.sqrt(alpha * (1 - alpha) / N_SWEEPS), rate
    print(f"null: family-wise false-positive rate {rate:.3f} over {N_SWEEPS} sweeps; mean seeds per row {np.mean(seeds):.2f}")

    # The same simulation catches the error this guards against: stopping a row at the
    # first look where a plain 95% t-interval excludes 0 (no multiplicity, no sequential
    # correction) declares a difference far more often than α.
    naive = 0
    t_975 = {n: stats.t.ppf(0.975, n - 1) for n in policy.looks()}
    for _ in range(N_SWEEPS):
        hit = False
        for row in QUICKSTART.values():
            for arm in ARMS:
                d = rng.normal(0, math.hypot(row[arm][1], row["base"][1]), max_seeds)
                for n in policy.looks():
                    t = abs(d[:n].mean()) / (d[:n].std(ddof=1) / math.sqrt(n))
                    if t >= t_975[n]:
                        hit = True
                        break
        naive += hit
    print(f"naive stopping: {naive / N_SWEEPS:.3f}")
    assert naive / N_SWEEPS > 3 * alpha


def fixed_design_seeds(effect, sd, alpha_each, power):
    """Seeds a fixed-n two-sided t-test at α_each needs for ``power`` (σ and effect known)."""
    for n in range(2, 1000):
        crit = stats.t.ppf(1 - alpha_each / 2, n - 1)
        if stats.nct.sf(crit, n - 1, abs(effect) * math.sqrt(n) / sd) >= power:
            return n
    raise AssertionError


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("arm", ["bicc", "bicc+rcc"])
def test_true_effects_resolve_with_fewer_seeds_than_a_fixed_design_of_the_same_power(arm, batch):
    """The quickstart's BICC effects on grpo (−4.6 and −21.3 points), one comparison of a
    6-comparison sweep (α/6), 2 to 20 seeds, ``batch`` at a time: the mean seeds spent
    against the fixed-n t-test that reaches the same power (capped at 0.99) knowing σ and
    the effect in advance."""
    row = QUICKSTART["grpo"]
    alpha_each = 0.05 / 6
    policy = make_policy(n_min=2, max_=20, batch=batch, half_width=0.001, arms=(arm,))
    rng = np.random.default_rng(7)
    arms_stats = {"base": row["base"], arm: row[arm]}
    decisions = [simulate_row(rng, arms_stats, policy, alpha_each, 20) for _ in range(N_SWEEPS)]
    power = np.mean([d.comparisons[0].ci.high < 0 for d in decisions])
    mean_seeds = np.mean([d.n_seeds for d in decisions])
    effect = row[arm][0] - row["base"][0]
    sd = math.hypot(row[arm][1], row["base"][1])
    fixed = fixed_design_seeds(effect, sd, alpha_each, min(power, 0.99))
    print(f"{arm}, batch {batch}: power {power:.3f}, mean seeds {mean_seeds:.2f} (n = {N_SWEEPS}); fixed {fixed}")
    assert power >= 0.8
    # the mean's standard error is about sd(seeds)/sqrt(1000) < 0.2 seeds
    se = np.std([d.n_seeds for d in decisions]) / math.sqrt(N_SWEEPS)
    assert mean_seeds + 2 * se < fixed


# --------------------------------------------------------------------------- on a sweep

SWEEP = """\
base: base.yaml
grid:
  variant: [grpo, dr_grpo]
  bicc.enabled: [false, true]
  rcc.enabled: [false, true]
  seed: [0, 1]
seeds:
  max: 6
  batch: 2
  half_width: 0.001
"""
BASE_TEXT = """\
name: t
model:
  name: tiny
  tiny: {layers: 2, hidden: 32, heads: 2, max_warmup_steps: 0}
train: {max_steps: 2, num_generations: 4, per_device_train_batch_size: 8, max_completion_length: 4}
eval: {benchmarks: [arith_test], samples: 4}
"""


@pytest.fixture()
def seeded_sweep(tmp_path):
    (tmp_path / "base.yaml").write_text(BASE_TEXT)
    (tmp_path / "s.yaml").write_text(SWEEP)
    return tmp_path / "s.yaml"


def fake_statuses(sweep, results):
    """CellStatus of every cell: FINISHED with ``results[cell_id]`` as its metric, else pending."""
    from types import SimpleNamespace

    from bicc_lab.sweep import state as st

    out = []
    for cell in sweep.cells:
        if cell.cell_id in results:
            run = SimpleNamespace(metrics={"eval/arith/avg_at_4": results[cell.cell_id]})
            out.append(st.CellStatus(cell, Path("."), st.FINISHED, run=run))
        else:
            out.append(st.CellStatus(cell, Path("."), st.PENDING))
    return out


def metric_of(cell):
    """A deterministic stand-in for a trained cell: BICC+RCC 20 points below, others equal."""
    noise = (hash((cell.config.variant, cell.arm, cell.config.seed)) % 1000) / 1000 * 0.02
    return 0.70 + noise - (0.20 if cell.arm == "bicc+rcc" else 0.0)


def test_rows_get_seeds_batch_by_batch_with_stable_ids(seeded_sweep):
    from bicc_lab.spec import load_sweep
    from bicc_lab.sweep.seeds import policy_state, run_rounds, widened

    sweep = load_sweep(seeded_sweep)
    assert sweep.seed_policy.benchmark == "arith_test" and sweep.seed_policy.metric == "avg@4"
    full = widened(sweep)
    assert full.seed_policy.benchmark == "arith"  # the name its metric is logged under
    assert len(sweep.cells) == 16 and len(full.cells) == 48
    assert {c.cell_id for c in sweep.cells} <= {c.cell_id for c in full.cells}  # same ids

    state = policy_state(full, fake_statuses(full, {}))
    assert {c.cell_id for c in state.needed} == {c.cell_id for c in sweep.cells}
    assert [r.status for r in state.rows] == [WAITING, WAITING] and state.n_comparisons == 6
    assert state.alpha_each == pytest.approx(0.05 / 6)

    results: dict[str, float] = {}
    rounds = []

    def run_round(cells):
        rounds.append(len(cells))
        for cell in cells:
            results[cell.cell_id] = metric_of(cell)
        return SimpleOutcome()

    lines: list[str] = []
    run_rounds(run_round, lambda: policy_state(full, fake_statuses(full, results)), lines.append)
    # 2 seeds: no finite interval at α/6, so every row runs on to 4 and 6 seeds; at 6 the
    # equal arms cannot be narrower than ±0.1 points: both rows stop at seeds.max
    assert rounds == [16, 32, 48]
    final = policy_state(full, fake_statuses(full, results))
    assert [(r.n_seeds, r.status) for r in final.rows] == [(6, AT_MAX), (6, AT_MAX)]
    by_arm = {c.arm: c for c in final.rows[0].comparisons}
    assert by_arm["bicc+rcc"].state == "excludes 0" and by_arm["rcc"].state == "open"
    assert any("tiny/grpo: 6 seeds, at max" in line for line in lines)


class SimpleOutcome:
    interrupted = False
    left_running = 0


def test_a_resolved_row_stops_and_an_open_one_goes_on(seeded_sweep):
    from bicc_lab.spec import load_sweep
    from bicc_lab.sweep.seeds import policy_state, widened

    # α = 0.2 over 2 comparisons: each at 0.1, where 4 seeds give a finite interval (t* = 5.86)
    full = widened(load_sweep(seeded_sweep, ["seeds.alpha=0.2", "seeds.arms=[bicc+rcc]"]))
    results = {c.cell_id: metric_of(c) for c in full.cells if c.config.seed < 4}
    # dr_grpo's 4th seed has not finished: that row waits at 4, grpo decides at 4
    results = {k: v for k, v in results.items() if not any(
        c.cell_id == k and c.config.variant == "dr_grpo" and c.config.seed == 3 for c in full.cells)}
    state = policy_state(full, fake_statuses(full, results))
    rows = {r.row: r for r in state.rows}
    assert (rows["tiny/grpo"].n_seeds, rows["tiny/grpo"].status) == (4, RESOLVED)
    assert rows["tiny/grpo"].comparisons[0].state == "excludes 0"
    assert (rows["tiny/dr_grpo"].n_seeds, rows["tiny/dr_grpo"].status) == (4, WAITING)
    assert state.n_comparisons == 2  # one arm compared per row


@pytest.mark.parametrize(
    ("edit", "fragments"),
    [
        ("seeds.min=3", ["seeds.min is 3 but grid.seed lists 2", "s.yaml"]),
        ("seeds.benchmark=math500", ["seeds.benchmark 'math500' is not evaluated"]),
        ("seeds.maxx=3", ["unknown key 'seeds.maxx'", "did you mean 'seeds.max'"]),
        ("seeds.arms=[base]", ["seeds.arms lists the baseline"]),
        ("grid.seed=[0]", ["at least 2 starting seeds"]),
    ],
)
def test_policy_mistakes_are_one_line_and_exit_2(seeded_sweep, edit, fragments):
    from typer.testing import CliRunner

    from bicc_lab.cli.main import app

    key, _, value = edit.partition("=")
    text = SWEEP
    if key.startswith("seeds."):
        text += f"  {key.split('.', 1)[1]}: {value}\n"
    else:
        text = text.replace("seed: [0, 1]", f"seed: {value}")
    seeded_sweep.write_text(text)
    result = CliRunner().invoke(app, ["sweep", "plan", str(seeded_sweep)])
    assert result.exit_code == 2, result.output
    out = result.output.strip()
    assert "\n" not in out and "Traceback" not in out
    for fragment in fragments:
        assert fragment in out, out


def test_a_grid_without_a_seed_axis_is_refused(seeded_sweep):
    from bicc_lab.spec import SpecError, load_sweep

    seeded_sweep.write_text(SWEEP.replace("  seed: [0, 1]\n", ""))
    with pytest.raises(SpecError, match="'seeds' needs 'seed' as a grid axis at .*s.yaml:6:1"):
        load_sweep(seeded_sweep)


# --------------------------------------------------------------------------- the report


def test_detection_frame_pairs_seeds_and_applies_the_policy_procedure():
    import pandas as pd

    from bicc_lab.report.detect import (
        DetectionOptions,
        detection_frame,
        detection_markdown,
        open_rows,
    )
    from bicc_lab.stats.sequential import detectable_effect, seeds_needed

    base = [0.70, 0.71, 0.69, 0.70, 0.72, 0.70]
    bicc = [0.60, 0.62, 0.58, 0.61, 0.60, 0.61]  # diffs −0.10 −0.09 −0.11 −0.09 −0.12 −0.09
    rcc = [0.70, 0.72, 0.68, 0.71, 0.71]  # seed 5 missing: 5 pairs, diffs 0 .01 −.01 .01 −.01
    rows = [("base", s, v) for s, v in enumerate(base)] + [("bicc", s, v) for s, v in enumerate(bicc)]
    rows += [("rcc", s, v) for s, v in enumerate(rcc)]
    frame = pd.DataFrame(
        [{"model": "tiny", "variant": "grpo", "arm": a, "seed": s, "benchmark": "arith", "score": v} for a, s, v in rows]
    )
    options = DetectionOptions(alpha=0.2, looks=(2, 4, 6), half_width=0.001, effect=0.05)
    det = detection_frame(frame, ["model", "variant"], options=options).set_index("arm")
    assert det.loc["bicc", "n_seeds"] == 6 and det.loc["rcc", "n_seeds"] == 5
    assert det.loc["rcc", "seeds"] == "0 1 2 3 4"
    assert det.loc["bicc", "diff"] == pytest.approx(-0.10)
    assert det.loc["bicc", "alpha_each"] == pytest.approx(0.1)  # 0.2 over 2 comparisons
    diffs = [b - a for a, b in zip(base, bicc, strict=True)]
    ci = running_confidence_sequence(diffs, 0.1, looks=(2, 4, 6))
    assert (det.loc["bicc", "cs_low"], det.loc["bicc", "cs_high"]) == pytest.approx((ci.low, ci.high))
    assert det.loc["bicc", "state"] == "excludes 0" and det.loc["rcc", "state"] == "open"
    assert det.loc["bicc", "detectable_80"] == pytest.approx(detectable_effect(6, ci.sd, 0.1))
    assert det.loc["bicc", "seeds_for_effect"] == seeds_needed(0.05, ci.sd, 0.1)
    assert open_rows(det.reset_index(), ["model", "variant"]) == {("tiny", "grpo")}
    md = detection_markdown(det.reset_index(), ["model", "variant"], 100.0, 0.05)
    assert "| tiny | grpo | arith | +BICC | 6 | −10.0 |" in md and "Seeds for 5 points" in md


def test_report_of_a_seeds_sweep_uses_the_policy_and_marks_open_rows(tmp_path):
    import pandas as pd
    from typer.testing import CliRunner

    from bicc_lab.cli.main import app
    from bicc_lab.report.synthetic import SyntheticCell, fill_store

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    base = [0.70, 0.71, 0.69, 0.70, 0.72, 0.70]
    bicc = [0.60, 0.62, 0.58, 0.61, 0.60, 0.61]  # clearly below: resolved
    rcc = [0.71, 0.70, 0.70, 0.71, 0.71, 0.70]  # within a point: open
    cells = [
        SyntheticCell("tiny", variant, arm, seed, eval_metrics={"arith": {"avg_at_4": value, "n": 200}}, artifact=False)
        for variant in ("grpo",)
        for arm, values in (("base", base), ("bicc", bicc), ("rcc", rcc))
        for seed, value in enumerate(values)
    ]
    fill_store(uri, "seedrep", cells)
    tiny = Path(__file__).resolve().parents[1] / "experiments" / "tiny.yaml"
    sweep = tmp_path / "seedrep.yaml"
    sweep.write_text(
        f"name: seedrep\nbase: {tiny}\ngrid:\n  bicc.enabled: [false, true]\n  rcc.enabled: [false, true]\n"
        f"  seed: [0, 1]\nexclude:\n  - {{bicc.enabled: true, rcc.enabled: true}}\n"
        f"seeds: {{max: 6, batch: 2, half_width: 0.001, alpha: 0.2}}\n"
        f"tracking: {{uri: '{uri}', experiment: seedrep}}\n"
    )
    out = tmp_path / "o"
    result = CliRunner().invoke(app, ["report", str(sweep), "--out-dir", str(out), "--format", "md,csv,html", "--no-plots",
                                      "--no-log", "--resamples", "200", "--no-start", "--effect", "5"])
    assert result.exit_code == 0, result.output
    det = pd.read_csv(out / "detection.csv").set_index("arm")
    assert set(det.index) == {"bicc", "rcc"}
    assert det.loc["bicc", "alpha_each"] == pytest.approx(0.1)  # the policy's α over its 2 comparisons
    assert det.loc["bicc", "state"] == "excludes 0" and det.loc["rcc", "state"] == "open"
    diffs = [b - a for a, b in zip(base, bicc, strict=True)]
    ci = running_confidence_sequence(diffs, 0.1, looks=[2, 4, 6])  # the policy's looks
    assert det.loc["bicc", "cs_high"] == pytest.approx(100 * ci.high)  # detection.csv: in points
    assert det.loc["bicc", "diff"] == pytest.approx(100 * sum(diffs) / len(diffs)) and set(det.unit) == {"percent"}
    md = (out / "ablation.md").read_text()
    assert "| tiny | grpo (open) |" in md and "## What the seeds can detect" in md and "Seeds for 5 points" in md
    html = (out / "report.html").read_text()
    assert "<h2>What the seeds can detect</h2>" in html and "<td>excludes 0</td>" in html


def test_a_row_without_the_baseline_is_not_compared_and_not_counted(seeded_sweep):
    from bicc_lab.spec import load_sweep
    from bicc_lab.sweep.seeds import NOT_COMPARED, policy_state, widened

    text = SWEEP + "exclude:\n  - {variant: dr_grpo, bicc.enabled: false, rcc.enabled: false}\n"
    seeded_sweep.write_text(text)
    full = widened(load_sweep(seeded_sweep))
    state = policy_state(full, fake_statuses(full, {}))
    rows = {r.row: r for r in state.rows}
    assert rows["tiny/dr_grpo"].status == NOT_COMPARED and "no 'base' cell" in rows["tiny/dr_grpo"].reason
    assert state.n_comparisons == 3 and state.alpha_each == pytest.approx(0.05 / 3)
    assert len(state.needed) == 8 + 6  # grpo's 4 arms and dr_grpo's 3, at the 2 starting seeds


def test_plan_and_status_json_carry_the_policy(seeded_sweep, tmp_path):
    import json

    from typer.testing import CliRunner

    from bicc_lab.cli.main import app

    common = ["--runs-dir", str(tmp_path / "runs"), "--set", f"tracking.uri=sqlite:///{tmp_path / 'm.db'}"]
    for command in ("plan", "status"):
        result = CliRunner().invoke(app, ["sweep", command, str(seeded_sweep), *common, "--json"])
        assert result.exit_code == 0, result.output
        data = json.loads(result.output)
        assert [r["status"] for r in data["seed_policy"]["rows"]] == [WAITING, WAITING]
        assert data["seed_policy"]["alpha_each"] == pytest.approx(0.05 / 6)
    plan = CliRunner().invoke(app, ["sweep", "plan", str(seeded_sweep), *common])
    assert "seed policy: 2 to 6 seeds per row, +2 at a time" in plan.output
    assert "tiny/grpo: 2 seeds, waiting (8 cell(s) of the first 2 seeds not finished)" in plan.output


def test_the_quickstart_seeds_sweep_starts_with_the_quickstarts_seeds():
    from bicc_lab.spec import load_sweep
    from bicc_lab.sweep.seeds import widened

    root = Path(__file__).resolve().parents[1] / "sweeps"
    seeded = load_sweep(root / "quickstart_seeds.yaml")
    plain = load_sweep(root / "quickstart.yaml")
    policy = seeded.seed_policy
    assert policy.first_seeds == (0, 1) and policy.looks() == [2, 4, 6, 8, 10, 12]
    assert policy.arms == ("rcc", "bicc", "bicc+rcc") and policy.metric == "avg@4"
    # the same 16 first cells as the quickstart (the sweep's name is not part of a cell id)
    assert [c.cell_id for c in seeded.cells] == [c.cell_id for c in plain.cells]
    assert len(widened(seeded).cells) == 2 * 4 * 12
