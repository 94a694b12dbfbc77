#!/usr/bin/env bash
# OpenMP's wait policy on oversubscribed cores: a 4-step CPU training of the embedded student (DeepSpeed, the
# trainer's --threads 2), alone and two side by side, with libgomp's default (threads spin while they wait) and
# with OMP_WAIT_POLICY=PASSIVE (they sleep). Prints each training's own elapsed seconds and a loss digest (the
# same numbers either way). Why tests/conftest.py sets PASSIVE for the suite, whose two workers share the cores.
#   bash bench/omp_wait.sh      (needs the converted student: any test run makes .cache/models/)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
python=$repo/.venv/bin/python
student=${MATHSFT_TEST_MODELS:-$repo/.cache/models}/smollm2-135m-instruct
[[ -f $student/config.json ]] || { echo "no converted student at $student: run the tests once" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$repo/tests" && "$python" -c "
from pathlib import Path
from helpers.sftdata import write_sft_set
write_sft_set(Path('$work/train.parquet'), 8)
write_sft_set(Path('$work/val.parquet'), 2)")

# train NAME: one training into $work/NAME (the caller's OMP_WAIT_POLICY applies).
train() {
    "$python" "$repo/scripts/train_sft.py" --model "$student" --train_files "$work/train.parquet" \
        --val_files "$work/val.parquet" --output_dir "$work/$1/model" --metrics "$work/$1/metrics.jsonl" \
        --summary "$work/$1/summary.json" --max_length 256 --threads 2 --global_batch_size 2 \
        --micro_batch_size_per_device 2 --deepspeed "$repo/config/deepspeed/zero2.json" >"$work/$1.log" 2>&1
}

# report NAME...: each training's elapsed seconds and a digest of its losses.
report() {
    for name in "$@"; do
        "$python" - "$work/$name" <<'EOF'
import hashlib, json, sys
from pathlib import Path
run = Path(sys.argv[1])
losses = [json.loads(line).get("loss") for line in (run / "metrics.jsonl").read_text().splitlines()]
print(f"  {run.name:<16} {json.loads((run / 'summary.json').read_text())['elapsed_s']:6.1f} s"
      f"   losses {hashlib.sha256(repr(losses).encode()).hexdigest()[:12]}")
EOF
    done
}

for policy in default PASSIVE; do
    if [[ $policy == PASSIVE ]]; then export OMP_WAIT_POLICY=PASSIVE; else unset OMP_WAIT_POLICY; fi
    echo "OMP_WAIT_POLICY=$policy (load average $(cut -d' ' -f1-3 /proc/loadavg))"
    train "$policy-alone"
    train "$policy-a" & train "$policy-b" & wait
    report "$policy-alone" "$policy-a" "$policy-b"
done
