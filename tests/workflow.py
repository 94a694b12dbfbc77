"""Running Snakemake on this workflow from tests: a real run, and the jobs a dry run plans."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def snakemake(workdir: Path, configfile: Path, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    """Run Snakemake on the repo's Snakefile in `workdir` with `configfile` and the default profile."""
    env = dict(os.environ)
    # Jobs run `python`: the one these tests run under, whatever PATH the caller had.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    command = [*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--directory", str(workdir), "--configfile", str(configfile),
               "--profile", str(REPO / "profiles" / "local"), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


def planned_outputs(workdir: Path, configfile: Path, target: str = "results/eval.json") -> dict[str, set[str]]:
    """Rule name -> outputs of the jobs a dry run of `target` would run."""
    result = snakemake(workdir, configfile, "-n", target, timeout=300)
    if result.returncode != 0:
        raise AssertionError(f"dry run failed:\n{result.stdout}\n{result.stderr}")
    planned: dict[str, set[str]] = {}
    rule = None
    for line in result.stdout.splitlines():
        match = re.match(r"^(?:local)?rule (\w+):$", line.strip())
        if match:
            rule = match.group(1)
            planned.setdefault(rule, set())
        elif rule and line.strip().startswith("output:"):
            planned[rule].update(part.strip() for part in line.split(":", 1)[1].split(","))
            rule = None
    return planned


def edited_config(base: Path, out: Path, **edits) -> Path:
    """A copy of config `base` with dotted keys replaced, e.g. edited_config(b, o, **{"curate.reward_threshold": 0.5})."""
    config = yaml.safe_load(base.read_text())
    for dotted, value in edits.items():
        section, key = dotted.split(".")
        config.setdefault(section, {})[key] = value
    out.write_text(yaml.safe_dump(config))
    return out
