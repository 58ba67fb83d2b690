"""`bicc-lab eval --tasks <an lm-eval task>`: hand the evaluation to lm-eval's own `run`.

Our benchmarks are graded by bicc-lab's runner (avg@k, pass@k, the per-problem table); any
other task is lm-eval's, with lm-eval's metrics, printout and output files. Rather than
re-implement what `lm-eval run` does with its flags, the same flags are passed to it, so
that `bicc-lab eval` and `lm-eval run` cannot drift apart on those tasks. Only the model
is ours to resolve: ``--model tiny`` (built offline) becomes a directory first.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bicc_lab.cli._common import fail


def lm_eval_argv(
    *,
    model_path: str,
    backend: str,
    model_args: dict[str, Any],
    tasks: list[str],
    include_path: Path | None = None,
    limit: str | None = None,
    samples: str | None = None,
    num_fewshot: int | None = None,
    gen_kwargs: str | None = None,
    apply_chat_template: bool | str = False,
    system_instruction: str | None = None,
    batch_size: str | None = None,
    device: str | None = None,
    seed: str | None = None,
    output_path: Path | None = None,
    log_samples: bool = False,
    trust_remote_code: bool = False,
) -> list[str]:
    """The ``lm-eval run`` argument list that means what these ``bicc-lab eval`` flags mean."""
    argv = [
        "run", "--model", backend,
        # JSON keeps a value with commas in one piece (lm-eval reads either form)
        "--model_args", json.dumps({"pretrained": model_path, **model_args}),
        "--tasks", ",".join(tasks),
    ]
    for flag, value in (
        ("--include_path", include_path), ("--limit", limit), ("--samples", samples),
        ("--num_fewshot", num_fewshot), ("--gen_kwargs", gen_kwargs),
        ("--system_instruction", system_instruction), ("--batch_size", batch_size),
        ("--device", device), ("--seed", seed), ("--output_path", output_path),
    ):
        if value is not None:
            argv += [flag, str(value)]
    if apply_chat_template is True:
        argv.append("--apply_chat_template")
    elif apply_chat_template:
        argv += ["--apply_chat_template", str(apply_chat_template)]
    if log_samples:
        argv.append("--log_samples")
    if trust_remote_code:
        argv.append("--trust_remote_code")
    return argv


def check_tasks(tasks: list[str], include_path: Path | None) -> None:
    """Every task is one lm-eval knows (its own, or one in --include_path): one line and
    exit 2 otherwise, before any model loads (lm-eval would fail after loading it)."""
    if include_path is not None and not include_path.is_dir():
        fail(f"--include_path {include_path}: no such directory")
    from lm_eval.tasks import TaskManager

    from bicc_lab.eval.data import benchmark_names

    manager = TaskManager(include_path=str(include_path) if include_path else None)
    unknown = [t for t in tasks if not manager.match_tasks([t])]
    if unknown:
        fail(
            f"--tasks: unknown task {', '.join(map(repr, unknown))}: not one of our benchmarks "
            f"({', '.join(benchmark_names())}) nor an lm-eval task (`lm-eval ls tasks` lists them"
            + (f"; {include_path} was searched too)" if include_path else "; add yours with --include_path DIR)")
        )


def run_lm_eval(*, model: str, **flags: Any) -> None:
    """Check the tasks, resolve the model, and run ``lm-eval run`` in this process."""
    import os

    check_tasks(flags["tasks"], flags.get("include_path"))
    from bicc_lab.models.loading import resolve_model_path

    argv = lm_eval_argv(model_path=str(resolve_model_path(model)), **flags)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from lm_eval._cli import HarnessCLI
    from lm_eval.utils import setup_logging

    setup_logging()
    cli = HarnessCLI()
    cli.execute(cli._parser.parse_args(argv))
