"""Counts and survivors of a cosmic-ray session, tested mutants only.

cosmic-ray's own report counts the mutants a filter skipped (operators, lines, sample.py)
as complete, so its survival rate is diluted; this one separates them.

    python benchmarks/mutation/summary.py SESSION.sqlite [--diffs]
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("session")
    parser.add_argument("--diffs", action="store_true", help="print each survivor's diff")
    args = parser.parse_args()
    dump = subprocess.run([sys.executable, "-m", "cosmic_ray.cli", "dump", args.session],
                          capture_output=True, text=True, check=True).stdout
    counts: collections.Counter[str] = collections.Counter()
    survivors = []
    for line in dump.splitlines():
        item, result = json.loads(line)
        if result is None:
            counts["pending"] += 1
        elif result["worker_outcome"] == "skipped":
            reason = result["output"]  # sample.py's reasons; anything else is a cosmic-ray filter
            counts[reason if reason in ("not sampled", "in an annotation") else "filtered"] += 1
        elif result["worker_outcome"] != "normal":
            counts[f"worker {result['worker_outcome']}"] += 1
        else:
            counts[result["test_outcome"]] += 1
            if result["test_outcome"] == "survived":
                survivors.append((item["mutations"][0], result["diff"]))
    tested = counts["killed"] + counts["survived"] + counts["incompetent"]
    print(f"{args.session}: tested {tested} (killed {counts['killed']}, survived {counts['survived']}, "
          f"incompetent {counts['incompetent']}); not sampled {counts['not sampled']}, "
          f"in annotations {counts['in an annotation']}, filtered (operators, lines) {counts['filtered']}, "
          f"pending {counts['pending']}"
          + "".join(f", {k} {v}" for k, v in counts.items() if k.startswith("worker")))
    for mutation, diff in sorted(survivors, key=lambda s: (s[0]["module_path"], s[0]["start_pos"])):
        line = mutation["start_pos"][0]
        print(f"SURVIVED {mutation['module_path']}:{line} {mutation['operator_name']} in {mutation['definition_name']}")
        if args.diffs:
            print("\n".join(x for x in diff.splitlines() if x.startswith(("+", "-")) and not x.startswith(("+++", "---"))))


if __name__ == "__main__":
    main()
