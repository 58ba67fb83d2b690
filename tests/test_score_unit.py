"""One unit for scores: percent points in every output, and stores of older versions
(fractions, no ``score_unit`` tag) read the same as before.

Cheap: synthetic MLflow stores and eval.json files, the user commands through CliRunner.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from bicc_lab.cli.main import app
from bicc_lab.eval.runner import BenchmarkResult, EvalResult
from bicc_lab.report.synthetic import SyntheticCell, fill_store
from bicc_lab.tracking.naming import (
    Tag,
    is_score_key,
    run_score_scale,
    scores_as_fractions,
)
from bicc_lab.units import SCORE_UNIT, is_score

runner = CliRunner()


def test_score_names_and_the_tag_say_which_unit_a_run_holds():
    assert all(is_score(n) for n in ("avg@4", "avg_at_4", "pass@1", "pass_at_8", "maj@16"))
    assert not any(is_score(n) for n in ("n", "seconds", "reward", "avg"))
    assert is_score_key("eval/arith/avg_at_4") and not is_score_key("eval/arith/n")
    assert not is_score_key("eval/seconds") and not is_score_key("rewards/avg_at_4")
    metrics = {"eval/arith/avg_at_4": 62.5, "eval/arith/n": 8.0, "reward": 0.5}
    assert scores_as_fractions(metrics, {Tag.SCORE_UNIT: SCORE_UNIT}) == {
        "eval/arith/avg_at_4": 0.625, "eval/arith/n": 8.0, "reward": 0.5}
    assert scores_as_fractions({"eval/arith/avg_at_4": 0.625}, {}) == {"eval/arith/avg_at_4": 0.625}  # older run
    assert run_score_scale({}, ()) == 100.0  # nothing logged yet: points
    assert run_score_scale({}, {"eval/arith/avg_at_4": 0.5}) == 1.0  # an older run keeps fractions
    assert run_score_scale({Tag.SCORE_UNIT: SCORE_UNIT}, {"eval/arith/avg_at_4": 50.0}) == 100.0


def _result(avg: float = 0.625) -> EvalResult:
    bench = BenchmarkResult("arith", "bicc_arith", 8, 4, {"avg@4": avg, "pass@1": avg, "pass@4": 0.75, "maj@4": 0.5},
                            lm_eval={"avg_at_k,take_first_k": avg})
    return EvalResult({"arith": bench}, problems=[], config={}, seconds=1.0)


def test_eval_json_is_in_points_and_older_files_read_the_same(tmp_path):
    path = _result().to_json(tmp_path / "eval.json")
    data = json.loads(path.read_text())
    assert data["score_unit"] == "percent"
    assert data["benchmarks"]["arith"]["metrics"] == {"avg@4": 62.5, "pass@1": 62.5, "pass@4": 75.0, "maj@4": 50.0}
    assert data["benchmarks"]["arith"]["lm_eval"] == {"avg_at_k,take_first_k": 0.625}  # lm-eval's own: fractions
    assert data["benchmarks"]["arith"]["n"] == 8
    again = EvalResult.from_json(path)
    assert again.benchmarks["arith"].metrics == _result().benchmarks["arith"].metrics  # back in fractions
    old = dict(data, benchmarks={"arith": dict(data["benchmarks"]["arith"], metrics={"avg@4": 0.625})})
    del old["score_unit"]  # a file of an older version: fractions
    assert EvalResult.from_dict(old).benchmarks["arith"].metrics == {"avg@4": 0.625}


def test_eval_table_shows_points_with_the_unit_in_the_header(capsys):
    from bicc_lab.eval.runner import print_table

    print_table(_result())
    out = capsys.readouterr().out
    assert "avg@4 (%)" in out and "maj@4 (%)" in out and "62.5" in out and "0.625" not in out


def test_a_run_logs_points_and_a_run_with_older_scores_keeps_fractions(tmp_path):
    from bicc_lab.tracking.single import log_evaluation
    from bicc_lab.tracking.store import Tracker

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = tracker.ensure_experiment("u")
    new = tracker.create_cell_run(exp, None, "new", {})
    log_evaluation(tracker, new, _result(), step=2)
    run = tracker.client.get_run(new)
    assert run.data.tags[Tag.SCORE_UNIT] == SCORE_UNIT
    assert run.data.metrics["eval/arith/avg_at_4"] == pytest.approx(62.5)
    assert run.data.metrics["eval/arith/n"] == 8
    assert tracker.get(new).metrics["eval/arith/avg_at_4"] == pytest.approx(0.625)  # readers: fractions
    # a run an older version logged fractions to: the next evaluation keeps its unit
    old = tracker.create_cell_run(exp, None, "old", {})
    from mlflow.entities import Metric

    tracker.log_metrics(old, [Metric("eval/arith/avg_at_4", 0.5, 0, 1)])
    log_evaluation(tracker, old, _result(), step=2)
    run = tracker.client.get_run(old)
    assert Tag.SCORE_UNIT not in run.data.tags
    assert run.data.metrics["eval/arith/avg_at_4"] == pytest.approx(0.625)
    assert tracker.get(old).metrics["eval/arith/avg_at_4"] == pytest.approx(0.625)


# --------------------------------------------------------------------------- report


def _cells(unit_of) -> list[SyntheticCell]:
    """grpo × (base, bicc) × 3 seeds on one benchmark, k = 2; ``unit_of(i)`` per cell."""
    cells = []
    for i, (arm, seed) in enumerate((a, s) for a in ("base", "bicc") for s in range(3)):
        counts = [1] * 4 + [2] * (seed + (2 if arm == "bicc" else 0))  # 4..9 problems
        correct = [[j < c for j in range(2)] for c in counts]
        cells.append(SyntheticCell("org/tiny", "grpo", arm, seed, correct={"arith": correct},
                                   score_unit=unit_of(i)))
    return cells


def _report(tmp_path: Path, name: str, cells: list[SyntheticCell]) -> tuple[str, pd.DataFrame]:
    uri = f"sqlite:///{tmp_path / name / 'mlflow.db'}"
    (tmp_path / name).mkdir()
    fill_store(uri, name, cells, sweep=name)
    out = tmp_path / name / "report"
    result = runner.invoke(app, ["report", name, "--tracking-uri", uri, "--out-dir", str(out), "--format", "md,csv",
                                 "--no-plots", "--no-log", "--no-start", "--resamples", "200"])
    assert result.exit_code == 0, result.output
    return (out / "ablation.md").read_text(), pd.read_csv(out / "ablation.csv")


def test_report_reads_old_unit_and_new_unit_runs_to_the_same_table(tmp_path):
    """A store of an older version (fractions, no tag), one of this version (points, tagged)
    and one that mixes them give the same tables, in points."""
    old_md, old_csv = _report(tmp_path, "old", _cells(lambda i: None))
    new_md, new_csv = _report(tmp_path, "new", _cells(lambda i: SCORE_UNIT))
    mixed_md, mixed_csv = _report(tmp_path, "mixed", _cells(lambda i: SCORE_UNIT if i % 2 else None))

    def body(md: str) -> str:  # the tables, without the header naming the store
        return md.split("\n|", 1)[1]

    assert body(old_md) == body(new_md) == body(mixed_md)
    pd.testing.assert_frame_equal(old_csv, new_csv)
    pd.testing.assert_frame_equal(old_csv, mixed_csv)
    base = old_csv[(old_csv.arm == "base") & (old_csv.benchmark == "arith")].iloc[0]
    # seeds: 4/8 + 0, 4/10... avg@2 per seed = mean over problems of c/2
    per_seed = [(4 * 0.5 + s * 1.0) / (4 + s) for s in range(3)]
    assert base["mean"] == pytest.approx(100 * sum(per_seed) / 3) and base["unit"] == "percent"
    assert "in %" in old_md


# --------------------------------------------------------------------------- sweep status


def test_sweep_status_json_is_in_points_for_old_and_new_runs(tmp_path):
    from mlflow.entities import Metric

    from bicc_lab.spec import load_sweep
    from bicc_lab.sweep.context import SweepContext
    from bicc_lab.tracking.store import Tracker

    (tmp_path / "base.yaml").write_text(
        "name: t\nmodel:\n  name: tiny\n  tiny: {layers: 2, hidden: 32, heads: 2, max_warmup_steps: 0}\n"
        "train: {max_steps: 2, num_generations: 4, per_device_train_batch_size: 8, max_completion_length: 4}\n"
        "eval: {enabled: false}\n"
    )
    path = tmp_path / "s.yaml"
    path.write_text("base: base.yaml\ngrid: {seed: [0, 1]}\n")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ctx = SweepContext.of(load_sweep(path, [f"tracking.uri={uri}"]), tmp_path / "runs")
    tracker = Tracker(uri)
    exp = tracker.ensure_experiment(ctx.experiment)
    parent = tracker.ensure_parent(exp, ctx.sweep.name, {})
    values = {0: ({}, 0.5), 1: ({Tag.SCORE_UNIT: SCORE_UNIT}, 62.5)}  # an older run, a run of now
    for cell in ctx.sweep.cells:
        tags, value = values[cell.config.seed]
        run = tracker.create_cell_run(exp, parent, cell.name, {Tag.CONFIG_HASH: cell.config_hash, **tags})
        tracker.log_metrics(run, [Metric("eval/arith/avg_at_4", value, 0, 2), Metric("reward", 0.75, 0, 2)])
        tracker.set_status(run, "FINISHED")
    args = ["--runs-dir", str(tmp_path / "runs"), "--set", f"tracking.uri={uri}"]
    result = runner.invoke(app, ["sweep", "status", str(path), *args, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["score_unit"] == "percent"
    by_seed = {c["name"].rsplit("/s", 1)[1]: c for c in data["cells"]}
    assert by_seed["0"]["eval"] == {"eval/arith/avg_at_4": 50.0}
    assert by_seed["1"]["eval"] == {"eval/arith/avg_at_4": 62.5}
    assert by_seed["0"]["reward"] == 0.75  # a training reward is not a score: as logged
    table = runner.invoke(app, ["sweep", "status", str(path), *args])
    assert table.exit_code == 0, table.output
    assert "arith avg@4 (%)" in table.output and "50.0" in table.output and "62.5" in table.output


# --------------------------------------------------------------------------- tune, seeds


def test_tune_shows_eval_objectives_in_points():
    from bicc_lab.tune.compare import RunnerUp, objective_scale, objective_unit
    from bicc_lab.tune.runner import fmt_value

    assert objective_scale("eval/arith/avg_at_4") == 100.0 and objective_unit("eval/arith/avg_at_4") == "percent"
    assert objective_scale("reward") == 1.0 and objective_unit("reward") is None
    assert fmt_value("eval/arith/avg_at_4", 0.625) == "62.5 (%)" and fmt_value("reward", 0.625) == "0.625"
    runner_up = RunnerUp(3, 0.5, 0.125, 0.05, True, "ahead")
    assert runner_up.as_dict(100.0) | {"verdict": ""} == {
        "trial": 3, "value": 50.0, "gap": 12.5, "bound": 5.0, "distinguishable": True, "verdict": ""}


def test_seed_policy_half_width_in_points_and_the_older_fraction():
    from bicc_lab.spec.seeds import SeedPolicy, SeedPolicyConfig

    def policy(**kw) -> SeedPolicy:
        return SeedPolicy(SeedPolicyConfig(max=6, **kw), (0, 1), "base", ("bicc",), "arith", "avg@4")

    assert policy(half_width_points=3).half_width == pytest.approx(0.03)
    assert policy(half_width=0.03).half_width == pytest.approx(0.03)  # sweep files of older versions
    for kw in ({}, {"half_width": 0.03, "half_width_points": 3}):
        with pytest.raises(ValueError, match="half_width_points"):
            SeedPolicyConfig(max=6, **kw)


def test_every_score_column_of_the_ablation_csv_is_in_points_the_start_column_included():
    """The ablation CSV's ``start`` (the model before training) is a score like ``mean``: a
    report once wrote it in fractions beside means in points (0.41875 next to 69.5)."""
    from bicc_lab.report.build import _ABLATION_SCORES, _in_points

    frame = pd.DataFrame({"metric": ["avg_at_4"], "mean": [0.695], "delta": [-0.025], "start": [0.41875]})
    converted = _in_points(frame, _ABLATION_SCORES, True)
    assert converted.loc[0, "start"] == pytest.approx(41.875)
    assert converted.loc[0, "mean"] == pytest.approx(69.5) and converted.loc[0, "unit"] == "percent"
