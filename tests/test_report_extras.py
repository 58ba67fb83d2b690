"""The report's starting-model column, failed rows, curves (log scale, transfer metrics),
`--open`, relative paths, and piped tables that keep every column.

The store lives in a fake repository (a folder with `.git`), as the quickstart's does:
grpo has two finished baseline seeds, one finished +BICC seed and one FAILED +BICC seed,
and a +RCC cell that failed once and then finished (a retry: not failed); every dapo run
failed. The per-problem scores are chosen by hand; the numbers below follow from them.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bicc_lab.report import (
    build_ablation,
    build_report,
    display_uri,
    load_problem_scores,
    load_runs,
)
from bicc_lab.report.plots import spans_decades
from bicc_lab.report.render import render_markdown
from bicc_lab.report.start import start_cache_file, start_key, start_result, start_scores
from bicc_lab.report.synthetic import SyntheticCell, fill_store
from bicc_lab.spec import ExperimentConfig

EXP = "ext"
GRPO = ("tiny", "grpo")
DAPO = ("tiny", "dapo")
BIN = Path(sys.executable).with_name("bicc-lab")
OOM = "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"


def _config() -> ExperimentConfig:
    return ExperimentConfig(name="ext", eval={"benchmarks": ["arith_test"], "samples": 4, "limit": 10})


def _problems(counts: list[int], k: int = 4) -> list[list[bool]]:
    return [[j < c for j in range(k)] for c in counts]


def _cells() -> list[SyntheticCell]:
    config = _config().model_dump(mode="json")
    grad_var = [(s, 10.0 ** (s - 2)) for s in range(1, 6)]  # 0.1 ... 1000: four decades
    cells = []

    def add(variant, arm, seed, counts, status="FINISHED", **kw):
        history = {"reward": [(s, 0.1 * s) for s in range(1, 6)], "diagnostics/grad_variance": grad_var}
        if "bicc" in arm:
            history |= {"transfer/grad_cosine": [(2, -0.05), (4, 0.1)],
                        "bicc/logp_shift_correct": [(s, -0.1 * s) for s in range(1, 6)]}
        cells.append(SyntheticCell("tiny", variant, arm, seed, correct={"arith": _problems(counts)},
                                   history=history, status=status, config=config, **kw))

    add("grpo", "base", 0, [2] * 10)  # 0.5
    add("grpo", "base", 1, [3] * 5 + [2] * 5)  # 0.625
    add("grpo", "bicc", 0, [1] * 10)  # 0.25
    add("grpo", "bicc", 1, [4] * 10, status="FAILED", error=f"Traceback ...\n  ...\n{OOM}\n")
    add("grpo", "rcc", 0, [0] * 10, status="FAILED", config_hash="retried", error="KeyboardInterrupt")
    add("grpo", "rcc", 0, [2] * 10, config_hash="retried")  # the retry finished: not failed
    add("dapo", "base", 0, [1] * 10, status="FAILED", error="ValueError: nan loss")
    add("dapo", "bicc", 0, [1] * 10, status="KILLED")
    return cells


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("repo")
    (root / ".git").mkdir()  # project_root() stops here
    uri = f"sqlite:///{root / 'mlflow.db'}"
    fill_store(uri, EXP, _cells(), sweep=EXP)
    return {"root": root, "uri": uri}


@pytest.fixture(scope="module")
def run_set(repo):
    return load_runs(EXP, repo["uri"])


def test_failed_cells_are_rows_marked_failed(run_set):
    failed = run_set.failed.set_index(["variant", "arm"])
    assert sorted(failed.index) == [("dapo", "base"), ("dapo", "bicc"), ("grpo", "bicc")]  # not the retried rcc
    assert failed.loc[("grpo", "bicc"), "error"] == OOM  # the error's last line
    assert failed.loc[("dapo", "bicc"), "status"] == "KILLED"

    table = build_ablation(run_set, problems=load_problem_scores(run_set), n_resamples=1000)
    assert table.rows == [GRPO, DAPO]  # dapo has no finished run and still has its row
    assert table.cell(DAPO, "arith", "base") is None
    assert table.failed_label(DAPO, "base") == "failed" and table.failed_label(DAPO, "bicc") == "killed"
    assert table.failed_label(GRPO, "bicc") == "failed" and table.cell(GRPO, "arith", "bicc").seeds == (0,)
    assert table.failed_label(GRPO, "rcc") is None and table.cell(GRPO, "arith", "rcc").stat.mean == 0.5
    assert any("tiny / grpo +BICC: seed 1 FAILED (the other seeds are shown)" in n for n in table.notes)
    assert any("tiny / dapo baseline: seed 0 FAILED (shown as failed)" in n for n in table.notes)

    md = render_markdown(table, title="t")
    dapo_line = next(line for line in md.splitlines() if line.startswith("| tiny | dapo |"))
    assert dapo_line == "| tiny | dapo | failed | — | killed |"  # baseline, +RCC (no run at all), +BICC
    assert "## Failed runs" in md and OOM in md and "| tiny | dapo | baseline | 0 | failed |" in md
    frame = table.to_frame().set_index(["variant", "arm"])
    assert frame.loc[("dapo", "base"), "status"] == "failed"
    assert frame.loc[("grpo", "bicc"), "failed_runs"] == "seed 1 FAILED"
    assert frame.loc[("grpo", "base"), "status"] == "finished"


def test_start_column_from_the_cache(run_set, tmp_path):
    config = _config()
    cache = tmp_path / "cache"
    # nothing cached and nothing computed: the table says why there is no start
    empty = start_scores(run_set, cache_dir=cache, compute="none")
    assert empty.scores == {} and any("not evaluated yet" in n for n in empty.notes)
    # a report never builds a tiny model (minutes of warm-start): it says so instead
    unbuilt = start_scores(run_set, cache_dir=cache, compute="tiny")
    assert unbuilt.scores == {} and any("the tiny model is not built" in n for n in unbuilt.notes)
    # by default a hub model is not evaluated behind the user's back (GPU-hours): it is named
    hub = ExperimentConfig(name="ext", model={"name": "org/some-7b"}, eval=_config().eval.model_dump())
    grpo_hashes = {h: hub for h in run_set.runs.loc[run_set.runs.variant == "grpo", "config_hash"]}
    named = start_scores(run_set, sweep_configs=grpo_hashes, cache_dir=cache, compute="tiny")
    assert named.scores == {} and named.evaluated == 0
    assert ("start: org/some-7b not evaluated yet; `bicc-lab report --start` evaluates it once "
            "(arith_test, 4 samples per problem, first 10 problems)") in named.notes

    path = start_cache_file(config, cache)
    assert path == cache / "start" / f"{start_key(config)}.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"benchmarks": {"arith": {"metrics": {"avg@4": 0.55, "pass@1": 0.55}}}}))
    found = start_scores(run_set, cache_dir=cache, compute="none")
    assert found.scores == {GRPO: {"arith": 0.55}, DAPO: {"arith": 0.55}}  # dapo from its failed runs' config
    assert (found.cached, found.evaluated) == (1, 0)  # one model and eval setting: read once

    table = build_ablation(run_set, start=found.scores, n_resamples=1000)
    assert table.start == {(GRPO, "arith"): 0.55, (DAPO, "arith"): 0.55}
    assert not table.below_start(table.cell(GRPO, "arith", "base"))  # 0.5625
    assert table.below_start(table.cell(GRPO, "arith", "bicc"))  # 0.25
    md = render_markdown(table, title="t")
    assert "| Model | Variant | arith start | arith baseline |" in md
    grpo_line = next(line for line in md.splitlines() if line.startswith("| tiny | grpo |"))
    assert grpo_line.startswith("| tiny | grpo | 55.0 | **56.2") and "| 25.0↓" in grpo_line
    assert "start: the model before training" in md and "↓: below it" in md


def test_start_key_follows_the_model_and_the_eval_settings():
    base = _config()
    assert start_key(base) == start_key(base.model_copy(update={"seed": 7}))  # one evaluation for every seed
    more = ExperimentConfig(name="ext", eval={"benchmarks": ["arith_test"], "samples": 8, "limit": 10})
    other_model = ExperimentConfig(name="ext", model={"name": "tiny:nano"},
                                   eval={"benchmarks": ["arith_test"], "samples": 4, "limit": 10})
    assert len({start_key(base), start_key(more), start_key(other_model)}) == 3
    assert start_key(base) == start_key(base.model_copy(update={"variant": "dapo"}))


@pytest.mark.slow
def test_the_starting_model_is_evaluated_once_then_read_from_the_cache(untrained_tiny_dir, tmp_path):
    config = ExperimentConfig(name="s", model={"name": str(untrained_tiny_dir)},
                              eval={"benchmarks": ["arith_test"], "samples": 2, "limit": 3, "max_new_tokens": 4})
    said = []
    payload, fresh = start_result(config, cache_dir=tmp_path, say=said.append)
    assert fresh and said and "once" in said[0]
    arith = payload["benchmarks"]["arith"]
    assert (arith["n"], arith["k"]) == (3, 2) and 0.0 <= arith["metrics"]["avg@2"] <= 1.0
    assert start_cache_file(config, tmp_path).is_file()
    again, fresh = start_result(config, cache_dir=tmp_path, say=said.append)
    assert not fresh and again == payload and len(said) == 1


def test_log_scale_and_transfer_curves(run_set):
    assert spans_decades([0.1, 1.0, 10.0, 1000.0]) and not spans_decades([1.0, 5.0, 50.0])
    assert not spans_decades([-1.0, 10.0, 1000.0])  # a log axis needs positive values
    report = build_report(run_set, n_resamples=200)
    plots = {p.name: p for p in report.plots}
    assert {"curve_reward", "curve_diagnostics_grad_variance", "curve_transfer_grad_cosine",
            "curve_bicc_logp_shift_correct", "accuracy"} <= set(plots)
    assert "log scale" in plots["curve_diagnostics_grad_variance"].caption
    assert "log scale" not in plots["curve_reward"].caption
    assert "clipped to [0, 100]" in plots["accuracy"].caption


def test_display_uri_is_relative_inside_the_repository(tmp_path):
    assert display_uri(f"sqlite:///{tmp_path}/mlflow.db", tmp_path) == "sqlite:///mlflow.db"
    assert display_uri(f"sqlite:///{tmp_path}/a/b.db", tmp_path) == "sqlite:///a/b.db"
    assert display_uri("sqlite:////elsewhere/m.db", tmp_path) == "sqlite:////elsewhere/m.db"
    assert display_uri("sqlite:///rel.db", tmp_path) == "sqlite:///rel.db"
    assert display_uri("https://user:secret@mlflow.example:5000/", tmp_path) == "https://mlflow.example:5000/"


def test_cli_report_piped_open_and_relative_paths(repo, tmp_path):
    """The CLI as a user pipes it (COLUMNS=40, no terminal): every column of every table is
    printed, the report names the store relative to the repository, and --open hands
    report.html to $BROWSER."""
    root = repo["root"]
    browser = tmp_path / "fake-browser"
    opened = tmp_path / "opened.txt"
    browser.write_text(f"#!/bin/sh\necho \"$1\" > {opened}\n")
    browser.chmod(0o755)
    env = dict(os.environ, COLUMNS="40", BROWSER=str(browser), BICC_LAB_CACHE=str(tmp_path / "cache"))
    env.pop("MLFLOW_TRACKING_URI", None)
    out = subprocess.run(
        [str(BIN), "report", EXP, "--tracking-uri", repo["uri"], "--format", "md,html", "--no-plots",
         "--no-log", "--resamples", "100", "--no-start", "--open"],
        cwd=root, env=env, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    for header in ("Model", "Variant", "baseline", "+RCC", "+BICC", "Arm", "Runs", "Wall time", "Step time",
                   "Tokens/s", "Step-time ratio", "Benchmark", "Problems", "Seed", "Status", "Error"):
        assert header in out.stdout, header
    assert OOM in out.stdout  # the failed-runs table keeps its long error column
    target = root / "reports" / EXP
    assert "wrote 3 files to reports/ext" in out.stdout
    assert opened.read_text().strip() == (target / "report.html").resolve().as_uri()
    md = (target / "ablation.md").read_text()
    html = (target / "report.html").read_text()
    assert "MLflow experiment ext at sqlite:///mlflow.db (relative to the repository root)" in md
    assert f"finished runs of MLflow experiment 'ext' from {repo['uri']}" in out.stdout  # the store it read
    assert "--tracking-uri sqlite:///mlflow.db" in md  # the command line too
    for text in (md, html):
        assert str(root) not in text and str(tmp_path) not in text


def test_cli_open_needs_html(repo):
    from typer.testing import CliRunner

    from bicc_lab.cli.main import app

    result = CliRunner().invoke(app, ["report", EXP, "--tracking-uri", repo["uri"], "--format", "md", "--open"])
    assert result.exit_code == 2 and "--open shows report.html" in result.output


def test_intervals_of_two_seed_cells_come_from_the_bootstrap(run_set):
    """grpo baseline: seeds 0.5 and 0.625; a t-interval would be ±0.79 (t_{0.975,1} = 12.7).
    The bootstrap over problems and seeds stays inside [0.5, 0.75]: seed 0 scores 0.5 on
    every problem, seed 1 scores 0.75 on half of them and 0.5 on the others, so no resample
    can fall below 0.5 or above 0.75."""
    table = build_ablation(run_set, problems=load_problem_scores(run_set), n_resamples=2000)
    cell = table.cell(GRPO, "arith", "base")
    assert cell.stat.method == "bootstrap" and cell.stat.mean == pytest.approx(0.5625)
    assert 0.5 - 1e-12 <= cell.stat.low < cell.stat.mean < cell.stat.high <= 0.75 + 1e-12
    t_half = 12.706204736 * (0.125 / math.sqrt(2)) / math.sqrt(2)
    assert cell.stat.high - cell.stat.low < t_half
    assert np.isfinite(cell.stat.std)


def test_a_report_names_the_tiny_build_by_its_weights(tmp_path):
    """Two machines compare their quickstart reports by the line naming the tiny model's
    weights: the cache key, the weights hash and how it was built."""
    from bicc_lab.models.tiny import build_tiny_model, cache_key, read_record
    from bicc_lab.report.start import tiny_provenance

    tiny = {"layers": 1, "hidden": 16, "heads": 2, "kv_heads": 1, "intermediate": 32, "target_accuracy": 0.0}
    config = ExperimentConfig(name="ext", model={"name": "tiny", "tiny": tiny})
    assert tiny_provenance(config, tmp_path) is None  # not built: nothing to name
    path = build_tiny_model(config.model.tiny, tmp_path, progress=False)
    weights = read_record(path)["weights_sha256"]
    line = tiny_provenance(config, tmp_path)
    assert line.startswith(f"model tiny: tiny build {cache_key(config.model.tiny)}, weights sha256 {weights[:16]}")
    assert "1 torch thread" in line
    assert tiny_provenance(ExperimentConfig(name="ext", model={"name": "org/some-7b"}), tmp_path) is None
