#!/usr/bin/env python
"""Evaluation jobs per model or per benchmark (eval.jobs), on the embedded default (config/config.yaml, its
managed vLLM CPU servers) evaluating the student and the teacher (no training: the SFT model's evaluation is the
same kind of job). For each layout, one after the other in one session:

- a finished run with two benchmarks (chain_sum, basic_arithmetic), then a third (gsm_symbolic) added to
  data.benchmarks: the wall time of that invocation and the requests its jobs sent;
- the three benchmarks from scratch in a fresh working directory: the same figures.

Each is a real `snakemake results/eval.json`. The requests are the `sent` counts of the summary lines in the logs
of the evaluation jobs that ran. Run from the repo root:

    python bench/eval_parts.py --workdir /tmp/mathsft-eval-parts-bench

The embedded models are linked from --models (e.g. .cache/models of the test suite) when there, else converted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
EMBEDDED = ("qwen2.5-coder-0.5b-instruct", "smollm2-135m-instruct")
TWO = ["chain_sum", "basic_arithmetic"]
THREE = TWO + ["gsm_symbolic"]


def evaluate(workdir: Path, config: dict, jobs: str, benchmarks: list[str]) -> dict:
    """Run the workflow to results/eval.json with `benchmarks` and eval.jobs `jobs`: its wall seconds, the
    evaluation jobs that ran and the requests they sent."""
    config = json.loads(json.dumps(config))
    config["data"]["benchmarks"] = benchmarks
    config["eval"] |= {"models": ["student", "teacher"], "jobs": jobs}
    path = workdir.parent / f"{workdir.name}.{len(benchmarks)}.yaml"
    path.write_text(yaml.safe_dump(config))
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    started = time.time()
    subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
                    "--configfile", str(path), "--profile", str(REPO / "profiles" / "local"), "results/eval.json"],
                   check=True, env=env, cwd=REPO, capture_output=True)
    elapsed = time.time() - started
    ran, sent = [], 0
    for log in sorted((workdir / "logs" / "eval").glob("*/*.log")):
        if log.name.endswith(".server.log") or log.stat().st_mtime < started:
            continue
        line = next(line for line in log.read_text().splitlines() if " summary " in line)
        sent += json.loads(line.split(" summary ", 1)[1])["sent"]
        ran.append(f"{log.parent.name}/{log.stem}")
    return {"wall_s": round(elapsed, 1), "evaluate_jobs": ran, "requests": sent}


def fresh(workdir: Path, models: Path) -> Path:
    """An empty working directory with the embedded models linked in where --models has them."""
    shutil.rmtree(workdir, ignore_errors=True)
    for name in EMBEDDED:
        if (models / name / "config.json").is_file():
            shutil.copytree(models / name, workdir / "results" / "base_models" / name, copy_function=os.link)
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mathsft-eval-parts-bench"))
    parser.add_argument("--models", type=Path, default=REPO / ".cache" / "models",
                        help="converted embedded models to link in, when there")
    parser.add_argument("--jobs", nargs="+", default=["per_model", "per_benchmark"], help="eval.jobs layouts to run")
    args = parser.parse_args()
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    figures = {"command": " ".join([Path(sys.executable).name, *sys.argv])}
    for jobs in args.jobs:
        finished = fresh(args.workdir / f"{jobs}-added", args.models)
        two = evaluate(finished, config, jobs, TWO)
        added = evaluate(finished, config, jobs, THREE)
        scratch = evaluate(fresh(args.workdir / f"{jobs}-scratch", args.models), config, jobs, THREE)
        figures[jobs] = {"two_benchmarks_from_scratch": two, "third_benchmark_added": added,
                         "three_benchmarks_from_scratch": scratch,
                         "added_over_scratch": round(added["wall_s"] / scratch["wall_s"], 3)}
        print(json.dumps({jobs: figures[jobs]}), flush=True)
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
