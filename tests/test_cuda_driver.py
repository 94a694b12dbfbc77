"""setup.sh with MATHSFT_GPU=1 asks the driver first: a driver too old for the locked CUDA build stops it before
anything is installed. These machines have no GPU and no nvidia-smi: a stand-in nvidia-smi first on PATH reports
the driver of a cluster node (the only way to have one here)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import REPO

from mathsft.cuda_driver import (MIN_DRIVER, SKIP_VARIABLE, check_driver, dotted, lock_cuda_version,
                                 parse_driver_version)

CUDA_LOCK = REPO / "locks" / "cuda.txt"


def fake_nvidia_smi(bin_dir: Path, output: str, exit_code: int = 0) -> Path:
    """An nvidia-smi that prints `output` and exits `exit_code`, and leaves a mark that it was asked."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    smi = bin_dir / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\ntouch '{bin_dir}/asked'\nprintf '%s' '{output}'\nexit {exit_code}\n")
    smi.chmod(0o755)
    return bin_dir


def setup_copy(tmp_path: Path) -> Path:
    """The files setup.sh reads before it makes .venv, in a folder of their own (setup.sh works where it lies)."""
    copy = tmp_path / "a checkout"
    for name in ("setup.sh", "locks", "scripts/check_cuda_driver.py", "mathsft/__init__.py", "mathsft/cuda_driver.py"):
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy)(REPO / name, copy / name)
    return copy


def python_that_makes_no_venv(bin_dir: Path) -> Path:
    """A python that exits 7 where setup.sh makes the venv (so nothing is downloaded here) and is python3 otherwise."""
    python = bin_dir / "python-that-makes-no-venv"
    python.write_text(f'#!/bin/sh\n[ "$1" = -m ] && [ "$2" = venv ] && exit 7\nexec {shutil.which("python3")} "$@"\n')
    python.chmod(0o755)
    return python


def run_setup(copy: Path, bin_dir: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {name: value for name, value in os.environ.items() if name not in ("VIRTUAL_ENV", "PYTHONPATH")}
    environment |= {"PATH": f"{bin_dir}:{environment['PATH']}", "MATHSFT_GPU": "1", **env}
    return subprocess.run(["bash", str(copy / "setup.sh")], capture_output=True, text=True, env=environment, timeout=120)


def test_the_gpu_lock_pins_cuda_13_whose_driver_the_readme_states_up_front():
    assert lock_cuda_version(CUDA_LOCK) == (13, 0)
    needed = dotted(MIN_DRIVER[13])
    setup_section = (REPO / "README.md").read_text().split("`setup.sh` makes `.venv`")[0]
    assert f">= {needed}" in setup_section and "MATHSFT_GPU=1" in setup_section


@pytest.mark.parametrize("driver, runs", [("535.183.01", False), ("570.172.08", False), ("580.65.06", True),
                                          ("590.44.01", True)])
def test_a_driver_runs_the_cuda_13_build_from_the_first_580_driver_on(driver, runs):
    result = check_driver(CUDA_LOCK, parse_driver_version(f"{driver}\n{driver}\n"))
    assert result.ok is runs
    if not runs:
        assert driver in result.message and "580.65.06" in result.message and SKIP_VARIABLE in result.message


@pytest.mark.parametrize("printed", ["", "No devices were found", "580.65.06; rm -rf /"])
def test_nvidia_smi_output_that_is_not_a_driver_version_is_refused(printed):
    with pytest.raises(ValueError, match="driver version"):
        parse_driver_version(printed)


def test_setup_stops_on_an_old_driver_before_it_installs_anything(tmp_path):
    copy = setup_copy(tmp_path)
    done = run_setup(copy, fake_nvidia_smi(tmp_path / "bin", "535.183.01\n"))
    assert done.returncode == 1, done.stderr
    assert "NVIDIA driver is 535.183.01" in done.stderr and ">= 580.65.06" in done.stderr
    assert "Nothing was installed" in done.stderr
    assert not (copy / ".venv").exists() and not (copy / ".cache").exists()


def test_setup_stops_when_nvidia_smi_cannot_reach_the_driver(tmp_path):
    copy = setup_copy(tmp_path)
    said = "NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver."
    done = run_setup(copy, fake_nvidia_smi(tmp_path / "bin", said, exit_code=9))
    assert done.returncode == 1
    assert "nvidia-smi failed (exit 9)" in done.stderr and said in done.stderr and SKIP_VARIABLE in done.stderr
    assert not (copy / ".venv").exists()


def test_setup_on_a_machine_without_nvidia_smi_names_the_driver_the_gpu_nodes_need(tmp_path):
    """A login node: the driver is not checked, and the note says which one the nodes need. (The install after
    it is stopped by a Python that cannot make the venv, so nothing is downloaded here.)"""
    copy = setup_copy(tmp_path)
    no_smi = tmp_path / "bin"
    no_smi.mkdir()
    python = python_that_makes_no_venv(no_smi)
    path = ":".join(p for p in os.environ["PATH"].split(":") if not (Path(p) / "nvidia-smi").exists())
    done = run_setup(copy, no_smi, PYTHON=str(python), PATH=f"{no_smi}:{path}")
    assert done.returncode == 7
    assert "no nvidia-smi on this machine" in done.stdout and ">= 580.65.06" in done.stdout


def test_the_check_can_be_skipped_for_gpu_nodes_that_are_not_this_machine(tmp_path):
    copy = setup_copy(tmp_path)
    bin_dir = fake_nvidia_smi(tmp_path / "bin", "535.183.01\n")
    python = python_that_makes_no_venv(bin_dir)
    done = run_setup(copy, bin_dir, PYTHON=str(python), **{SKIP_VARIABLE: "1"})
    assert done.returncode == 7  # past the check, stopped where the venv would be made
    assert not (bin_dir / "asked").exists() and "NVIDIA driver" not in done.stderr
