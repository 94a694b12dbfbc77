#!/usr/bin/env python
"""Early cutoff on a finished run of the embedded default: the wall time of the whole workflow after an edit of
mathsft/reward.py that changes no score (target: no training or evaluation job, under a minute), the jobs each
rerun-table row plans as a dry run, and what the sample store holds on disk. Run from the repo root:

    python bench/early_cutoff.py --workdir /tmp/mathsft-cutoff-bench

The first call makes the finished run (the README's pipeline command, minutes to tens of minutes); later calls
reuse it. The embedded models are converted once (or linked from --models, e.g. .cache/models of the tests).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
EMBEDDED = ("qwen2.5-coder-0.5b-instruct", "smollm2-135m-instruct")
JOB_HEADER = re.compile(r"^(?:local)?(?:rule|checkpoint) (\w+):$")
# The rerun table's config edits (README "Configuration"), as dotted key -> new value.
ROWS = {
    "curate.reward_threshold": 0.5,
    "teacher.temperature": 0.7,
    "teacher.samples_per_problem": 4,
    "data.num_samples": 80,
    "train.learning_rate": 3.0e-5,
    "eval.samples_per_problem": 8,
    "reward.timeout_s": 20,
    "teacher.concurrency": 3,
    "train.checkpoint_every": 1,
}


def snakemake(workdir: Path, configfile: Path, *args: str) -> tuple[float, str]:
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
               "--configfile", str(configfile), "--profile", str(REPO / "profiles" / "local"), *args]
    started = time.monotonic()
    result = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"snakemake {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return time.monotonic() - started, result.stdout + result.stderr


def jobs(log: str) -> dict[str, int]:
    """Rule -> jobs announced in a Snakemake log (run, or planned by a dry run); the target rule all left out."""
    counts: dict[str, int] = {}
    for line in log.splitlines():
        match = JOB_HEADER.match(line.strip())
        if match and match.group(1) != "all":
            counts[match.group(1)] = counts.get(match.group(1), 0) + 1
    return counts


def edited(base: dict, key: str, value, path: Path) -> Path:
    config = json.loads(json.dumps(base))
    section, name = key.split(".")
    config.setdefault(section, {})[name] = value
    path.write_text(yaml.safe_dump(config))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--configfile", type=Path, default=REPO / "config" / "config.yaml")
    parser.add_argument("--models", type=Path, default=REPO / ".cache" / "models",
                        help="converted embedded models to link (made by the run when absent)")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    for name in EMBEDDED:
        source, target = args.models / name, args.workdir / "results" / "base_models" / name
        if source.is_dir() and not target.exists():
            shutil.copytree(source, target, copy_function=os.link)
    base = yaml.safe_load(args.configfile.read_text())
    config = args.workdir / "config.yaml"
    config.write_text(yaml.safe_dump(base))

    seconds, log = snakemake(args.workdir, config)
    print(f"finished run: {seconds:.1f} s ({sum(jobs(log).values())} jobs)")

    reward = REPO / "mathsft" / "reward.py"
    original, times = reward.read_bytes(), reward.stat()
    try:
        # A comment never written before: Snakemake compares the code's checksum with the one of the last run.
        reward.write_bytes(original + f"\n# An edit that changes no score ({time.time_ns()}).\n".encode())
        _, plan = snakemake(args.workdir, config, "-n")
        seconds, log = snakemake(args.workdir, config)
    finally:
        reward.write_bytes(original)
        os.utime(reward, ns=(times.st_atime_ns, times.st_mtime_ns))
    print(f"no-op edit of mathsft/reward.py: dry run plans {jobs(plan)}")
    print(f"  the run: {seconds:.1f} s, ran {jobs(log)}")

    for key, value in ROWS.items():
        _, plan = snakemake(args.workdir, edited(base, key, value, args.workdir / "edited.yaml"), "-n",
                            "results/report.html")
        print(f"dry run, {key}: {value}: {jobs(plan) or 'nothing'}")

    for store in sorted(args.workdir.glob("results/**/.samples")):
        files = [path for path in store.rglob("*") if path.is_file()]
        size = sum(path.stat().st_size for path in files)
        print(f"sample store {store.relative_to(args.workdir)}: {len(files)} files, {size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
