"""The SLURM test clusters (tests/slurm/cluster.sh) and how the tests run Snakemake's SLURM profile on them and read
their jobs back: shared by tests/test_slurm.py (one node) and tests/test_slurm_nodes.py (two). Both modules are one
pytest-xdist unit (conftest.py): the clusters share /etc/slurm/slurm.conf and their ports, so one is up at a time."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import EMBEDDED, converted_model
from helpers.workflow import REPO

PROFILE = REPO / "profiles" / "slurm"
CLUSTER_SCRIPT = REPO / "tests" / "slurm" / "cluster.sh"
PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel")


def job_env(bin_dir: Path | None = None) -> dict[str, str]:
    """The environment Snakemake and its jobs (sbatch --export=ALL) run in: the venv's python first."""
    path = [str(Path(sys.executable).parent), os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]
    return {**os.environ, "PATH": os.pathsep.join(([str(bin_dir)] if bin_dir else []) + path)}


def slurm_snakemake(workdir: Path, configfile: Path, *args: str) -> list[str]:
    """Snakemake with profiles/slurm, as a user runs it. Test-only settings: threads capped at this machine's
    cores (the rules ask for 8), status checks from 2 s after submission, SLURM logs kept."""
    return [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
            "--configfile", str(configfile), "--profile", str(PROFILE),
            "--max-threads", str(os.cpu_count()), "--slurm-init-seconds-before-status-checks", "2",
            "--slurm-keep-successful-logs", *args]


def cluster_jobs() -> list[dict[str, str]]:
    """Every job the controller knows (finished ones for MinJobAge, an hour here), as scontrol's fields."""
    out = subprocess.run(["scontrol", "show", "job", "--oneliner"], capture_output=True, text=True, check=True).stdout
    jobs = [dict(re.findall(r"(?:^|\s)([A-Za-z/:_]+)=(\S*)", line)) for line in out.splitlines() if line.startswith("JobId=")]
    for job in jobs:
        job["rule"] = re.sub(r"^rule_|_wildcards_.*$", "", job.get("Comment", ""))
    return sorted(jobs, key=lambda job: int(job["JobId"]))


def link_models(workdir: Path, names=EMBEDDED) -> None:
    """The converted embedded models, hard-linked in: prepare_model does not run."""
    for name in names:
        shutil.copytree(converted_model(name), workdir / "results" / "base_models" / name, copy_function=os.link)


@contextmanager
def slurm_cluster(state: Path, nodes: int = 1):
    """A test cluster of `nodes` nodes (cluster.sh, SLURM_TEST_NODES), up for the `with` block: its state folder
    (slurm.conf, the daemons' logs). Skipped without root or the packages; failed under CI=true."""
    missing = [name for name in PROGRAMS if not shutil.which(name, path=job_env()["PATH"])]
    reason = ("bringing up the test cluster needs root" if os.geteuid() != 0 else
              f"{', '.join(missing)} not installed (as root: bash tests/system_packages.sh)" if missing else None)
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI must run the SLURM tests")
        pytest.skip(reason)
    env = {**os.environ, "SLURM_TEST_NODES": str(nodes)}
    started = time.monotonic()
    up = subprocess.run(["bash", str(CLUSTER_SCRIPT), "up", str(state)], capture_output=True, text=True, timeout=120,
                        env=env)
    if up.returncode != 0:
        pytest.fail(f"the test cluster did not come up:\n{up.stdout}\n{up.stderr}")
    print(f"\ncluster up in {time.monotonic() - started:.1f} s: {up.stderr.strip()}")
    try:
        yield state
    finally:
        down = subprocess.run(["bash", str(CLUSTER_SCRIPT), "down", str(state)], capture_output=True, text=True,
                              timeout=120)
        assert down.returncode == 0, f"the test cluster did not come down:\n{down.stdout}\n{down.stderr}"
