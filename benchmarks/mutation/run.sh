#!/usr/bin/env bash
# Mutation testing of one target with cosmic-ray, on a seeded sample of its mutants.
#   benchmarks/mutation/run.sh TARGET [N] [SEED]   TARGET: algorithms | stats | trainer
# Run from the repository root with the project's virtualenv active (or PYTHON=...). The
# session (mutation-TARGET.sqlite) and the report land in $MUTATION_OUT (default
# .mutation/). cosmic-ray edits the source file in place for each mutant and restores it;
# do not edit the tree while it runs.
set -euo pipefail
target=$1; keep=${2:-40}; seed=${3:-0}
here=$(cd "$(dirname "$0")" && pwd)
config=$here/$target.toml
bin=$(dirname "$(command -v "${PYTHON:-python}")")
out=${MUTATION_OUT:-.mutation}
mkdir -p "$out"
session=$out/mutation-$target.sqlite
rm -f "$session"
export PATH=$bin:$PATH PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
cosmic-ray init "$config" "$session"
cr-filter-operators "$session" "$config"
if grep -q "line-filter" "$config"; then cr-filter-lines --config "$config" "$session"; fi
python "$here/sample.py" "$session" "$keep" --seed "$seed"
start=$(date +%s)
cosmic-ray exec "$config" "$session"
echo "exec: $(( $(date +%s) - start )) s"
python "$here/summary.py" "$session" --diffs
git diff --quiet -- bicc_lab || { echo "source left mutated: git checkout -- bicc_lab" >&2; exit 1; }
