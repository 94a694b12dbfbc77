"""Whether this machine's NVIDIA driver can run the CUDA build a GPU lock pins, asked before setup.sh installs
gigabytes: a driver too old for the build fails every GPU job at its first CUDA call, after the queue wait.
Standard library only: it runs with the system Python, before the venv exists."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

# The oldest Linux driver each CUDA major version runs on (NVIDIA's CUDA minor version compatibility: a
# build of any 13.x toolkit runs on the first 580 driver, the one CUDA 13.0 shipped with; any 12.x on 525.60.13).
MIN_DRIVER = {13: (580, 65, 6), 12: (525, 60, 13)}
# nvidia-cuda-runtime (CUDA 13 on) or nvidia-cuda-runtime-cu12: the runtime the locked torch links against.
RUNTIME_PIN = re.compile(r"^nvidia-cuda-runtime(?:-cu\d+)?==(\d+)\.(\d+)", re.M)
SKIP_VARIABLE = "MATHSFT_SKIP_DRIVER_CHECK"
SMI_TIMEOUT_S = 30


@dataclass(frozen=True)
class DriverCheck:
    ok: bool
    message: str


def lock_cuda_version(lock: Path) -> tuple[int, int]:
    """(major, minor) of the CUDA runtime `lock` pins."""
    found = RUNTIME_PIN.search(lock.read_text())
    if not found:
        raise ValueError(f"{lock}: no nvidia-cuda-runtime pin, so the CUDA version it needs is unknown")
    return int(found.group(1)), int(found.group(2))


def parse_driver_version(text: str) -> tuple[int, ...]:
    """The driver version of `nvidia-smi --query-gpu=driver_version --format=csv,noheader` (one line per GPU,
    all the same driver): e.g. (535, 183, 1)."""
    first = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not re.fullmatch(r"\d+(\.\d+){1,2}", first):
        raise ValueError(f"nvidia-smi printed {first[:80]!r} where a driver version such as 580.95.05 was expected")
    return tuple(int(part) for part in first.split("."))


def read_driver_version(smi: str = "nvidia-smi") -> tuple[int, ...] | None:
    """This machine's driver version by nvidia-smi; None where there is no nvidia-smi (a login node, a CPU
    machine). Raises RuntimeError when nvidia-smi is there but cannot tell (no driver loaded, a hang)."""
    try:
        done = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                              text=True, errors="replace", timeout=SMI_TIMEOUT_S)
    except FileNotFoundError:
        return None
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"nvidia-smi did not answer within {SMI_TIMEOUT_S} s") from None
    if done.returncode != 0:
        said = (done.stdout + done.stderr).strip()[-500:]
        raise RuntimeError(f"nvidia-smi failed (exit {done.returncode}): {said}")
    try:
        return parse_driver_version(done.stdout[:10_000])
    except ValueError as exc:
        raise RuntimeError(str(exc)) from None


def dotted(version: tuple[int, ...]) -> str:
    """A driver version as nvidia-smi prints it: (580, 65, 6) -> "580.65.06"."""
    return ".".join(str(part) if i == 0 else f"{part:02d}" for i, part in enumerate(version))


def check_driver(lock: Path, driver: tuple[int, ...] | None) -> DriverCheck:
    """Whether `driver` (None: no nvidia-smi here) runs the CUDA build `lock` pins, and what to tell the user."""
    major, minor = lock_cuda_version(lock)
    if major not in MIN_DRIVER:
        return DriverCheck(False, f"{lock} pins CUDA {major}.{minor}, whose oldest driver is not known here "
                                  f"(mathsft/cuda_driver.py MIN_DRIVER)")
    needed = MIN_DRIVER[major]
    if driver is None:
        return DriverCheck(True, f"no nvidia-smi on this machine, so its driver is not checked: the GPU nodes that "
                                 f"run this environment need an NVIDIA driver >= {dotted(needed)} (CUDA {major}.{minor} "
                                 f"of {lock}); `nvidia-smi` there shows theirs")
    if driver >= needed:
        return DriverCheck(True, f"NVIDIA driver {dotted(driver)} runs CUDA {major}.{minor} (needs >= {dotted(needed)})")
    return DriverCheck(False, (
        f"this machine's NVIDIA driver is {dotted(driver)}, and {lock} pins torch built for CUDA {major}.{minor}, which "
        f"needs a driver >= {dotted(needed)}: every GPU job would fail at its first CUDA call. Nothing was installed. "
        f"Ask for a newer driver (the 580 series or later), or run on nodes that have one; if the GPU nodes have a "
        f"newer driver than this machine, set {SKIP_VARIABLE}=1 to install here anyway."))
