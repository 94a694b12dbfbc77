#!/usr/bin/env bash
# Set-up time from a fresh copy with empty pip and uv caches, side by side in one session: the pip set-up of
# before the locks (the tree at ca2085c, its setup.sh) and the uv one from the locks (this checkout's working
# tree); then the uv one re-run on its .venv, and this checkout's setup.sh over the old pip-made .venv.
#   bash bench/setup_time.sh [ROUNDS]   (default 1; rounds alternate which set-up goes first)
# Needs PyPI; copies, caches and venvs go under ${TMPDIR:-/tmp} and are removed as it goes and at the end.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
rounds=${1:-1}
work=$(mktemp -d "${TMPDIR:-/tmp}/mathsft-setup-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT

# seconds LABEL DIR: run DIR's setup.sh with DIR's own pip and uv caches (empty on first use); print its wall time
# and its CPU time (user + system, its children included: a shared machine slows the first more than the second).
seconds() {
    local label=$1 dir=$2
    mkdir -p "$dir.pip-cache" "$dir.uv-cache"
    echo "$label: starting (load average $(cut -d' ' -f1-3 /proc/loadavg))" >&2
    local TIMEFORMAT='%R %U %S'
    if ! { time (cd "$dir" && PIP_CACHE_DIR="$dir.pip-cache" UV_CACHE_DIR="$dir.uv-cache" bash setup.sh \
            >"$dir.log" 2>&1); } 2>"$dir.time"; then
        tail -n 20 "$dir.log" >&2
        echo "$label: setup.sh failed" >&2
        exit 1
    fi
    echo "$label: $(tail -n 1 "$dir.log")" >&2
    awk '{printf "%.1f s (CPU %.1f s)", $1, $2 + $3}' "$dir.time"
}

olds=() news=()
for round in $(seq "$rounds"); do
    rm -rf "${work:?}"/*
    mkdir "$work/old" "$work/new"
    git -C "$repo" archive ca2085c | tar -x -C "$work/old"
    (cd "$repo" && git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf -) | tar -x -C "$work/new"
    if (( round % 2 )); then
        old=$(seconds "round $round, pip, setup.sh at ca2085c, empty cache" "$work/old")
        new=$(seconds "round $round, uv from the locks, empty caches" "$work/new")
    else
        new=$(seconds "round $round, uv from the locks, empty caches" "$work/new")
        old=$(seconds "round $round, pip, setup.sh at ca2085c, empty cache" "$work/old")
    fi
    rerun=$(seconds "round $round, uv from the locks, re-run on its .venv" "$work/new")
    cp -r "$work/new/locks" "$work/new/setup.sh" "$work/old/"
    over=$(seconds "round $round, uv from the locks over the pip-made .venv" "$work/old")
    olds+=("${old%% *}") news+=("${new%% *}")
    echo "round $round: pip (ca2085c) $old, uv from the locks $new, $(python3 -c "print(f'{${old%% *} / ${new%% *}:.1f}')")x;"\
         "uv re-run on its .venv $rerun; uv over the pip-made .venv $over"
done

echo "bash bench/setup_time.sh $rounds at $(git -C "$repo" rev-parse --short HEAD) (working tree), $(nproc) cores,"\
     "$(python3 --version), $(date -u +%Y-%m-%dT%H:%MZ)"
python3 - "${olds[*]}" "${news[*]}" <<'EOF'
import statistics, sys
old, new = (statistics.median(map(float, arg.split())) for arg in sys.argv[1:])
print(f"median: pip set-up (ca2085c) {old:.1f} s, uv set-up from the locks {new:.1f} s, speed-up {old / new:.1f}x")
EOF
