#!/usr/bin/env bash
# The embedded default, run by the README's first command from fresh copies of two trees, one after the other
# on this machine: each pipeline's wall time (set-up apart), their ratio, and each run's pass@1 comparisons.
# Machines here differ by up to 2x from day to day: only a side-by-side ratio says which default is faster.
#   bash bench/default_side_by_side.sh OLD_COMMIT [NEW]   (NEW: a commit, or empty for this working tree)
# Copies go under ${TMPDIR:-/tmp}/mathsft-default-bench (kept, to read the results; about 6 GB each).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
old=${1:?usage: bench/default_side_by_side.sh OLD_COMMIT [NEW_COMMIT]}
new=${2:-}
work=${TMPDIR:-/tmp}/mathsft-default-bench
rm -rf "$work" && mkdir -p "$work"

# copy DIR REF: the tree at REF (a commit), or this working tree's tracked and unignored files.
copy() {
    mkdir "$1"
    if [[ -n $2 ]]; then
        git -C "$repo" archive "$2" | tar -x -C "$1"
    else
        (cd "$repo" && git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf -) | tar -x -C "$1"
    fi
}

# run LABEL DIR: set up, then the pipeline (timed alone); print the pipeline's wall seconds.
run() {
    local label=$1 dir=$2
    echo "$label: set-up (load average $(cut -d' ' -f1-3 /proc/loadavg))" >&2
    (cd "$dir" && bash setup.sh >"$dir.setup.log" 2>&1)
    echo "$label: pipeline" >&2
    local start end
    start=$(date +%s.%N)
    if ! (cd "$dir" && . .venv/bin/activate && snakemake --profile profiles/local >"$dir.log" 2>&1); then
        tail -n 40 "$dir.log" >&2
        echo "$label: the pipeline failed" >&2
        exit 1
    fi
    end=$(date +%s.%N)
    awk -v a="$start" -v b="$end" 'BEGIN {printf "%.1f", b - a}'
}

copy "$work/old" "$old"
copy "$work/new" "$new"
old_s=$(run "old ($old)" "$work/old")
new_s=$(run "new (${new:-working tree})" "$work/new")
echo
echo "pipeline wall time: old ($old) $old_s s, new (${new:-working tree}) $new_s s, new/old $(awk -v a="$old_s" -v b="$new_s" 'BEGIN {printf "%.3f", b / a}')"
for side in old new; do
    echo
    echo "== $side: results/eval.json comparisons (pass@1 delta, 95% CI, p)"
    "$work/new/.venv/bin/python" - "$work/$side/results/eval.json" <<'EOF'
import json
import sys

document = json.load(open(sys.argv[1]))
for label, model in document["models"].items():
    for bench, metrics in model["benchmarks"].items():
        print(f"  {label:8} {bench:18} pass@1 {100 * metrics['pass@1']:5.1f} ± {100 * metrics['pass@1_stderr']:.1f}"
              f"  ({metrics['problems']} problems x {metrics['samples_per_problem']})")
for row in document.get("comparisons", []):
    low, high = row["ci95"]
    print(f"  {row['model']} vs {row['baseline']} {row['benchmark']}: {100 * row['pass@1_delta']:+.1f}"
          f" [{100 * low:+.1f}, {100 * high:+.1f}] p={row['p_value']:.3g}")
EOF
done
