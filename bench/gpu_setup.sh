#!/usr/bin/env bash
# Each GPU lock installed as a user would: `MATHSFT_GPU=1 bash setup.sh` in a fresh copy of this checkout (its
# working tree), with empty pip and uv caches; then one import of torch, vllm, deepspeed and liger-kernel (the
# GPU stack) in the new venv. Prints the wall time of each, the venv's size and the versions imported.
# Not in CI: it downloads gigabytes (about 9 GB for locks/cuda.txt). On a machine without nvidia-smi the driver
# check says which driver the GPU nodes need and lets the install go on.
#   bash bench/gpu_setup.sh
# Needs PyPI; the copy, its caches and venv go under ${TMPDIR:-/tmp} and are removed at the end.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/mathsft-gpu-setup.XXXXXX")
trap 'rm -rf "$work"' EXIT

# One lock today: locks/cuda.txt (CUDA 13.0). A second GPU lock gets its own setting in setup.sh and a line here.
for setting in "MATHSFT_GPU=1"; do
    copy="$work/copy"
    rm -rf "$copy" "$work/pip-cache" "$work/uv-cache"
    mkdir -p "$copy" "$work/pip-cache" "$work/uv-cache"
    (cd "$repo" && git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf -) | tar -x -C "$copy"
    echo "$setting: setup.sh starting (load average $(cut -d' ' -f1-3 /proc/loadavg))" >&2
    started=$(date +%s.%N)
    if ! (cd "$copy" && env "$setting" PIP_CACHE_DIR="$work/pip-cache" UV_CACHE_DIR="$work/uv-cache" \
            bash setup.sh >"$work/setup.log" 2>&1); then
        tail -n 30 "$work/setup.log" >&2
        echo "$setting: setup.sh failed" >&2
        exit 1
    fi
    setup_s=$(python3 -c "import time; print(f'{time.time() - $started:.0f}')")
    started=$(date +%s.%N)
    versions=$("$copy/.venv/bin/python" -c "import torch, vllm, deepspeed, liger_kernel
from importlib.metadata import version
print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'vllm', vllm.__version__, 'deepspeed',
      deepspeed.__version__, 'liger-kernel', version('liger-kernel'))" 2>"$work/import.log" | tail -n 1) || {
        tail -n 30 "$work/import.log" >&2; echo "$setting: the import failed" >&2; exit 1; }
    import_s=$(python3 -c "import time; print(f'{time.time() - $started:.0f}')")
    echo "$setting: $(grep '^setup: ' "$work/setup.log" | head -n 1)"
    echo "$setting: setup.sh ${setup_s} s from empty caches; venv $(du -sh "$copy/.venv" | cut -f1);" \
         "uv cache $(du -sh "$work/uv-cache" | cut -f1); first import ${import_s} s: $versions"
done
echo "bash bench/gpu_setup.sh at $(git -C "$repo" rev-parse --short HEAD) (working tree), $(nproc) cores," \
     "$(date -u +%Y-%m-%dT%H:%MZ)"
