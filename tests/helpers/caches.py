"""A newcomer's machine state: every per-user cache a run may write, empty, in a folder of its own.

Runs write compiled and downloaded things under the user's cache folders: torch extensions (DeepSpeed's ops),
vLLM's compile and model-info caches, Hugging Face's hub and datasets caches, Snakemake's and matplotlib's (all
under XDG_CACHE_HOME), Triton's kernels (TRITON_HOME), torch.compile's (TORCHINDUCTOR_CACHE_DIR). A developer's
machine has them warm, which hides what a first run on a new machine does. The package installers' caches (uv,
pip) stay where they are: they are what setup.sh installs from, not what a run writes.

    eval "$(python tests/helpers/caches.py DIR)"   # .ci/run: the whole test run starts from empty caches
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path


def installer_caches(environ: dict[str, str] = os.environ) -> dict[str, str]:
    """uv's and pip's cache folders as `environ` has them, named explicitly so that moving XDG_CACHE_HOME keeps them."""
    xdg = Path(environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return {"UV_CACHE_DIR": environ.get("UV_CACHE_DIR") or str(xdg / "uv"),
            "PIP_CACHE_DIR": environ.get("PIP_CACHE_DIR") or str(xdg / "pip")}


def fresh_user_caches(folder: Path, environ: dict[str, str] = os.environ) -> dict[str, str]:
    """Environment variables that point every per-user cache a run writes at empty folders under `folder`: the
    defaults under XDG_CACHE_HOME are named too, since a caller's environment may have set them elsewhere."""
    caches = {"XDG_CACHE_HOME": folder / "xdg", "TORCH_EXTENSIONS_DIR": folder / "xdg" / "torch_extensions",
              "VLLM_CACHE_ROOT": folder / "xdg" / "vllm", "HF_HOME": folder / "xdg" / "huggingface",
              "MPLCONFIGDIR": folder / "xdg" / "matplotlib", "TRITON_HOME": folder / "triton",
              "TRITON_CACHE_DIR": folder / "triton" / "cache", "TORCHINDUCTOR_CACHE_DIR": folder / "inductor"}
    for path in caches.values():
        path.mkdir(parents=True, exist_ok=True)
    return {**installer_caches(environ), **{name: str(path) for name, path in caches.items()}}


if __name__ == "__main__":
    for name, value in fresh_user_caches(Path(sys.argv[1])).items():
        print(f"export {name}={shlex.quote(value)}")
