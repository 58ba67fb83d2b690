"""Keep a seeded random sample of a cosmic-ray session's pending mutants; mark the rest skipped.

cosmic-ray runs every mutant it generates, and a file like ``variants.py`` has hundreds; on a
two-core machine each costs a test run (seconds for the pure functions, up to a minute for
the trainer). A fixed-seed sample keeps a run bounded and repeatable; ``summary.py`` counts
the skipped ones separately from the tested ones.

Mutants inside type annotations are skipped first: every module here has
``from __future__ import annotations``, so an annotation is never evaluated and
``Sequence[float] | np.ndarray`` -> ``Sequence[float] - np.ndarray`` cannot fail a test.

    python benchmarks/mutation/sample.py SESSION.sqlite N [--seed S]
"""

from __future__ import annotations

import argparse
import ast
import random
from pathlib import Path

from cosmic_ray.work_db import WorkDB, use_db
from cosmic_ray.work_item import WorkerOutcome, WorkResult


def annotation_spans(path: str) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(start, end) (line, column) of every annotation in a module."""
    spans = []
    for node in ast.walk(ast.parse(Path(path).read_text())):
        if isinstance(node, ast.arg | ast.AnnAssign) and node.annotation is not None:
            spans.append(node.annotation)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.returns is not None:
            spans.append(node.returns)
    return [((a.lineno, a.col_offset), (a.end_lineno, a.end_col_offset)) for a in spans]


def in_annotation(mutation, spans_by_path) -> bool:
    path = str(mutation.module_path)
    if path not in spans_by_path:
        spans_by_path[path] = annotation_spans(path)
    start = tuple(mutation.start_pos)
    return any(low <= start < high for low, high in spans_by_path[path])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("session")
    parser.add_argument("keep", type=int, help="how many pending mutants to keep")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with use_db(args.session, WorkDB.Mode.open) as db:
        spans: dict[str, list] = {}
        pending = sorted(db.pending_work_items, key=lambda item: item.job_id)
        annotated = [item.job_id for item in pending if any(in_annotation(m, spans) for m in item.mutations)]
        if annotated:
            db.set_multiple_results(annotated, WorkResult(output="in an annotation", worker_outcome=WorkerOutcome.SKIPPED))
        pending = [item for item in pending if item.job_id not in set(annotated)]
        keep = {item.job_id for item in random.Random(args.seed).sample(pending, min(args.keep, len(pending)))}
        dropped = [item.job_id for item in pending if item.job_id not in keep]
        if dropped:
            db.set_multiple_results(dropped, WorkResult(output="not sampled", worker_outcome=WorkerOutcome.SKIPPED))
        print(f"{args.session}: {len(annotated)} mutants in annotations skipped; of {len(pending)} others "
              f"{len(keep)} sampled, {len(dropped)} skipped")


if __name__ == "__main__":
    main()
