"""The tags that lead from an MLflow run back to its code and its files: `git_commit` outside a
checkout, `output_dir` on every training run (train and sweep cells alike)."""

from __future__ import annotations

import json
import subprocess
from importlib import metadata
from pathlib import Path

import bicc_lab
from bicc_lab.launch.tracked_run import run_tags
from bicc_lab.spec import load_experiment
from bicc_lab.tracking import naming

ROOT = Path(__file__).resolve().parents[1]


def test_git_commit_outside_a_checkout_is_the_commit_bicc_lab_came_from(tmp_path, monkeypatch):
    naming.git_commit.cache_clear()
    source = Path(bicc_lab.__file__).resolve().parents[1]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True).stdout.strip()
    # tmp_path is no checkout: the checkout bicc_lab is imported from (an editable install)
    assert naming.git_commit(str(tmp_path)).split("+")[0] == head
    naming.git_commit.cache_clear()

    class Dist:  # `pip install git+https://...` records the commit in direct_url.json
        def read_text(self, name):
            assert name == "direct_url.json"
            return json.dumps({"url": "https://example.org/bicc-lab.git", "vcs_info": {"vcs": "git", "commit_id": "c" * 40}})

    monkeypatch.setattr(metadata, "distribution", lambda name: Dist())
    assert naming.package_commit() == "c" * 40

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    # a wheel with neither: the version names what ran
    monkeypatch.setattr(metadata, "distribution", missing)
    monkeypatch.setattr(bicc_lab, "__file__", str(tmp_path / "site-packages" / "bicc_lab" / "__init__.py"))
    assert naming.package_commit() == f"bicc-lab=={bicc_lab.__version__}"
    naming.git_commit.cache_clear()


def test_training_run_tags_name_the_output_dir_and_a_source_commit_only_for_a_sha(tmp_path):
    config = load_experiment(ROOT / "experiments" / "tiny.yaml")
    tags = run_tags(config, digest="d", train_id="t", commit="a" * 40 + "+dirty", attempts=1, output_dir=tmp_path / "cell")
    assert tags["output_dir"] == str((tmp_path / "cell").resolve())
    assert tags["mlflow.source.git.commit"] == "a" * 40 and tags["git_commit"] == "a" * 40 + "+dirty"
    tags = run_tags(config, digest="d", train_id="t", commit="bicc-lab==0.1.0", attempts=1)
    assert "mlflow.source.git.commit" not in tags and "output_dir" not in tags and tags["git_commit"] == "bicc-lab==0.1.0"


def test_the_seeds_column_is_a_count_with_the_seeds_beside():
    from bicc_lab.report.render import seeds_cell

    assert seeds_cell("0") == "1 (0)"  # seed 0 is one seed, not none
    assert seeds_cell("0 1 2") == "3 (0 1 2)"
    assert seeds_cell("") == "0"


def test_report_of_an_experiment_of_train_runs_says_what_it_found(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from bicc_lab.cli.main import app
    from bicc_lab.tracking.single import EVAL_ROLE, TRAIN_ROLE, create_run
    from bicc_lab.tracking.store import Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri)
    for role in (TRAIN_ROLE, TRAIN_ROLE, EVAL_ROLE):
        _, run_id = create_run(tracker, "tiny-arith", role, role, {})
        tracker.set_status(run_id, "FINISHED")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["report", "tiny-arith", "--tracking-uri", uri, "--no-start", "--no-log"])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "has no finished runs" in text and "it holds 1 eval run, 2 train runs" in text, text
    assert "bicc-lab sweep run" in text


def test_a_new_eval_run_has_the_commit_version_and_output_dir_tags(tmp_path):
    from bicc_lab.cli.evaluate import _log_to_mlflow
    from bicc_lab.eval.runner import EvalResult
    from bicc_lab.tracking.store import Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    results = tmp_path / "out" / "results.json"
    results.parent.mkdir()
    results.write_text("{}")
    result = EvalResult(benchmarks={}, problems=[], config={"samples": 1}, warnings=[], seconds=1.0, samples={})
    run_id = _log_to_mlflow({"uri": uri, "new": True}, result, "tiny", [results], experiment="eval")
    tags = Tracker(uri).client.get_run(run_id).data.tags
    assert tags["role"] == "eval" and tags["model"] == "tiny"
    assert tags["output_dir"] == str(results.parent.resolve())
    assert tags["git_commit"] == naming.git_commit() and tags["bicc_lab_version"] == bicc_lab.__version__


def test_training_run_tags_say_which_launcher_and_slurm_job_ran_it(monkeypatch):
    config = load_experiment(ROOT / "experiments" / "tiny.yaml")
    for name in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(name, raising=False)
    tags = run_tags(config, digest="d", train_id="t", commit="", attempts=1)
    assert tags["launcher"] == "local" and "job_id" not in tags
    monkeypatch.setenv("SLURM_JOB_ID", "1234")
    assert run_tags(config, digest="d", train_id="t", commit="", attempts=1)["job_id"] == "1234"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "1200")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")  # a job array's task: SLURM's own 1200_3
    tags = run_tags(config, digest="d", train_id="t", commit="", attempts=1)
    assert (tags["launcher"], tags["job_id"]) == ("slurm", "1200_3")
